#!/usr/bin/env node
// A chat backend in miniature (Node 20+, no npm packages): its browser client POSTs the
// reply's speech (the TTS output) to /reply, and the backend forwards the lip-synced video
// from the service to that client as it is generated, without holding it.
//
//   node examples/node/chat-server.mjs --avatar-id ID [--port 8080] [--url SERVICE_URL]
//   curl -sN --data-binary @reply.wav localhost:8080/reply -o reply.webm
//
// It prints one JSON line when listening: {"listening": "http://127.0.0.1:PORT"}.
// The service's errors are forwarded as they are (status and JSON body). When the client
// hangs up, the request to the service is aborted, which stops the generation there; when
// the service's stream breaks off, the client's connection is cut too (a truncated transfer,
// never a short file that looks complete).

import http from "node:http";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { LipSyncError } from "./generate.mjs";
import { streamReply, VIDEO_HEADERS } from "./stream.mjs";

const MAX_SPEECH_BYTES = 20 * 1024 * 1024;

async function readBody(request) {
  const parts = [];
  let size = 0;
  for await (const part of request) {
    size += part.length;
    if (size > MAX_SPEECH_BYTES) throw new LipSyncError("payload_too_large", "speech over 20 MiB", { status: 413 });
    parts.push(part);
  }
  return Buffer.concat(parts);
}

function sendError(response, err) {
  const status = err instanceof LipSyncError && err.status ? err.status : 502;
  const code = err instanceof LipSyncError ? err.code : "bad_gateway";
  response.writeHead(status, { "Content-Type": "application/json" });
  response.end(JSON.stringify({ success: false, error: { code, message: err.message } }));
}

/** An http.Server forwarding POST /reply (body: the speech file) to the service. */
export function createChatServer({ url, avatarId, apiKey, format }) {
  return http.createServer(async (request, response) => {
    if (request.method !== "POST" || request.url !== "/reply") {
      sendError(response, new LipSyncError("not_found", "POST /reply with the speech as the body", { status: 404 }));
      return;
    }
    const hangUp = new AbortController();
    response.on("close", () => hangUp.abort());
    let reply;
    try {
      const audio = await readBody(request);
      reply = await streamReply({ url, avatarId, audio, apiKey, format, signal: hangUp.signal });
    } catch (err) {
      sendError(response, err);
      return;
    }
    const headers = { "Cache-Control": "no-store" };
    for (const name of VIDEO_HEADERS) {
      const value = reply.headers.get(name);
      if (value !== null) headers[name] = value;
    }
    response.writeHead(200, headers);
    try {
      await pipeline(Readable.fromWeb(reply.body), response);
    } catch {
      response.destroy(); // the service's stream broke off, or our client left
    }
  });
}

async function main(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      "avatar-id": { type: "string" },
      port: { type: "string", default: "8080" },
      host: { type: "string", default: "127.0.0.1" },
      url: { type: "string" },
      format: { type: "string" },
      "api-key": { type: "string" },
    },
  });
  if (!values["avatar-id"]) {
    console.error("usage: node chat-server.mjs --avatar-id ID [--port 8080] [--url SERVICE_URL] [--format webm|mp4]");
    return 2;
  }
  const server = createChatServer({
    url: values.url ?? process.env.LIPSYNC_URL,
    avatarId: values["avatar-id"],
    apiKey: values["api-key"] ?? process.env.LIPSYNC_API_KEY,
    format: values.format,
  });
  server.listen(Number(values.port), values.host, () => {
    const { address, port } = server.address();
    console.log(JSON.stringify({ listening: `http://${address}:${port}` }));
  });
  const stop = () => server.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  return null;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const code = await main(process.argv.slice(2));
  if (code !== null) process.exitCode = code;
}
