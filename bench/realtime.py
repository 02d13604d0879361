"""Real-time sessions through the real server: per-frame latency, frame rate, drops.

    python -m bench.realtime [--models-dir DIR] [--clients 1 2] [--seconds 10]
                             [--quality 85] [--out bench/results/realtime.json]

Starts gunicorn on loopback (untrained random-init models when none are given: speed is the
same, mouths are meaningless), registers test_assets/face.jpg once, then for each N in
`--clients` opens N /api/stream sessions at once, each sending test_assets/speech.wav
(looped) as 40 ms PCM chunks paced in real time for `--seconds`, then `flush`. A frame's
latency runs from the send of the chunk that completes its mel window (frame i needs the
audio up to i/fps + 212.5 ms at 16 kHz: lipsync/live.py) to the frame's arrival; the
flushed tail is left out. Reports p50/p95/max latency, frames received per second per
session, and frames dropped. Run it from the project root.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import websocket

import audio
from bench.load import models_dir
from lipsync.server.realtime import protocol as p
from tools import local_server

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
FPS = 25
CHUNK = RATE * 40 // 1000
# The test portrait's face (top, bottom, left, right): no detection needed.
FACE_BOX = (50, 180, 165, 280)
# Audio a frame's window needs beyond its start: 0.2 s window + half an STFT window.
WINDOW_LEAD_S = 0.2125


def completing_chunk(index: int) -> int:
    """The 0-based chunk whose arrival completes frame `index`'s window."""
    needed = math.ceil((index / FPS + WINDOW_LEAD_S) * RATE)
    return max(math.ceil(needed / CHUNK) - 1, 0)


def run_client(url: str, avatar_id: str, pcm: np.ndarray, seconds: float, quality: int) -> dict:
    ws = websocket.create_connection(url, timeout=120)
    ws.send(json.dumps({"type": "start", "avatar_id": avatar_id, "output": {"quality": quality}}))
    assert json.loads(ws.recv())["type"] == "ready"
    sent_at: list[float] = []
    arrivals: dict[int, float] = {}
    state = {"dropped": 0, "flushed": None}

    def read() -> None:
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_BINARY:
                index, _, _ = p.unpack_frame(data)
                arrivals.setdefault(index, time.perf_counter())
                continue
            message = json.loads(data)
            if message["type"] == "dropped":
                state["dropped"] = message["total"]
            elif message["type"] == "flushed":
                state["flushed"] = message["frames"]
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    chunks = int(seconds * RATE / CHUNK)
    start = time.perf_counter()
    for k in range(chunks):
        time.sleep(max(start + k * CHUNK / RATE - time.perf_counter(), 0))
        offset = (k * CHUNK) % (len(pcm) - CHUNK)
        sent_at.append(time.perf_counter())
        ws.send_binary(pcm[offset : offset + CHUNK].tobytes())
    streamed_until = time.perf_counter()
    ws.send(json.dumps({"type": "flush"}))
    reader.join(120)
    ws.close()
    latencies = [
        arrivals[i] - sent_at[completing_chunk(i)]
        for i in arrivals
        if completing_chunk(i) < len(sent_at) and arrivals[i] <= streamed_until + 1.0
    ]
    live_frames = sum(1 for t in arrivals.values() if t <= streamed_until)
    return {
        "latencies": latencies,
        "fps": live_frames / (streamed_until - start),
        "frames": len(arrivals),
        "dropped": state["dropped"],
        "flushed": state["flushed"],
    }


def measure(url: str, avatar_id: str, pcm: np.ndarray, clients: int, seconds: float, q: int):
    results: list[dict] = [{}] * clients

    def one(i: int) -> None:
        results[i] = run_client(url, avatar_id, pcm, seconds, q)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = np.array([x for r in results for x in r["latencies"]]) * 1000
    return {
        "clients": clients,
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1),
            "p95": round(float(np.percentile(latencies, 95)), 1),
            "max": round(float(latencies.max()), 1),
        },
        "fps_per_session": [round(r["fps"], 2) for r in results],
        "frames_received": [r["frames"] for r in results],
        "frames_dropped": [r["dropped"] for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "realtime.json"))
    args = parser.parse_args(argv)
    wav, rate = audio.read_audio((ROOT / "test_assets" / "speech.wav").read_bytes())
    if rate != RATE:
        parser.error(f"test_assets/speech.wav is {rate} Hz, expected {RATE}")
    pcm = (np.clip(wav, -1, 1 - 1 / 32768) * 32768).astype("<i2")
    with tempfile.TemporaryDirectory(prefix="lipsync-realtime-bench-") as work:
        server = local_server.start_server(
            models_dir(args.models_dir),
            Path(work),
            LIPSYNC_REALTIME_MAX_SESSIONS=str(max(args.clients)),
        )
        try:
            face = (ROOT / "test_assets" / "face.jpg").read_bytes()
            registered = requests.post(
                server.url + "/api/avatars",
                json={"image": base64.b64encode(face).decode(), "box": list(FACE_BOX)},
                timeout=600,
            )
            registered.raise_for_status()
            avatar_id = registered.json()["avatar_id"]
            url = server.url.replace("http://", "ws://") + "/api/stream"
            measure(url, avatar_id, pcm, 1, 2.0, args.quality)  # warm-up
            results = [
                measure(url, avatar_id, pcm, n, args.seconds, args.quality) for n in args.clients
            ]
        finally:
            local_server.stop_server(server)
    report = {"seconds": args.seconds, "quality": args.quality, "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for r in results:
        print(
            f"{r['clients']} client(s): latency p50 {r['latency_ms']['p50']} ms, p95 "
            f"{r['latency_ms']['p95']} ms, max {r['latency_ms']['max']} ms; fps "
            f"{r['fps_per_session']}; dropped {r['frames_dropped']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
