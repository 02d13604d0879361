#!/usr/bin/env node
// Example Node.js client for the lip-sync service (Node 18+, no npm packages).
//
// Command line:
//   node examples/node/generate.mjs --image face.jpg --audio speech.wav --out out.webm \
//       [--url http://127.0.0.1:5001] [--format webm|mp4] [--box top,bottom,left,right] \
//       [--model wav2lip|wav2lip_gan] [--api-key KEY] [--timeout SECONDS]
//   (--avatar-id ID instead of --image: a face registered once with POST /api/avatars)
//   Environment: LIPSYNC_URL, LIPSYNC_API_KEY. Exit codes: 0 ok, 1 request failed, 2 usage.
//
// From a chat backend, after each TTS reply:
//   import { generateVideo } from "./generate.mjs";
//   const { video, meta } = await generateVideo({ image: faceJpeg, audio: ttsWav });
//   // video: Buffer (WebM VP9/Opus by default), meta: { mime_type, num_frames, duration, ... }

import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";

import { parseCommon, runCli } from "./cli.mjs";

export const DEFAULT_URL = "http://127.0.0.1:5001";
export const DEFAULT_TIMEOUT_MS = 300_000;

/** A failed generation: `code` is the service's error code (or timeout / unreachable). */
export class LipSyncError extends Error {
  constructor(code, message, { status = null, field = undefined } = {}) {
    super(message);
    this.name = "LipSyncError";
    this.code = code;
    this.status = status; // HTTP status, null when no answer came
    this.field = field; // the request field at fault, when the service names one
  }
}

/** The LipSyncError of an answer that is not a success (reads its body). */
export async function serviceError(response) {
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: a proxy's error page, for instance
  }
  return errorOf(json, text, response);
}

function errorOf(json, text, response) {
  const error = json?.error ?? {};
  return new LipSyncError(
    error.code ?? `http_${response.status}`,
    error.message ?? (text.slice(0, 200) || response.statusText),
    { status: response.status, field: error.field },
  );
}

/** `path` under the service's base URL (a path prefix, behind a proxy, is kept). */
export function serviceUrl(url, path) {
  return new URL(path, url.endsWith("/") ? url : `${url}/`);
}

const base64 = (data) => (typeof data === "string" ? data : Buffer.from(data).toString("base64"));

/**
 * POST one face image and one speech recording to /api/generate.
 * image, audio: Buffer / Uint8Array of the file, or a base64 string.
 * avatarId instead of image: a face registered with POST /api/avatars (skips face detection).
 * Optional: url, format ("webm" | "mp4"), box ([top, bottom, left, right]), model,
 * apiKey (sent as "Authorization: Bearer KEY"), timeoutMs.
 * Resolves to { video: Buffer, meta }; rejects with LipSyncError.
 */
export async function generateVideo({
  url = process.env.LIPSYNC_URL || DEFAULT_URL,
  image,
  avatarId,
  audio,
  format,
  box,
  model,
  apiKey = process.env.LIPSYNC_API_KEY,
  timeoutMs = DEFAULT_TIMEOUT_MS,
}) {
  const body = { audio: base64(audio), format, box, model };
  if (avatarId) body.avatar_id = avatarId;
  else body.image = base64(image);
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  let response;
  try {
    response = await fetch(serviceUrl(url, "api/generate"), {
      method: "POST",
      headers,
      body: JSON.stringify(body), // undefined options are left out
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    if (err.name === "TimeoutError") {
      throw new LipSyncError("timeout", `no answer from ${url} within ${timeoutMs / 1000} s`);
    }
    throw new LipSyncError("unreachable", `${url}: ${err.cause?.message ?? err.message}`);
  }
  if (!response.ok) throw await serviceError(response);
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  if (!json?.success) throw errorOf(json, text, response);
  const { video, success, ...meta } = json;
  return { video: Buffer.from(video, "base64"), meta };
}

// -- command line ----------------------------------------------------------------------------

const USAGE =
  "usage: node generate.mjs (--image FACE | --avatar-id ID) --audio SPEECH.wav --out OUT.webm " +
  "[--url URL] [--format webm|mp4] [--box top,bottom,left,right] " +
  "[--model wav2lip|wav2lip_gan] [--api-key KEY] [--timeout SECONDS]";

function parseCli(argv) {
  const options = {
    out: { type: "string" },
    format: { type: "string" },
    model: { type: "string" },
    timeout: { type: "string", default: String(DEFAULT_TIMEOUT_MS / 1000) },
  };
  const values = parseCommon(argv, options, ["audio", "out"]);
  if (values === null) return null;
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) throw new Error(`--timeout must be a positive number of seconds`);
  // Without --format, an .mp4 / .webm output name chooses the container.
  const ext = path.extname(values.out).slice(1).toLowerCase();
  const format = values.format ?? (["mp4", "webm"].includes(ext) ? ext : undefined);
  return { ...values, format, timeoutMs: timeout * 1000 };
}

async function main(args) {
  const [image, audio] = await Promise.all([args.image && readFile(args.image), readFile(args.audio)]);
  const started = performance.now();
  const { video, meta } = await generateVideo({ ...args, image, audio });
  await mkdir(path.dirname(path.resolve(args.out)), { recursive: true });
  await writeFile(args.out, video);
  const timings = Object.entries(meta.timings_ms ?? {})
    .map(([step, ms]) => `${step}=${Math.round(ms)}`)
    .join(" ");
  console.log(
    `${args.out}: ${meta.num_frames} frames, ${meta.duration} s, ${meta.width}x${meta.height}, ` +
      `${(video.length / 1024).toFixed(1)} KiB ${meta.mime_type}, ` +
      `request ${Math.round(performance.now() - started)} ms, timings_ms ${timings}`,
  );
}

await runCli(import.meta.url, USAGE, parseCli, main);
