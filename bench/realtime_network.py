"""What a live session costs a network, measured by `python -m bench.realtime --network`.

- **Bytes**: per output format (jpeg, patch, webm) and frame size (test_assets/face.jpg at
  512x512, and the same portrait widened to 1024x576), `--network-seconds` of speech sent
  at once with pace "asap", every byte of every message counted up to `flushed` (the base
  frames of patch output included): bytes per frame, and Mbit/s at the session's frame
  rate, i.e. what a network must carry to play it in real time (the kernel here has no
  traffic shaping: bytes are counted, not throttled).
- **CPU per frame** of the output stage (in process, on the frames the real engine
  rendered for the wide portrait): JPEG of the whole frame vs the pasted region.
- **Barge-in with a TTS-like feed**: 6 s of speech sent at 10x real time, `interrupt` as
  the first frame arrives and, in another session, 1 s later (the user talks over the
  reply): the frames of the old speech that arrive between the interrupt and
  `interrupted`, those after it (within 1 s), and the acknowledgement's delay; pace
  "realtime" (default lead) against "asap".
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import requests
import websocket

from lipsync.engine import Wav2LipInferenceEngine
from lipsync.live import LiveLipSync
from lipsync.options import RenderOptions
from lipsync.server.realtime import protocol as p
from lipsync.server.realtime.outputs import JpegOutput, PatchOutput

RATE = 16000
FORMATS = ("jpeg", "patch", "webm")
FEED_SPEEDUP = 10
FEED_SECONDS = 6.0
AFTER_ACK_S = 1.0
BARGE_IN_AFTER_S = (0.0, 1.0)  # from the first frame's arrival to the interrupt


def wide_portrait(image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple]:
    """The portrait scaled to 576 rows and widened to 1024x576 by mirroring its sides;
    -> (image, its face box)."""
    scale = 576 / image.shape[0]
    tall = cv2.resize(image, (round(image.shape[1] * scale), 576))
    side = (1024 - tall.shape[1]) // 2
    wide = cv2.copyMakeBorder(tall, 0, 0, side, 1024 - tall.shape[1] - side, cv2.BORDER_REFLECT)
    top, bottom, left, right = (round(v * scale) for v in box)
    return wide, (top, bottom, left + side, right + side)


def register(url: str, image: np.ndarray, box: tuple) -> str:
    data = cv2.imencode(".png", image)[1].tobytes()
    face = {"image": base64.b64encode(data).decode(), "box": list(box)}
    reply = requests.post(url + "/api/avatars", json=face, timeout=600)
    reply.raise_for_status()
    return reply.json()["avatar_id"]


def open_session(ws_url: str, avatar_id: str, **start) -> tuple[websocket.WebSocket, dict]:
    ws = websocket.create_connection(ws_url, timeout=300)
    ws.send(json.dumps({"type": "start", "avatar_id": avatar_id, **start}))
    ready = json.loads(ws.recv())
    assert ready["type"] == "ready", ready
    return ws, ready


def session_bytes(ws_url: str, avatar_id: str, fmt: str, pcm: np.ndarray, quality: int) -> dict:
    """Every byte of one utterance of `pcm` in output format `fmt`."""
    output = {"format": fmt, "jpeg_quality": quality}
    ws, ready = open_session(ws_url, avatar_id, output=output, pace="asap")
    ws.send_binary(pcm.tobytes())
    ws.send(json.dumps({"type": "flush"}))
    total, frames = 0, 0
    while True:
        opcode, data = ws.recv_data()
        total += len(data)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            message = json.loads(data)
            if message["type"] == "flushed":
                frames = message["frames"]
                break
    ws.close()
    seconds = frames / ready["fps"]
    return {
        "format": fmt,
        "size": f"{ready['width']}x{ready['height']}",
        "frames": frames,
        "bytes": total,
        "bytes_per_frame": round(total / frames),
        "mbit_s": round(total * 8 / seconds / 1e6, 3),
    }


def feed_and_interrupt(
    ws_url: str, avatar_id: str, pcm: np.ndarray, pace: str, fps: float, after_s: float
) -> dict:
    """A TTS-like feed at FEED_SPEEDUP x real time, interrupted (and the feed stopped)
    `after_s` after the first frame arrived. A client playing frames from the first's
    arrival at `fps` has then shown the frames before the interrupt; the others it got
    (`unplayed`) are the old reply's, beyond its barge-in."""
    ws, _ = open_session(ws_url, avatar_id, pace=pace, fps=fps)
    interrupted = threading.Event()

    def feed() -> None:
        chunk = RATE * 40 // 1000
        for offset in range(0, len(pcm), chunk):
            if interrupted.is_set():
                return
            ws.send_binary(pcm[offset : offset + chunk].tobytes())
            time.sleep(chunk / RATE / FEED_SPEEDUP)

    feeder = threading.Thread(target=feed)
    feeder.start()
    pts = [_next_frame(ws, 60.0)]
    first = time.perf_counter()
    while (left := first + after_s - time.perf_counter()) > 0 and (got := _next_frame(ws, left)):
        pts.append(got)
    sent = time.perf_counter()
    ws.send(json.dumps({"type": "interrupt"}))  # websocket-client's sends hold a lock
    interrupted.set()
    before = len(pts)
    while (got := _next_frame(ws, 60.0, until="interrupted")) is not None:
        pts.append(got)
    acknowledged = time.perf_counter() - sent
    between = len(pts) - before
    after = 0
    while _next_frame(ws, AFTER_ACK_S) is not None:
        after += 1
    feeder.join()
    ws.close()
    played_s = sent - first + 1 / fps
    return {
        "pace": pace,
        "fps": fps,
        "interrupt_after_first_frame_s": after_s,
        "old_frames_unplayed": sum(1 for t in pts if t > played_s),
        "old_frames_between_interrupt_and_ack": between,
        "old_frames_after_ack": after,
        "ack_ms": round(acknowledged * 1000, 1),
    }


