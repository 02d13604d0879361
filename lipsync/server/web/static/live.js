// Live mode: the microphone to the WebSocket /api/stream in 40 ms PCM chunks; the frames
// drawn on a canvas at their presentation time plus a playback delay, and the speech played
// back through a DelayNode with that same delay, so lips and voice match. Frames come as
// patch output: each frame of the avatar once, then per frame the JPEG of the region the
// lips changed, drawn over its base frame.

import { apiUrl, getApiKey, request, ServiceError } from "./api.js";
import { TYPE_BASE, TYPE_PATCH, unpackMessage, unpackPatch } from "./frames.js";

const CHUNK_S = 0.04; // 40 ms of audio per message
const SPEECH_RATE = 16000; // Wav2Lip's audio rate
const FPS = 25;
const JPEG_QUALITY = 80;
const INITIAL_DELAY_S = 0.5;
const MIN_DELAY_S = 0.25;
const MAX_DELAY_S = 4.5;
const DELAY_MARGIN_S = 0.06; // over the recent 95th percentile of frame latencies
const FIRST_DELAY_MARGIN_S = 0.15; // over the first frame's latency, until there are more
const DELAY_TIME_CONSTANT_S = 0.3;
const RECENT = 50; // latencies the delay follows
const FPS_WINDOW_MS = 2000;
const OPEN_ATTEMPTS = 3;
const MAX_BACKLOG = 50; // 2 s of due frames: beyond, the oldest are skipped to catch up
const KEEP_DECODED = 1; // base frames kept decoded when no queued frame uses them

