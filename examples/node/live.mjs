#!/usr/bin/env node
// A live session (Node 20+ and the packages `ws` and `jpeg-js`: `npm ci` in this directory): a
// WAV file is sent to the WebSocket /api/stream in real time, 40 ms per message, and every
// message that comes back is checked (header, length, CRC-32). With patch output (the
// default) the avatar's frames come once and each frame as a patch over one of them, which
// is composited here into the full frame; with `--format jpeg` each frame comes whole.
//
//   node examples/node/live.mjs (--avatar-id ID | --image FACE [--box t,b,l,r]) \
//       --audio SPEECH.wav --out-dir frames/ [--format patch|jpeg] [--chunk-ms 40] [--url URL]
//       [--api-key KEY]
//
// Writes OUT_DIR/000000.jpg, ... (full frames either way) and OUT_DIR/frames.json ([{index,
// pts_ms, bytes, crc32, received, base, latency_ms}]); prints one JSON line: {frames,
// flushed, fps, latency_ms: {p50, p95, max}, bytes_per_frame, bitrate_kbps, bases, ...}.
// Exit codes: 0 ok, 1 session failed (an error message, a bad frame, an unexpected close), 2 usage.

import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { crc32 } from "node:zlib";

import jpegJs from "jpeg-js";
import WebSocket from "ws";

import { parseCommon, runCli } from "./cli.mjs";
import { DEFAULT_URL, LipSyncError, serviceUrl } from "./generate.mjs";

const HEADER_BYTES = 24; // <4sBBHIIII>: magic, type, reserved, reserved, index, pts_ms, length, crc32
const MAGIC = "LSRT";
const TYPE_JPEG = 1; // a speech frame's JPEG
const TYPE_BASE = 4; // patch output: a frame of the avatar (index: its number), once
const TYPE_PATCH = 5; // patch output: a speech frame as a patch over a base frame
const PATCH_HEADER_BYTES = 12; // <IHHHH>: base frame, x, y, width, height; then the JPEG
const COMPOSITE_QUALITY = 95; // composited frames are encoded again: keep that loss small

/** {type, index, ptsMs, payload} of a binary message; throws LipSyncError if it is malformed. */
export function unpackMessage(message) {
  if (message.length < HEADER_BYTES) throw new LipSyncError("bad_frame", "frame shorter than its header");
  const type = message.readUInt8(4);
  const length = message.readUInt32LE(16);
  const payload = message.subarray(HEADER_BYTES);
  if (message.toString("latin1", 0, 4) !== MAGIC || ![TYPE_JPEG, TYPE_BASE, TYPE_PATCH].includes(type)) {
    throw new LipSyncError("bad_frame", "frame with a bad magic or type");
  }
  if (payload.length !== length) throw new LipSyncError("bad_frame", `frame of ${payload.length} bytes, header says ${length}`);
  if (crc32(payload) !== message.readUInt32LE(20)) throw new LipSyncError("bad_frame", "frame CRC mismatch");
  return { type, index: message.readUInt32LE(8), ptsMs: message.readUInt32LE(12), payload };
}

/** {base, x, y, width, height, jpeg} of a patch payload (width 0: no JPEG, the base as it is). */
export function unpackPatch(payload) {
  if (payload.length < PATCH_HEADER_BYTES) throw new LipSyncError("bad_frame", "patch shorter than its header");
  const patch = {
    base: payload.readUInt32LE(0),
    x: payload.readUInt16LE(4),
    y: payload.readUInt16LE(6),
    width: payload.readUInt16LE(8),
    height: payload.readUInt16LE(10),
    jpeg: payload.subarray(PATCH_HEADER_BYTES),
  };
  if (!patch.width !== !patch.jpeg.length) {
    throw new LipSyncError("bad_frame", "a patch has a JPEG exactly when its width is not 0");
  }
  return patch;
}

/**
 * The base frames of a patch session, by avatar frame, as their JPEGs; composite() makes a
 * patch's full frame. Only the last base used is kept decoded: an image avatar's one frame
 * is decoded once, a video avatar's are not all held as pixels.
 */
export class Compositor {
  constructor() {
    this.bases = new Map(); // avatar frame -> its JPEG
    this.decoded = null; // {index, image} of the last base used
  }

  addBase(index, jpeg) {
    this.bases.set(index, Buffer.from(jpeg));
  }

  /** The JPEG of the full frame a patch (unpackPatch's result, over a base added) stands for. */
  composite({ base, x, y, width, height, jpeg }) {
    const baseJpeg = this.bases.get(base);
    if (!width) return baseJpeg;
    if (this.decoded?.index !== base) this.decoded = { index: base, image: decodeRgba(baseJpeg) };
    const { image } = this.decoded;
    const piece = decodeRgba(jpeg);
    if (piece.width !== width || piece.height !== height || x + width > image.width || y + height > image.height) {
      throw new LipSyncError("bad_frame", `patch ${width}x${height} at (${x}, ${y}) does not fit its JPEG or frame`);
    }
    const pixels = Buffer.from(image.data); // a copy: the base stays as it came
    const rowBytes = 4 * width;
    for (let row = 0; row < height; row++) {
      pixels.set(piece.data.subarray(row * rowBytes, (row + 1) * rowBytes), 4 * ((y + row) * image.width + x));
    }
    return jpegJs.encode({ data: pixels, width: image.width, height: image.height }, COMPOSITE_QUALITY).data;
  }
}

