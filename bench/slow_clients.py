"""Slow clients: /health/live latency while N clients stall mid-body, and the time of one
generation, for each gunicorn worker class (same run, same machine).

    python -m bench.slow_clients [--models-dir DIR] [--stalled 64] [--speech 5.0]
                                 [--runs 3] [--worker-classes gthread,gevent]
                                 [--out bench/results/slow_clients.json]

Per worker class (one worker, LIPSYNC_THREADS=4 for gthread): a warm-up generation, then
`--runs` generations of `--speech` seconds one after the other (median wall time), then
`--stalled` connections that send headers and half a body and stall, and `--runs` probes
of /health/live (a probe that gets no answer in PROBE_TIMEOUT_S counts as that long).
Only loopback traffic; every loop is bounded.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.load import FACE_BOX, ROOT, models_dir, speech_wav
from tools import local_server

PROBE_TIMEOUT_S = 10.0


def probe_live(url: str) -> float:
    """Seconds /health/live takes to answer (PROBE_TIMEOUT_S when it does not)."""
    started = time.monotonic()
    try:
        requests.get(url + "/health/live", timeout=PROBE_TIMEOUT_S).raise_for_status()
    except requests.RequestException:
        return PROBE_TIMEOUT_S
    return time.monotonic() - started


def timed_generation(url: str, payload: dict) -> float:
    started = time.monotonic()
    response = requests.post(url + "/api/generate", json=payload, timeout=300)
    response.raise_for_status()
    return time.monotonic() - started


def measure(worker_class: str, models: Path, args: argparse.Namespace, payload: dict) -> dict:
    with tempfile.TemporaryDirectory() as work:
        server = local_server.start_server(
            models, Path(work), LIPSYNC_WORKER_CLASS=worker_class, LIPSYNC_THREADS="4"
        )
        try:
            timed_generation(server.url, payload)  # warm-up
            generations = [timed_generation(server.url, payload) for _ in range(args.runs)]
            idle_live = [probe_live(server.url) for _ in range(args.runs)]
            stalled = local_server.stall_requests(server.url, args.stalled)
            time.sleep(0.5)
            try:
                stalled_live = [probe_live(server.url) for _ in range(args.runs)]
            finally:
                for sock in stalled:
                    sock.close()
        finally:
            local_server.stop_server(server)
    return {
        "worker_class": worker_class,
        "generation_s": [round(s, 3) for s in generations],
        "generation_median_s": round(statistics.median(generations), 3),
        "live_idle_ms": [round(s * 1000, 1) for s in idle_live],
        "live_with_stalled_ms": [round(s * 1000, 1) for s in stalled_live],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--stalled", type=int, default=64)
    parser.add_argument("--speech", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-classes", default="gthread,gevent")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "slow_clients.json"))
    args = parser.parse_args(argv)
    models = models_dir(args.models_dir)
    payload = {
        "image": base64.b64encode((ROOT / "test_assets" / "face.jpg").read_bytes()).decode(),
        "audio": base64.b64encode(speech_wav(args.speech)).decode(),
        "box": FACE_BOX,
    }
    results = {
        "stalled_clients": args.stalled,
        "speech_s": args.speech,
        "probe_timeout_s": PROBE_TIMEOUT_S,
        "runs": [measure(c, models, args, payload) for c in args.worker_classes.split(",")],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