/** Figures of the live session, shown on the page and read by the browser tests. */
export const liveStats = {
  state: "idle", // idle | connecting | live | interrupting | stopped | failed
  sessionId: null,
  framesReceived: 0,
  framesDrawn: 0,
  fpsReceived: 0, // over the last 2 s
  fpsDrawn: 0, // over the last 2 s
  fpsDrawnAverage: 0, // from the first frame drawn to the last
  latencyP50Ms: null, // frame arrival - its speech's time at the microphone
  latencyP95Ms: null,
  delayMs: null, // playback delay of frames and speech
  droppedByServer: 0,
  badFrames: 0,
  interrupts: 0,
  bytesReceived: 0, // every binary message, base frames included
  basesReceived: 0, // base frames (each frame of the avatar comes once)
  lastDrawnIndex: null, // the index of the frame on the canvas, within its utterance
};

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",")[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/**
 * The base frames of a session: every one kept as its JPEG for the session (the server
 * sends each once), decoded into an ImageBitmap while queued frames use it; the last
 * KEEP_DECODED stay decoded, so an image avatar's one frame is decoded once and a video
 * avatar's are not all held as bitmaps.
 */
class BaseFrames {
  constructor() {
    this.jpegs = new Map(); // avatar frame -> Blob
    this.decoded = new Map(); // avatar frame -> {bitmap: Promise<ImageBitmap>, users}, oldest use first
  }

  add(index, jpeg) {
    this.jpegs.set(index, new Blob([jpeg], { type: "image/jpeg" }));
  }

  has(index) {
    return this.jpegs.has(index);
  }

  /** The bitmap of base frame `index`, held until release(index). */
  acquire(index) {
    let held = this.decoded.get(index);
    if (!held) {
      held = { bitmap: createImageBitmap(this.jpegs.get(index)), users: 0 };
      // A base that fails to decode is not kept failed: the next frame over it tries again.
      held.bitmap.catch(() => this.decoded.get(index) === held && this.decoded.delete(index));
    }
    this.decoded.delete(index);
    this.decoded.set(index, held); // now the most recently used
    held.users++;
    return held.bitmap;
  }

  release(index) {
    const held = this.decoded.get(index);
    if (held) held.users--;
    let excess = this.decoded.size - KEEP_DECODED;
    for (const [i, held] of this.decoded) {
      if (excess <= 0) break;
      if (held.users) continue;
      this.decoded.delete(i);
      held.bitmap.then((bitmap) => bitmap.close(), () => {});
      excess--;
    }
  }
}

export class LiveSession {
  /** hooks: onUpdate(stats), onError(err), onBusy(seconds) */
  constructor({ canvas, playback, hooks }) {
    this.canvas = canvas;
    this.playback = playback;
    this.hooks = hooks;
    this.queue = []; // frames waiting for their time, in order (see receiveBinary)
    this.bases = new BaseFrames();
    this.latencies = [];
    this.drawTimes = [];
    this.receiveTimes = [];
    this.utteranceStart = null; // AudioContext time of the utterance's first sample sent
  }

  async start(face) {
    Object.assign(liveStats, {
      state: "connecting", sessionId: null, framesReceived: 0, framesDrawn: 0, fpsReceived: 0,
      fpsDrawn: 0, fpsDrawnAverage: 0, latencyP50Ms: null, latencyP95Ms: null, delayMs: null,
      droppedByServer: 0, badFrames: 0, interrupts: 0, bytesReceived: 0, basesReceived: 0, lastDrawnIndex: null,
    });
    this.update();
    const start = { type: "start", fps: FPS, protocol: "binary", output: { format: "patch", jpeg_quality: JPEG_QUALITY } };
    if (face.avatarId) start.avatar_id = face.avatarId;
    else {
      start.image = await base64Of(face.file);
      if (face.box) start.box = face.box;
    }
    await this.openAudio();
    start.audio = { sample_rate: this.audio.sampleRate, encoding: "pcm_s16le", channels: 1 };
    for (let attempt = 1; ; attempt++) {
      const refusal = await this.openSocket(start);
      if (!refusal) break;
      if (attempt >= OPEN_ATTEMPTS) throw refusal;
    }
    this.timer = setInterval(() => this.adapt(), 1000);
    requestAnimationFrame(() => this.draw());
  }

  async openAudio() {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new ServiceError("no_microphone", "This page cannot use a microphone here: open it over https (or on localhost).");
    }
    this.mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    // At the model's rate the browser resamples the microphone, the server need not.
    const ctx = new AudioContext({ latencyHint: "interactive", sampleRate: SPEECH_RATE });
    this.audio = ctx;
    await ctx.resume();
    await ctx.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
    const source = ctx.createMediaStreamSource(this.mic);
    const chunker = new AudioWorkletNode(ctx, "pcm-chunker", {
      processorOptions: { chunkSamples: Math.round(ctx.sampleRate * CHUNK_S) },
    });
    const silent = ctx.createGain();
    silent.gain.value = 0;
    source.connect(chunker).connect(silent).connect(ctx.destination); // keeps it pulled
    chunker.port.onmessage = ({ data }) => this.sendAudio(data);
    this.delay = ctx.createDelay(MAX_DELAY_S + 0.5);
    this.delay.delayTime.value = INITIAL_DELAY_S;
    this.volume = ctx.createGain();
    this.volume.gain.value = this.playback ? 1 : 0;
    source.connect(this.delay).connect(this.volume).connect(ctx.destination);
  }

  setPlayback(on) {
    this.playback = on;
    if (this.volume) {
      this.volume.gain.cancelScheduledValues(this.audio.currentTime);
      this.volume.gain.value = on ? 1 : 0;
    }
  }

  /** Opens the session; resolves to null once `ready`, or to the refusal to retry after. */
  openSocket(start) {
    const key = getApiKey();
    const url = apiUrl("api/stream");
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = key ? new WebSocket(url, ["lipsync", `lipsync-key.${key}`]) : new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    return new Promise((resolve, reject) => {
      let opened = false;
      ws.onopen = () => {
        opened = true;
        ws.send(JSON.stringify(start));
      };
      ws.onmessage = ({ data }) => {
        if (typeof data !== "string") return this.receiveBinary(data);
        const message = JSON.parse(data);
        if (message.type === "ready") {
          this.canvas.width = message.width;
          this.canvas.height = message.height;
          liveStats.sessionId = message.session_id;
          liveStats.state = "live";
          this.update();
          resolve(null);
        } else this.receiveMessage(message);
      };
      ws.onclose = async (event) => {
        if (liveStats.state === "stopped") return;
        if (!opened) {
          // The browser hides why an upgrade was refused: ask the same URL over HTTP.
          const refusal = await this.whyRefused();
          if (refusal) reject(refusal);
          else resolve(new ServiceError("closed", "The live session could not be opened."));
          return;
        }
        const error = new ServiceError(
          `close_${event.code}`,
          event.reason || `The live session closed (code ${event.code}).`,
        );
        this.fail(error);
        reject(error);
      };
    });
  }

  /** The HTTP refusal of /api/stream (401, 403, ...), after waiting out a 503; null if none. */
  async whyRefused() {
    try {
      await request("api/stream", {}, this.hooks);
    } catch (err) {
      if (err.status !== 400) return err; // 400: not an upgrade, i.e. every check passed
    }
    return null;
  }

  sendAudio({ pcm, startFrame }) {
    if (liveStats.state !== "live" || this.ws?.readyState !== WebSocket.OPEN) return;
    this.utteranceStart ??= startFrame / this.audio.sampleRate;
    this.ws.send(pcm);
  }

  receiveMessage(message) {
    if (message.type === "error") {
      this.hooks.onError(new ServiceError(message.code, message.message));
    } else if (message.type === "interrupted") {
      this.dropQueue();
      this.utteranceStart = null; // the next audio is a new utterance, frames from 0
      liveStats.state = "live";
    } else if (message.type === "dropped") {
      liveStats.droppedByServer = message.total;
    }
    this.update();
  }

  receiveBinary(buffer) {
    liveStats.bytesReceived += buffer.byteLength;
    let message, patch;
    try {
      message = unpackMessage(buffer);
      if (message.type === TYPE_BASE) {
        this.bases.add(message.index, message.payload); // kept whatever the state: sent once
        liveStats.basesReceived++;
        return;
      }
      if (message.type !== TYPE_PATCH) throw new Error(`unexpected message type ${message.type}`);
      patch = unpackPatch(message.payload);
      if (!this.bases.has(patch.base)) throw new Error(`patch over base frame ${patch.base}, which never came`);
    } catch {
      liveStats.badFrames++;
      return;
    }
    if (liveStats.state !== "live" || this.utteranceStart === null) return; // old speech
    const spoken = this.utteranceStart + message.ptsMs / 1000;
    const latency = this.audio.currentTime - spoken;
    if (!this.latencies.length) this.setDelay(latency + FIRST_DELAY_MARGIN_S, 0); // at once
    this.latencies.push(latency);
    if (this.latencies.length > RECENT) this.latencies.shift();
    liveStats.framesReceived++;
    this.receiveTimes.push(performance.now());
    const entry = {
      due: spoken,
      index: message.index,
      baseIndex: patch.base,
      x: patch.x,
      y: patch.y,
      base: null, // the bitmaps, once decoded (ready)
      piece: null, // null too for a patch without a JPEG: the base as it is
      ready: false,
      done: false, // drawn or dropped
    };
    this.queue.push(entry);
    const piece = patch.width ? createImageBitmap(new Blob([patch.jpeg], { type: "image/jpeg" })) : null;
    Promise.all([this.bases.acquire(patch.base), piece]).then(
      ([base, bitmap]) => {
        if (entry.done) return bitmap?.close(); // dropped meanwhile
        Object.assign(entry, { base, piece: bitmap, ready: true });
      },
      () => {
        if (entry.done) return;
        liveStats.badFrames++;
        this.queue = this.queue.filter((e) => e !== entry);
        this.finish(entry);
      },
    );
  }

  /** Done with a queued frame, drawn or dropped: its patch closed, its base released. */
  finish(entry) {
    entry.done = true;
    entry.piece?.close();
    this.bases.release(entry.baseIndex);
  }

  dropQueue() {
    this.queue.forEach((entry) => this.finish(entry));
    this.queue = [];
  }

  /** Every animation frame: the next decoded frame whose time (+ delay) has come, in
   * order, as its base frame with its patch over it; only a backlog of more than
   * MAX_BACKLOG due frames is skipped to catch up. */
  draw() {
    if (liveStats.state === "stopped" || liveStats.state === "failed") return;
    const now = this.audio.currentTime - this.delay.delayTime.value;
    const due = (i) => i < this.queue.length && this.queue[i].ready && this.queue[i].due <= now;
    while (due(MAX_BACKLOG)) this.finish(this.queue.shift()); // over 2 s behind: catch up
    if (due(0)) {
      const entry = this.queue.shift();
      const context = this.canvas.getContext("2d");
      context.drawImage(entry.base, 0, 0);
      if (entry.piece) context.drawImage(entry.piece, entry.x, entry.y);
      this.finish(entry);
      liveStats.lastDrawnIndex = entry.index;
      liveStats.framesDrawn++;
      const time = performance.now();
      this.drawTimes.push(time);
      this.firstDraw ??= time;
      if (time > this.firstDraw) {
        liveStats.fpsDrawnAverage = ((liveStats.framesDrawn - 1) * 1000) / (time - this.firstDraw);
      }
    }
    requestAnimationFrame(() => this.draw());
  }

  /** Once a second: the figures, and the delay following the frames' recent latency. */
  adapt() {
    const since = performance.now() - FPS_WINDOW_MS;
    this.drawTimes = this.drawTimes.filter((t) => t >= since);
    this.receiveTimes = this.receiveTimes.filter((t) => t >= since);
    liveStats.fpsDrawn = (this.drawTimes.length * 1000) / FPS_WINDOW_MS;
    liveStats.fpsReceived = (this.receiveTimes.length * 1000) / FPS_WINDOW_MS;
    const p95 = percentile(this.latencies, 0.95);
    liveStats.latencyP50Ms = this.latencies.length ? Math.round(1000 * percentile(this.latencies, 0.5)) : null;
    liveStats.latencyP95Ms = p95 === null ? null : Math.round(1000 * p95);
    if (p95 !== null) this.setDelay(p95 + DELAY_MARGIN_S, DELAY_TIME_CONSTANT_S);
    liveStats.delayMs = Math.round(1000 * this.delay.delayTime.value);
    this.update();
  }

  /** The playback delay of frames and speech, bounded; reached with time constant `tau`. */
  setDelay(seconds, tau) {
    const target = Math.min(MAX_DELAY_S, Math.max(MIN_DELAY_S, seconds));
    const param = this.delay.delayTime;
    if (tau > 0) param.setTargetAtTime(target, this.audio.currentTime, tau);
    else param.setValueAtTime(target, this.audio.currentTime);
  }

  interrupt() {
    if (liveStats.state !== "live") return;
    liveStats.state = "interrupting"; // frames and audio wait for `interrupted`
    liveStats.interrupts++;
    this.dropQueue();
    // The old speech still in the delay line is not played: silent until new speech is out.
    const now = this.audio.currentTime;
    this.volume.gain.cancelScheduledValues(now);
    this.volume.gain.setValueAtTime(0, now);
    this.volume.gain.setValueAtTime(this.playback ? 1 : 0, now + this.delay.delayTime.value);
    this.ws.send(JSON.stringify({ type: "interrupt" }));
    this.update();
  }

  stop() {
    const wasOpen = this.ws?.readyState === WebSocket.OPEN;
    liveStats.state = "stopped";
    if (wasOpen) this.ws.send(JSON.stringify({ type: "end" }));
    this.ws?.close();
    this.release();
    this.update();
  }

  fail(error) {
    liveStats.state = "failed";
    this.release();
    this.hooks.onError(error);
    this.update();
  }

  release() {
    clearInterval(this.timer);
    this.dropQueue();
    this.mic?.getTracks().forEach((track) => track.stop());
    this.audio?.close().catch(() => {});
  }

  update() {
    this.hooks.onUpdate(liveStats);
  }
}