function decodeRgba(jpeg) {
  try {
    return jpegJs.decode(jpeg, { useTArray: true, formatAsRGBA: true });
  } catch (err) {
    throw new LipSyncError("bad_frame", `undecodable JPEG: ${err.message}`);
  }
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
 * frames. `format`: "patch" (base frames once, then patches) or "jpeg" (every frame whole).
 * onBase({index, jpeg}) is called for each base frame, onFrame({index, ptsMs, jpeg, patch,
 * received, latencyMs}) for each frame: `jpeg` the whole frame (jpeg format) or `patch`
 * unpackPatch's result over a base already received (patch format), `received` the bytes of
 * its message. Resolves to {ready, flushed, dropped, bytesReceived (every binary message,
 * bases included), bases (the base frames received, in order)}; rejects with LipSyncError.
 */
export function liveSession({
  url = process.env.LIPSYNC_URL || DEFAULT_URL,
  face,
  wav,
  format = "patch",
  chunkMs = 40,
  apiKey,
  onBase = () => {},
  onFrame,
}) {
  const wsUrl = serviceUrl(url, "api/stream");
  wsUrl.protocol = wsUrl.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(wsUrl, { headers: apiKey ? { "X-API-Key": apiKey } : {} });
  const { format: audio, data } = wav;
  const frameBytes = (audio.encoding === "f32le" ? 4 : 2) * audio.channels;
  const chunkBytes = frameBytes * Math.round((audio.sample_rate * chunkMs) / 1000);
  const bases = [];
  let bytesReceived = 0;
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

  function receive(message) {
    bytesReceived += message.length;
    const { type, index, ptsMs, payload } = unpackMessage(message);
    if (type === TYPE_BASE) {
      bases.push(index);
      onBase({ index, jpeg: payload });
      return;
    }
    const latencyMs = performance.now() - started - ptsMs;
    const patch = type === TYPE_PATCH ? unpackPatch(payload) : null;
    if (patch && !bases.includes(patch.base)) {
      throw new LipSyncError("bad_frame", `patch over base frame ${patch.base}, which never came`);
    }
    onFrame({ index, ptsMs, jpeg: patch ? null : payload, patch, received: message.length, latencyMs });
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
    ws.on("open", () => ws.send(JSON.stringify({ type: "start", ...face, audio, output: { format }, protocol: "binary" })));
    ws.on("message", (message, isBinary) => {
      if (isBinary) {
        try {
          receive(message);
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
        resolve({ ready, flushed: event.frames, dropped, bytesReceived, bases });
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
  "--out-dir DIR [--format patch|jpeg] [--chunk-ms 40] [--url URL] [--api-key KEY]";

function parseCli(argv) {
  const options = {
    "out-dir": { type: "string" },
    format: { type: "string", default: "patch" },
    "chunk-ms": { type: "string", default: "40" },
  };
  const values = parseCommon(argv, options, ["audio", "out-dir"]);
  if (values === null) return null;
  if (!["patch", "jpeg"].includes(values.format)) throw new Error("--format must be patch or jpeg");
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
  const save = (frame, jpeg) => {
    Object.assign(frame, { bytes: jpeg.length, crc32: crc32(jpeg) });
    writes.push(writeFile(path.join(outDir, `${String(frame.index).padStart(6, "0")}.jpg`), jpeg));
  };
  const compositor = new Compositor();
  // Composited once the session is over: jpeg-js takes tens of ms to encode a frame, which
  // would hold up the audio being sent in real time.
  const patches = [];
  const started = performance.now();
  const { ready, flushed, dropped, bytesReceived, bases } = await liveSession({
    url: args.url,
    face,
    wav,
    format: args.format,
    chunkMs: args.chunkMs,
    apiKey: args.apiKey ?? process.env.LIPSYNC_API_KEY,
    onBase: ({ index, jpeg }) => compositor.addBase(index, jpeg),
    onFrame: ({ index, ptsMs, jpeg, patch, received, latencyMs }) => {
      const base = patch?.base ?? null;
      const frame = { index, pts_ms: ptsMs, bytes: 0, crc32: 0, received, base, latency_ms: Math.round(latencyMs) };
      frames.push(frame);
      if (patch) patches.push({ frame, patch });
      else save(frame, jpeg);
    },
  });
  const seconds = (performance.now() - started) / 1000;
  for (const { frame, patch } of patches) save(frame, compositor.composite(patch));
  await Promise.all(writes);
  await writeFile(path.join(outDir, "frames.json"), JSON.stringify(frames));
  const latencies = frames.map((f) => f.latency_ms);
  const bytesPerFrame = frames.length ? bytesReceived / frames.length : null;
  console.log(
    JSON.stringify({
      session_id: ready.session_id,
      width: ready.width,
      height: ready.height,
      format: args.format,
      frames: frames.length,
      flushed,
      dropped,
      fps: Number((frames.length / seconds).toFixed(1)),
      latency_ms: latencies.length
        ? { p50: percentile(latencies, 0.5), p95: percentile(latencies, 0.95), max: Math.max(...latencies) }
        : null,
      bytes_received: bytesReceived,
      bytes_per_frame: bytesPerFrame && Math.round(bytesPerFrame),
      bitrate_kbps: bytesPerFrame && Math.round((bytesPerFrame * 8 * ready.fps) / 1000), // played at the session's fps
      bases: bases.length,
      out_dir: outDir,
    }),
  );
}

await runCli(import.meta.url, USAGE, parseCli, main);
