#!/usr/bin/env node
// Streamed replies (Node 20+, no npm packages): POST /api/generate with "stream": true and
// write the video to disk while it is generated.
//
// Command line:
//   node examples/node/stream.mjs (--avatar-id ID | --image FACE [--box t,b,l,r]) \
//       --audio SPEECH.wav --out reply.webm [--format webm|mp4] [--url URL] [--api-key KEY]
//   Prints one JSON line: {out, bytes, chunks, first_chunk_ms, done_ms, num_frames, ...}.
//   Exit codes: 0 ok, 1 request failed (the service's error as JSON on stderr), 2 usage.
//
// From a chat backend (see chat-server.mjs, which forwards the stream to its own client):
//   import { streamReply } from "./stream.mjs";
//   const reply = await streamReply({ avatarId, audio: ttsWav });
//   reply.headers;  // Content-Type, X-Codecs, X-Num-Frames, ...
//   reply.body;     // a web ReadableStream of the video bytes, as they are made

import { createWriteStream } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";

import { parseCommon, runCli } from "./cli.mjs";
import { DEFAULT_URL, LipSyncError, serviceError, serviceUrl } from "./generate.mjs";

/** Headers of a streamed reply a forwarding server passes on to its own client. */
export const VIDEO_HEADERS = [
  "content-type",
  "x-codecs",
  "x-num-frames",
  "x-duration",
  "x-fps",
  "x-width",
  "x-height",
  "x-avatar-id",
  "x-silent-frames",
];

/**
 * Start a streamed generation. audio (and image): Buffer of the file; avatarId instead of
 * image; box: [top, bottom, left, right]; format: "webm" | "mp4"; signal: an AbortSignal
 * (aborting stops the generation on the server at its next frame batch).
 * Resolves once the video starts to { status, headers, body } (body: web ReadableStream);
 * rejects with LipSyncError (the service's error, e.g. face_not_detected).
 */
export async function streamReply({
  url = process.env.LIPSYNC_URL || DEFAULT_URL,
  image,
  avatarId,
  audio,
  box,
  format,
  model,
  apiKey = process.env.LIPSYNC_API_KEY,
  signal,
}) {
  const form = new FormData();
  if (avatarId) form.append("avatar_id", avatarId);
  else form.append("image", new Blob([image]), "face");
  if (box) form.append("box", box.join(","));
  if (format) form.append("format", format);
  if (model) form.append("model", model);
  form.append("audio", new Blob([audio]), "speech");
  form.append("stream", "true");
  const headers = apiKey ? { "X-API-Key": apiKey } : {};
  let response;
  try {
    response = await fetch(serviceUrl(url, "api/generate"), {
      method: "POST",
      headers,
      body: form,
      signal,
    });
  } catch (err) {
    throw new LipSyncError("unreachable", `${url}: ${err.cause?.message ?? err.message}`);
  }
  if (!response.ok) throw await serviceError(response);
  return { status: response.status, headers: response.headers, body: response.body };
}

// -- command line ----------------------------------------------------------------------------

const USAGE =
  "usage: node stream.mjs (--avatar-id ID | --image FACE [--box t,b,l,r]) --audio SPEECH " +
  "--out OUT.webm [--format webm|mp4] [--url URL] [--api-key KEY]";

function parseCli(argv) {
  return parseCommon(argv, { out: { type: "string" }, format: { type: "string" } }, ["audio", "out"]);
}

/** Write the streamed reply to `out` chunk by chunk; resolves to the summary. */
export async function saveReply(args) {
  const [image, audio] = await Promise.all([args.image && readFile(args.image), readFile(args.audio)]);
  const started = performance.now();
  const reply = await streamReply({ ...args, image, audio });
  await mkdir(path.dirname(path.resolve(args.out)), { recursive: true });
  const summary = { out: args.out, bytes: 0, chunks: 0, first_chunk_ms: null };
  const count = new Transform({
    transform(chunk, _encoding, callback) {
      summary.first_chunk_ms ??= Math.round(performance.now() - started);
      summary.bytes += chunk.length;
      summary.chunks += 1;
      callback(null, chunk);
    },
  });
  try {
    await pipeline(Readable.fromWeb(reply.body), count, createWriteStream(args.out));
  } catch (err) {
    // The service closes a stream that failed after its first byte without the last chunk.
    throw new LipSyncError("stream_broken", `the stream broke off after ${summary.bytes} bytes: ${err.message}`);
  }
  summary.done_ms = Math.round(performance.now() - started);
  summary.content_type = reply.headers.get("content-type");
  summary.num_frames = Number(reply.headers.get("x-num-frames"));
  summary.duration = Number(reply.headers.get("x-duration"));
  return summary;
}

await runCli(import.meta.url, USAGE, parseCli, async (args) => {
  console.log(JSON.stringify(await saveReply(args)));
});
