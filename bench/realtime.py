"""Real-time sessions through the real server: per-frame latency, frame rate, drops.

    python -m bench.realtime [--models-dir DIR] [--clients 1 2 3 4] [--seconds 30]
                             [--precisions bf16 int8] [--quality 85] [--fps 25]
                             [--paces realtime asap] [--out bench/results/realtime.json]
    python -m bench.realtime --network [--network-seconds 10] [--network-fps 25] ...

`--network` measures what a session costs a network instead (bench/realtime_network.py:
bytes per output format and frame size, CPU per frame of the output, barge-in with a
TTS-like feed, paced against asap).

Per precision, starts gunicorn on loopback (untrained random-init models when none are
given, with their INT8 copy made once by lipsync/conversion/quantize_int8.py: speed is the
same, mouths are meaningless), registers test_assets/face.jpg once, then for each N in
`--clients` and each of `--paces` (compared in the same run) opens N /api/stream sessions
at once, each sending test_assets/speech.wav (looped) as 40 ms PCM chunks paced in real
time for `--seconds` (chunk k leaves when its last sample is due, as from a microphone),
then `flush`. Latencies per frame, the flushed tail left
out: `latency_ms` from the send of the chunk that completes the frame's mel window (frame
i needs the audio up to i/fps + 212.5 ms at 16 kHz: lipsync/live.py) to the frame's
arrival, i.e. what the server and the network add; `from_frame_start_ms` from the frame's
own start in the speech (i/fps after the speech began) to its arrival, the delay a viewer
sees (its floor: the 212.5 ms window rounded up to whole 40 ms chunks, 240 ms). Also
frames received per second per session, frames dropped, the load average around each
run. Run it from the project root.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import requests
import websocket

from bench import realtime_network
from bench.load import models_dir
from bench.models import usable_precisions
from lipsync import audio
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


def completing_chunk(index: int, fps: float = FPS) -> int:
    """The 0-based chunk whose arrival completes frame `index`'s window (frames at fps)."""
    needed = math.ceil((index / fps + WINDOW_LEAD_S) * RATE)
    return max(math.ceil(needed / CHUNK) - 1, 0)


def run_client(url: str, avatar_id: str, pcm: np.ndarray, seconds: float, session: dict) -> dict:
    """One session fed in real time (`session`: its start's fields): its latencies (s),
    frame rate and drops."""
    fps = session["fps"]
    ws = websocket.create_connection(url, timeout=120)
    ws.send(json.dumps({"type": "start", "avatar_id": avatar_id, **session}))
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
    start = time.perf_counter()
    sent_at.extend(send_paced(ws, pcm, seconds))
    streamed_until = time.perf_counter()
    ws.send(json.dumps({"type": "flush"}))
    reader.join(120)
    ws.close()
    live = [
        i
        for i in arrivals
        if completing_chunk(i, fps) < len(sent_at) and arrivals[i] <= streamed_until + 1.0
    ]
    live_frames = sum(1 for t in arrivals.values() if t <= streamed_until)
    return {
        "latencies": [arrivals[i] - sent_at[completing_chunk(i, fps)] for i in live],
        "from_start": [arrivals[i] - (start + i / fps) for i in live],
        "fps": live_frames / (streamed_until - start),
        "frames": len(arrivals),
        "dropped": state["dropped"],
        "flushed": state["flushed"],
    }


def send_paced(ws: websocket.WebSocket, pcm: np.ndarray, seconds: float) -> list[float]:
    """`seconds` of `pcm` (looped) as CHUNK-sample messages, each sent when its last sample
    is due (as from a microphone); -> each chunk's send time (time.perf_counter)."""
    sent_at = []
    start = time.perf_counter()
    for k in range(int(seconds * RATE / CHUNK)):
        time.sleep(max(start + (k + 1) * CHUNK / RATE - time.perf_counter(), 0))
        offset = (k * CHUNK) % (len(pcm) - CHUNK)
        sent_at.append(time.perf_counter())
        ws.send_binary(pcm[offset : offset + CHUNK].tobytes())
    return sent_at


def measure(url: str, avatar_id: str, pcm: np.ndarray, clients: int, seconds: float, session: dict):
    results: list[dict] = [{}] * clients

    def one(i: int) -> None:
        results[i] = run_client(url, avatar_id, pcm, seconds, session)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "clients": clients,
        "latency_ms": percentiles([x for r in results for x in r["latencies"]]),
        "from_frame_start_ms": percentiles([x for r in results for x in r["from_start"]]),
        "fps_per_session": [round(r["fps"], 2) for r in results],
        "frames_received": [r["frames"] for r in results],
        "frames_dropped": [r["dropped"] for r in results],
    }


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
        "max": round(float(values.max()), 1),
    }


def load_average() -> float:
    """The 1-minute load average (the machine is shared: say how busy it was)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_precision(models: Path, precision: str, pcm: np.ndarray, args) -> list[dict]:
    """Every N of --clients against one server at `precision`."""
    with tempfile.TemporaryDirectory(prefix="lipsync-realtime-bench-") as work:
        server = local_server.start_server(
            models,
            Path(work),
            LIPSYNC_PRECISION=precision,
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
            output = {"jpeg_quality": args.quality}
            measure(url, avatar_id, pcm, 1, 2.0, {"fps": args.fps, "output": output})  # warm-up
            if args.network:
                before = load_average()
                run = realtime_network.measure(server.url, models, precision, pcm, args)
                return [{"precision": precision, **run, "load_before": before}]
            runs = []
            for n in args.clients:
                for pace in args.paces:
                    session = {"fps": args.fps, "pace": pace, "output": output}
                    before = load_average()
                    run = measure(url, avatar_id, pcm, n, args.seconds, session)
                    run.update(precision=precision, pace=pace, load_before=before)
                    runs.append({**run, "load_after": load_average()})
                    print(summary(runs[-1]), flush=True)
            return runs
        finally:
            local_server.stop_server(server)


def summary(run: dict) -> str:
    lat, e2e = run["latency_ms"], run["from_frame_start_ms"]
    return (
        f"{run['precision']} {run['clients']} client(s), pace {run['pace']}: latency p50/p95/max "
        f"{lat['p50']}/{lat['p95']}/{lat['max']} ms (from frame start {e2e['p50']}/"
        f"{e2e['p95']}/{e2e['max']} ms); fps {run['fps_per_session']}; dropped "
        f"{run['frames_dropped']}; load {run['load_before']} -> {run['load_after']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "int8"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--fps", type=float, default=FPS)
    parser.add_argument("--paces", nargs="+", default=["realtime"], choices=["realtime", "asap"])
    parser.add_argument("--network", action="store_true")
    parser.add_argument("--network-seconds", type=float, default=10.0)
    parser.add_argument("--network-fps", type=float, default=25.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "realtime.json"))
    args = parser.parse_args(argv)
    args.face_box = FACE_BOX
    wav, rate = audio.read_audio((ROOT / "test_assets" / "speech.wav").read_bytes())
    if rate != RATE:
        parser.error(f"test_assets/speech.wav is {rate} Hz, expected {RATE}")
    pcm = (np.clip(wav, -1, 1 - 1 / 32768) * 32768).astype("<i2")
    models = models_dir(args.models_dir)
    precisions, skipped = usable_precisions(args.precisions, models)
    runs = [run for precision in precisions for run in run_precision(models, precision, pcm, args)]
    report = {
        "seconds": args.seconds,
        "quality": args.quality,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "skipped": skipped,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