def _next_frame(ws: websocket.WebSocket, timeout: float, until: str = "") -> float | None:
    """The pts (s) of the next frame within `timeout`; None at the timeout or at the JSON
    message `until`."""
    ws.settimeout(timeout)
    try:
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return p.unpack_frame(data)[1] / 1000
            if json.loads(data)["type"] == until:
                return None
    except websocket.WebSocketTimeoutException:
        return None


def output_cpu(models: Path, precision: str, image: np.ndarray, box: tuple, quality: int) -> dict:
    """CPU ms per frame of the output stage, whole-frame JPEG vs patch, on real frames."""
    engine = Wav2LipInferenceEngine(models, precision=precision)
    options = RenderOptions(box=box)
    prepared = engine.prepare_face(image, options)
    speech = np.random.default_rng(0).normal(0, 0.1, 2 * RATE).astype(np.float32)
    live = LiveLipSync(engine, prepared, options, RATE)
    frames = np.concatenate([live.push(speech), live.finish()])
    sources = np.zeros(len(frames), np.int64)
    start = p.Start(type="start", avatar_id="0" * 32, output={"jpeg_quality": quality})
    result = {"frames": len(frames)}
    for name, output in (
        ("jpeg", JpegOutput(start, options.fps)),
        ("patch", PatchOutput(start, options.fps, prepared, options.blend)),
    ):
        output.speech(frames[:1], 0, 0.0, sources[:1])  # the base frame, once
        began = time.thread_time()
        output.speech(frames, 0, 0.0, sources)
        spent_ms = (time.thread_time() - began) * 1000
        result[f"{name}_cpu_ms_per_frame"] = round(spent_ms / len(frames), 2)
    return result


def measure(server_url: str, models: Path, precision: str, pcm: np.ndarray, args) -> dict:
    """Every network figure against one running server (`args`: quality, face_box,
    network_seconds, network_fps)."""
    ws_url = server_url.replace("http://", "ws://") + "/api/stream"
    root = Path(__file__).resolve().parent.parent
    portrait = cv2.imread(str(root / "test_assets" / "face.jpg"))
    wide, wide_box = wide_portrait(portrait, args.face_box)
    speech = pcm[: int(args.network_seconds * RATE)]
    sizes = []
    for image, box in ((portrait, args.face_box), (wide, wide_box)):
        avatar_id = register(server_url, image, box)
        for fmt in FORMATS:
            sizes.append(session_bytes(ws_url, avatar_id, fmt, speech, args.quality))
            print(json.dumps(sizes[-1]), flush=True)
    feed = np.tile(pcm, 3)[: int(FEED_SECONDS * RATE)]
    barge_in = [
        feed_and_interrupt(ws_url, avatar_id, feed, pace, args.network_fps, after)
        for after in BARGE_IN_AFTER_S
        for pace in ("realtime", "asap")
    ]
    for run in barge_in:
        print(json.dumps(run), flush=True)
    cpu = output_cpu(models, precision, wide, wide_box, args.quality)
    print(json.dumps(cpu), flush=True)
    return {"bytes": sizes, "barge_in": barge_in, "output_cpu": cpu}
