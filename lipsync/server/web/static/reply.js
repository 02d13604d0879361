// Reply mode: POST /api/generate with stream: true, played through MediaSource as it arrives.

import { request, ServiceError } from "./api.js";

/** Figures of the last reply, also read by the browser tests. */
export const replyStats = {
  state: "idle", // idle | requesting | streaming | done | failed
  headersMs: null, // from Generate to the response headers
  firstChunkMs: null,
  firstFrameMs: null, // to the first frame shown by the <video>
  doneMs: null, // to the last byte (the generation has finished)
  bytes: 0,
  numFrames: null, // X-Num-Frames
  streamed: null, // whether the video played while it arrived (MediaSource took it)
  note: null,
  atDone: null, // {currentTime, decodedFrames} of the <video> when the last byte came
};

/** Decoded frames of a <video> so far. */
export function decodedFrames(video) {
  return video.getVideoPlaybackQuality?.().totalVideoFrames ?? 0;
}

/**
 * Generate and play. face: {avatarId} or {file, box}; speech: Blob; format: webm | mp4.
 * hooks: onBusy(seconds), onUpdate(stats). Resolves to the finished file (Blob).
 */
export async function playReply({ video, face, speech, format, hooks }) {
  Object.assign(replyStats, {
    state: "requesting", headersMs: null, firstChunkMs: null, firstFrameMs: null,
    doneMs: null, bytes: 0, numFrames: null, streamed: null, note: null, atDone: null,
  });
  const started = performance.now();
  const since = () => Math.round(performance.now() - started);
  const update = () => hooks.onUpdate(replyStats);
  video.removeAttribute("src");
  watchFirstFrame(video, () => {
    replyStats.firstFrameMs = since();
    update();
  });

  const response = await request("api/generate", { method: "POST", body: form(face, speech, format) }, hooks);
  replyStats.headersMs = since();
  replyStats.numFrames = Number(response.headers.get("X-Num-Frames")) || null;
  replyStats.state = "streaming";
  update();
  const type = response.headers.get("Content-Type").split(";")[0];
  const codecs = response.headers.get("X-Codecs");
  const mime = `${type}; codecs="${codecs}"`;
  const chunks = [];
  const onChunk = (chunk) => {
    chunks.push(chunk);
    replyStats.bytes += chunk.byteLength;
    replyStats.firstChunkMs ??= since();
    update();
  };
  try {
    let refused = null;
    if (window.MediaSource?.isTypeSupported(mime)) {
      refused = await playThroughMediaSource(video, response.body, mime, onChunk);
    } else {
      await readAll(response.body, onChunk);
      refused = new Error("this browser has no MediaSource for it");
    }
    replyStats.streamed = !refused;
    if (refused) {
      replyStats.note = `Played when complete: ${refused.message} (${mime}).`;
      video.src = URL.createObjectURL(new Blob(chunks, { type }));
      video.play().catch(() => {});
    }
  } catch (err) {
    replyStats.state = "failed";
    update();
    if (err instanceof ServiceError) throw err;
    throw new ServiceError(
      "stream_broken",
      `The video stream broke off after ${replyStats.bytes} bytes (${err.message}): ` +
        "the generation failed; the server log has the reason.",
    );
  }
  replyStats.doneMs = since();
  replyStats.atDone = { currentTime: video.currentTime, decodedFrames: decodedFrames(video) };
  replyStats.state = "done";
  update();
  return new Blob(chunks, { type });
}

function form(face, speech, format) {
  const body = new FormData();
  if (face.avatarId) body.append("avatar_id", face.avatarId);
  else {
    body.append(face.file.type.startsWith("video/") ? "video" : "image", face.file);
    if (face.box) body.append("box", face.box.join(","));
  }
  body.append("audio", speech, speech.name ?? "speech.webm");
  body.append("format", format);
  body.append("stream", "true");
  return body;
}

function watchFirstFrame(video, callback) {
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(() => callback());
  else video.addEventListener("playing", callback, { once: true });
}

/** Calls (and awaits) onChunk with each chunk of `body`; cancels the body on failure, so
 * the server stops generating for nobody. */
async function readAll(body, onChunk) {
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      await onChunk(value);
    }
  } catch (err) {
    reader.cancel().catch(() => {});
    throw err;
  }
}

/**
 * Append each chunk to a SourceBuffer as it arrives; start playing after the first one.
 * Resolves to null, or to the error if the browser's MediaSource refused a chunk (Chromium
 * refuses the service's live WebM: see README "In the browser"); the rest is read anyway.
 */
async function playThroughMediaSource(video, body, mime, onChunk) {
  const source = new MediaSource();
  video.src = URL.createObjectURL(source);
  await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
  const buffer = source.addSourceBuffer(mime);
  const append = (chunk) =>
    new Promise((resolve, reject) => {
      const done = () => {
        buffer.removeEventListener("error", failed);
        resolve();
      };
      const failed = () => {
        buffer.removeEventListener("updateend", done);
        reject(new Error("the browser's MediaSource refused a chunk"));
      };
      buffer.addEventListener("updateend", done, { once: true });
      buffer.addEventListener("error", failed, { once: true });
      buffer.appendBuffer(chunk);
    });
  let refused = null;
  let appended = 0;
  await readAll(body, async (chunk) => {
    onChunk(chunk);
    if (refused) return;
    try {
      await append(chunk);
    } catch (err) {
      refused = err;
      return;
    }
    if (appended++ === 0) video.play().catch(() => {}); // autoplay blocked: the controls
  });
  if (!refused) source.endOfStream();
  return refused;
}
