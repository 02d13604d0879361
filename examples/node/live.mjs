#!/usr/bin/env node
// A live session (Node 20+ and the `ws` package: `npm ci` in this directory): a WAV file is
// sent to the WebSocket /api/stream in real time, 40 ms per message, and every frame that
// comes back is checked (header, length, CRC-32) and saved as a JPEG.
//
//   node examples/node/live.mjs (--avatar-id ID | --image FACE [--box t,b,l,r]) \
//       --audio SPEECH.wav --out-dir frames/ [--chunk-ms 40] [--url URL] [--api-key KEY]
//
// Writes OUT_DIR/000000.jpg, ... and OUT_DIR/frames.json ([{index, pts_ms, bytes, crc32,
// latency_ms}]); prints one JSON line: {frames, flushed, fps, latency_ms: {p50, p95, max}, ...}.
// Exit codes: 0 ok, 1 session failed (an error message, a bad frame, an unexpected close), 2 usage.

import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { crc32 } from "node:zlib";

import WebSocket from "ws";

import { parseCommon, runCli } from "./cli.mjs";
import { DEFAULT_URL, LipSyncError, serviceUrl } from "./generate.mjs";

const HEADER_BYTES = 24; // <4sBBHIIII>: magic, type, reserved, reserved, index, pts_ms, length, crc32
const MAGIC = "LSRT";
const TYPE_JPEG = 1;

/** {index, ptsMs, jpeg} of a binary frame message; throws LipSyncError if it is malformed. */
export function unpackFrame(message) {
  if (message.length < HEADER_BYTES) throw new LipSyncError("bad_frame", "frame shorter than its header");
  const length = message.readUInt32LE(16);
  const jpeg = message.subarray(HEADER_BYTES);
  if (message.toString("latin1", 0, 4) !== MAGIC || message.readUInt8(4) !== TYPE_JPEG) {
    throw new LipSyncError("bad_frame", "frame with a bad magic or type");
  }
  if (jpeg.length !== length) throw new LipSyncError("bad_frame", `frame of ${jpeg.length} bytes, header says ${length}`);
  if (crc32(jpeg) !== message.readUInt32LE(20)) throw new LipSyncError("bad_frame", "frame CRC mismatch");
  return { index: message.readUInt32LE(8), ptsMs: message.readUInt32LE(12), jpeg };
}

