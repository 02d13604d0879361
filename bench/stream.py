"""Streamed vs whole-file replies through the real server: first byte, first decodable frame,
total time.

    python -m bench.stream [--models-dir DIR] [--repeats 3] [--size 720x576]
                           [--speech 5 30] [--format webm] [--out bench/results/stream.json]

Starts gunicorn on loopback (untrained random-init models when none are given: speed is the
same, mouths are meaningless), registers a face once, then for each speech length sends
`--repeats` pairs of requests in alternation: `"stream": true` (the video sent as it is
made) and the whole-file binary answer. For each it records the time to the first byte,
the time until the bytes received so far decode to a frame (PyAV), and the total time.
Reports medians and the streamed / whole-file ratio of total times. Run it from the project
root.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import requests

from bench.avatar import register
from bench.load import models_dir, speech_wav
from tools import local_server

ROOT = Path(__file__).resolve().parent.parent
CHUNK_BYTES = 4096


def decodes_a_frame(data: bytes) -> bool:
    """Whether the first bytes of a video already hold a decodable frame."""
    try:
        with av.open(io.BytesIO(data)) as container:
            return next(container.decode(video=0), None) is not None
    except (av.FFmpegError, StopIteration, EOFError):
        return False


def timed_reply(url: str, payload: dict) -> dict[str, float]:
    """POST and read the answer as it arrives -> seconds to first byte, first frame, end."""
    start = time.perf_counter()
    first_byte = first_frame = None
    received = bytearray()
    with requests.post(url + "/api/generate", json=payload, stream=True, timeout=600) as reply:
        reply.raise_for_status()
        for chunk in reply.iter_content(CHUNK_BYTES):
            now = time.perf_counter() - start
            first_byte = now if first_byte is None else first_byte
            received += chunk
            if first_frame is None and decodes_a_frame(bytes(received)):
                first_frame = time.perf_counter() - start
    total = time.perf_counter() - start
    return {
        "first_byte_s": first_byte or total,
        "first_frame_s": first_frame or total,
        "total_s": total,
        "bytes": len(received),
    }


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 3)


def measure(url: str, avatar_id: str, seconds: float, fmt: str, repeats: int) -> dict:
    audio = base64.b64encode(speech_wav(seconds)).decode()
    base = {"avatar_id": avatar_id, "audio": audio, "format": fmt}
    streamed, whole = [], []
    for _ in range(repeats):
        streamed.append(timed_reply(url, {**base, "stream": True}))
        whole.append(timed_reply(url, {**base, "response": "binary"}))
    summary = {
        kind: {key: median_of(runs, key) for key in ("first_byte_s", "first_frame_s", "total_s")}
        for kind, runs in (("streamed", streamed), ("whole_file", whole))
    }
    summary["stream_total_over_whole"] = round(
        summary["streamed"]["total_s"] / summary["whole_file"]["total_s"], 3
    )
    summary["runs"] = {"streamed": streamed, "whole_file": whole}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="720x576")
    parser.add_argument("--speech", type=float, nargs="+", default=[5.0, 30.0])
    parser.add_argument("--format", choices=("webm", "mp4"), default="webm")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    size = tuple(int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="lipsync-stream-bench-") as work:
        server = local_server.start_server(models_dir(args.models_dir), Path(work))
        try:
            avatar_id = register(server.url, size)
            measure(server.url, avatar_id, 1.0, args.format, 1)  # warm-up
            results = {
                f"{seconds:g}s": measure(server.url, avatar_id, seconds, args.format, args.repeats)
                for seconds in args.speech
            }
        finally:
            local_server.stop_server(server)

    report = {"size": args.size, "format": args.format, "repeats": args.repeats, **results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for name, result in results.items():
        print(
            f"{name}: streamed first byte {result['streamed']['first_byte_s']} s, "
            f"first frame {result['streamed']['first_frame_s']} s, total "
            f"{result['streamed']['total_s']} s; whole file {result['whole_file']['total_s']} s "
            f"(ratio {result['stream_total_over_whole']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
