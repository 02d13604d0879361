// The page: wires the face picker, reply mode and live mode to the controls, and shows every
// error as the service's message.

import { json, setApiKey } from "./api.js";
import { FacePicker } from "./face.js";
import { LiveSession, liveStats } from "./live.js";
import { decodedFrames, playReply, replyStats } from "./reply.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "lipsync.apiKey";

// What the browser tests read.
window.lipsync = { reply: replyStats, live: liveStats, errors: [] };

function showError(err) {
  const message = err?.message || String(err);
  window.lipsync.errors.push({ code: err?.code ?? null, message });
  const banner = $("error");
  banner.textContent = message;
  banner.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function onBusy(seconds, attempt, message) {
  const banner = $("busy");
  banner.hidden = !seconds;
  if (seconds) {
    banner.textContent = `${message ?? "The service is busy."} Retrying in ${seconds} s (attempt ${attempt}).`;
  }
}

window.addEventListener("error", (event) => showError(event.error ?? event.message));
window.addEventListener("unhandledrejection", (event) => showError(event.reason));

const hooks = { onBusy, onError: showError, onChange: () => updateButtons() };
const face = new FacePicker(hooks);
let speech = null;
let live = null;

function updateButtons() {
  const ready = face.ready;
  $("generate").disabled = !ready || !speech || replyStats.state === "requesting" || replyStats.state === "streaming";
  const running = live && ["connecting", "live", "interrupting"].includes(liveStats.state);
  $("live-start").disabled = !ready || running;
  $("live-interrupt").disabled = liveStats.state !== "live" || !running;
  $("live-stop").disabled = !running;
}

function figures(list, rows) {
  list.replaceChildren(
    ...rows.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
}

const ms = (value) => (value === null || value === undefined ? "—" : `${value} ms`);

// -- reply mode ------------------------------------------------------------------------------

function showReply(stats) {
  const video = $("reply-video");
  figures($("reply-timings"), [
    ["state", stats.state],
    ["response headers", ms(stats.headersMs)],
    ["first chunk", ms(stats.firstChunkMs)],
    ["first frame shown", ms(stats.firstFrameMs)],
    ["whole video made", ms(stats.doneMs)],
    ["received", `${(stats.bytes / 1024).toFixed(0)} KiB`],
    ["frames", `${decodedFrames(video)} decoded of ${stats.numFrames ?? "?"}`],
    ...(stats.note ? [["note", stats.note]] : []),
  ]);
  updateButtons();
}

async function generate() {
  clearError();
  $("download").hidden = true;
  const format = $("reply-format").value;
  const video = $("reply-video");
  const blob = await playReply({ video, face: face.choice, speech, format, hooks: { onBusy, onUpdate: showReply } });
  const link = $("download");
  link.href = URL.createObjectURL(blob);
  link.download = `reply.${format}`;
  link.hidden = false;
}

$("generate").addEventListener("click", () =>
  generate().catch((err) => {
    if (replyStats.state !== "failed") replyStats.state = "failed";
    showReply(replyStats);
    showError(err);
  }),
);
$("speech-file").addEventListener("change", () => {
  speech = $("speech-file").files[0] ?? null;
  $("record-info").textContent = speech ? `${speech.name}, ${(speech.size / 1024).toFixed(0)} KiB` : "";
  updateButtons();
});

let recorder = null;
async function toggleRecording() {
  const button = $("record");
  if (recorder) {
    recorder.stop();
    return;
  }
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  const parts = [];
  recorder = new MediaRecorder(mic);
  recorder.ondataavailable = (event) => parts.push(event.data);
  recorder.onstop = () => {
    mic.getTracks().forEach((track) => track.stop());
    const type = recorder.mimeType.split(";")[0];
    speech = new File(parts, `recording.${type.includes("ogg") ? "ogg" : "webm"}`, { type });
    $("record-info").textContent = `Recorded ${(speech.size / 1024).toFixed(0)} KiB`;
    button.textContent = "Record speech";
    button.setAttribute("aria-pressed", "false");
    recorder = null;
    updateButtons();
  };
  recorder.start();
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
  $("record-info").textContent = "Recording…";
}
$("record").addEventListener("click", () => toggleRecording().catch(showError));

// -- live mode -------------------------------------------------------------------------------

function showLive(stats) {
  figures($("live-figures"), [
    ["state", stats.state],
    ["frames drawn", `${stats.framesDrawn} (${stats.fpsDrawn.toFixed(1)} fps)`],
    ["frames received", `${stats.framesReceived} (${stats.fpsReceived.toFixed(1)} fps)`],
    ["latency p50 / p95", `${ms(stats.latencyP50Ms)} / ${ms(stats.latencyP95Ms)}`],
    ["playback delay", ms(stats.delayMs)],
    ["dropped by the server", String(stats.droppedByServer)],
  ]);
  updateButtons();
}

async function startLive() {
  clearError();
  live?.stop();
  live = new LiveSession({
    canvas: $("live-canvas"),
    playback: $("live-playback").checked,
    hooks: { onBusy, onError: showError, onUpdate: showLive },
  });
  try {
    await live.start(face.choice);
  } catch (err) {
    live.release();
    liveStats.state = "failed";
    showLive(liveStats);
    throw err;
  }
}

$("live-start").addEventListener("click", () => startLive().catch(showError));
$("live-interrupt").addEventListener("click", () => live?.interrupt());
$("live-stop").addEventListener("click", () => live?.stop());
$("live-playback").addEventListener("change", () => live?.setPlayback($("live-playback").checked));

// -- tabs, settings, start-up ----------------------------------------------------------------

function selectTab(tab) {
  for (const other of document.querySelectorAll("[role=tab]")) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  tab.focus();
}

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (event) => {
    const tabs = [...document.querySelectorAll("[role=tab]")];
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) selectTab(tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length]);
  });
}

$("settings-form").addEventListener("submit", (event) => event.preventDefault()); // Enter: `change`
$("api-key").value = sessionStorage.getItem(KEY_STORAGE) ?? "";
setApiKey($("api-key").value);
$("api-key").addEventListener("change", () => {
  setApiKey($("api-key").value);
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  start().catch(showError);
});

async function start() {
  clearError();
  const health = await json("health", {}, { onBusy }).catch((err) => {
    if (err.status === 503) return null; // degraded: /health says why in its body
    throw err;
  });
  $("health").textContent = health
    ? `Service ready: OpenVINO ${health.openvino_version} on ${health.device}; speech up to ${health.capabilities.max_audio_seconds} s.`
    : "The service cannot generate yet (models missing): see GET /health.";
  await face.refresh();
}

showReply(replyStats);
showLive(liveStats);
start().catch(showError);