/** The PCM of a WAV file: {format: {sample_rate, encoding, channels}, data: Buffer}. */
export function readWav(file) {
  if (file.toString("latin1", 0, 4) !== "RIFF" || file.toString("latin1", 8, 12) !== "WAVE") {
    throw new LipSyncError("unsupported_audio", "not a WAV file");
  }
  let format = null;
  for (let at = 12; at + 8 <= file.length; ) {
    const id = file.toString("latin1", at, at + 4);
    const size = file.readUInt32LE(at + 4);
    const body = file.subarray(at + 8, at + 8 + size);
    if (id === "fmt ") {
      const tag = body.readUInt16LE(0);
      const bits = body.readUInt16LE(14);
      const encoding = tag === 1 && bits === 16 ? "pcm_s16le" : tag === 3 && bits === 32 ? "f32le" : null;
      if (!encoding) throw new LipSyncError("unsupported_audio", "WAV must be 16-bit PCM or 32-bit float");
      format = { sample_rate: body.readUInt32LE(4), encoding, channels: body.readUInt16LE(2) };
    } else if (id === "data" && format) {
      return { format, data: body };
    }
    at += 8 + size + (size % 2);
  }
  throw new LipSyncError("unsupported_audio", "WAV without fmt and data chunks");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/**
 * Run one session: send `wav` (readWav's result) in real time, flush, and collect the
 * frames. onFrame({index, ptsMs, jpeg, latencyMs}) is called for each. Resolves to
 * {ready, flushed, dropped}; rejects with LipSyncError.
 */
export function liveSession({ url = process.env.LIPSYNC_URL || DEFAULT_URL, face, wav, chunkMs = 40, apiKey, onFrame }) {
  const wsUrl = serviceUrl(url, "api/stream");
  wsUrl.protocol = wsUrl.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(wsUrl, { headers: apiKey ? { "X-API-Key": apiKey } : {} });
  const { format, data } = wav;
  const frameBytes = (format.encoding === "f32le" ? 4 : 2) * format.channels;
  const chunkBytes = frameBytes * Math.round((format.sample_rate * chunkMs) / 1000);
  let started = 0;
  let dropped = 0;
  let ready = null;

  async function sendAudio() {
    started = performance.now();
    for (let at = 0, n = 0; at < data.length; at += chunkBytes, n++) {
      const wait = started + n * chunkMs - performance.now(); // real time, without drift
      if (wait > 0) await sleep(wait);
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send(data.subarray(at, at + chunkBytes));
    }
    ws.send(JSON.stringify({ type: "flush" }));
  }

  return new Promise((resolve, reject) => {
    ws.on("unexpected-response", async (_request, response) => {
      const parts = [];
      for await (const part of response) parts.push(part);
      let error = {};
      try {
        error = JSON.parse(Buffer.concat(parts).toString()).error ?? {};
      } catch {
        // not JSON
      }
      reject(new LipSyncError(error.code ?? `http_${response.statusCode}`, error.message ?? "upgrade refused", { status: response.statusCode }));
    });
    ws.on("error", (err) => reject(new LipSyncError("unreachable", err.message)));
    ws.on("open", () => ws.send(JSON.stringify({ type: "start", ...face, audio: format, protocol: "binary" })));
    ws.on("message", (message, isBinary) => {
      if (isBinary) {
        try {
          const frame = unpackFrame(message);
          onFrame({ ...frame, latencyMs: performance.now() - started - frame.ptsMs });
        } catch (err) {
          ws.terminate();
          reject(err);
        }
        return;
      }
      const event = JSON.parse(message.toString());
      if (event.type === "ready") {
        ready = event;
        sendAudio().catch(reject);
      } else if (event.type === "dropped") {
        dropped = event.total;
      } else if (event.type === "error") {
        reject(new LipSyncError(event.code, event.message));
      } else if (event.type === "flushed") {
        ws.send(JSON.stringify({ type: "end" }));
        resolve({ ready, flushed: event.frames, dropped });
      }
    });
    ws.on("close", (code, reason) => {
      if (code !== 1000) reject(new LipSyncError(`close_${code}`, reason.toString() || `closed with ${code}`));
    });
  });
}

// -- command line ----------------------------------------------------------------------------

const USAGE =
  "usage: node live.mjs (--avatar-id ID | --image FACE [--box t,b,l,r]) --audio SPEECH.wav " +
  "--out-dir DIR [--chunk-ms 40] [--url URL] [--api-key KEY]";

function parseCli(argv) {
  const options = { "out-dir": { type: "string" }, "chunk-ms": { type: "string", default: "40" } };
  const values = parseCommon(argv, options, ["audio", "out-dir"]);
  if (values === null) return null;
  const chunkMs = Number(values["chunk-ms"]);
  if (!(chunkMs >= 10 && chunkMs <= 1000)) throw new Error("--chunk-ms must be 10..1000");
  return { ...values, chunkMs };
}

async function main(args) {
  const face = args.avatarId
    ? { avatar_id: args.avatarId }
    : { image: (await readFile(args.image)).toString("base64"), ...(args.box && { box: args.box }) };
  const wav = readWav(await readFile(args.audio));
  const outDir = args["out-dir"];
  await mkdir(outDir, { recursive: true });
  const frames = [];
  const writes = [];
  const started = performance.now();
  const { ready, flushed, dropped } = await liveSession({
    url: args.url,
    face,
    wav,
    chunkMs: args.chunkMs,
    apiKey: args.apiKey ?? process.env.LIPSYNC_API_KEY,
    onFrame: ({ index, ptsMs, jpeg, latencyMs }) => {
      frames.push({ index, pts_ms: ptsMs, bytes: jpeg.length, crc32: crc32(jpeg), latency_ms: Math.round(latencyMs) });
      writes.push(writeFile(path.join(outDir, `${String(index).padStart(6, "0")}.jpg`), jpeg));
    },
  });
  await Promise.all(writes);
  await writeFile(path.join(outDir, "frames.json"), JSON.stringify(frames));
  const seconds = (performance.now() - started) / 1000;
  const latencies = frames.map((f) => f.latency_ms);
  console.log(
    JSON.stringify({
      session_id: ready.session_id,
      width: ready.width,
      height: ready.height,
      frames: frames.length,
      flushed,
      dropped,
      fps: Number((frames.length / seconds).toFixed(1)),
      latency_ms: latencies.length
        ? { p50: percentile(latencies, 0.5), p95: percentile(latencies, 0.95), max: Math.max(...latencies) }
        : null,
      out_dir: outDir,
    }),
  );
}

await runCli(import.meta.url, USAGE, parseCli, main);
