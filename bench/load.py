"""Load test: K concurrent clients against the real gunicorn server on loopback.

    python -m bench.load [--models-dir DIR] [--workers 2] [--concurrency 8] [--seconds 60]
                         [--rounds 3] [--speech 2.0] [--out bench/results/load.json]

Starts the server (untrained random-init models when no trained ones are given), runs
`--rounds` rounds of `--concurrency` clients for `--seconds` each (every client posts a
generation, waits for the answer, and posts again), then reports per round: throughput,
p50/p95 latency of 200s, the count of each status, and the workers' RSS before and after.
Only loopback traffic; every loop is bounded in count and time. Run it from the project root.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests
import soundfile as sf

from tools import local_server

ROOT = Path(__file__).resolve().parent.parent

FACE_BOX = [50, 180, 165, 280]  # test_assets/face.jpg
MAX_REQUESTS_PER_CLIENT = 1000


def speech_wav(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 700), 1))
    wav = 0.2 * voice * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, wav, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def rss_mb(pids: set[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out[pid] = int(line.split()[1]) / 1024
    return out


def client_loop(
    url: str, payload: dict, stop_at: float, results: list, lock: threading.Lock
) -> None:
    session = requests.Session()
    for _ in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= stop_at:
            return
        start = time.monotonic()
        retry_after = 0.0
        try:
            response = session.post(url + "/api/generate", json=payload, timeout=300)
            status = response.status_code
            retry_after = float(response.headers.get("Retry-After", 0))
        except requests.RequestException as exc:
            status = type(exc).__name__
        with lock:
            results.append((status, time.monotonic() - start))
        # A well-behaved client waits as told before retrying (bounded by the round's end).
        time.sleep(max(0.0, min(retry_after, stop_at - time.monotonic())))


def run_round(url: str, payload: dict, concurrency: int, seconds: float) -> dict:
    results: list = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    started = time.monotonic()
    threads = [
        threading.Thread(target=client_loop, args=(url, payload, stop_at, results, lock))
        for _ in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ok = sorted(latency for status, latency in results if status == 200)
    return {
        "requests": len(results),
        "statuses": dict(Counter(str(status) for status, _ in results)),
        "throughput_ok_per_s": round(len(ok) / elapsed, 3),
        "p50_s": round(statistics.median(ok), 3) if ok else None,
        "p95_s": round(ok[min(len(ok) - 1, int(0.95 * len(ok)))], 3) if ok else None,
        "elapsed_s": round(elapsed, 1),
    }


def models_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from lipsync.conversion import convert as convert_to_openvino

    target = ROOT / ".cache" / "bench-models"
    if not (target / "manifest.json").is_file():
        print("no models given: converting UNTRAINED random-init models (speed only)")
        convert_to_openvino.main(["--random-init", "0", "--output-dir", str(target)])
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speech", type=float, default=2.0, help="seconds of speech per request")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = parser.parse_args(argv)

    payload = {
        "image": base64.b64encode((ROOT / "test_assets" / "face.jpg").read_bytes()).decode(),
        "audio": base64.b64encode(speech_wav(args.speech)).decode(),
        "box": FACE_BOX,
    }
    with tempfile.TemporaryDirectory(prefix="lipsync-load-") as work:
        server = local_server.start_server(
            models_dir(args.models_dir),
            Path(work),
            LIPSYNC_WORKERS=str(args.workers),
            LIPSYNC_THREADS="4",
        )
        try:
            requests.post(server.url + "/api/generate", json=payload, timeout=300)  # warm caches
            pids = server.worker_pids()
            rss_start = rss_mb(pids)
            rounds = []
            for index in range(args.rounds):
                report = run_round(server.url, payload, args.concurrency, args.seconds)
                report["rss_mb"] = {str(pid): round(mb, 1) for pid, mb in rss_mb(pids).items()}
                rounds.append(report)
                print(f"round {index + 1}: {json.dumps(report)}")
            replaced = pids != server.worker_pids()
        finally:
            local_server.stop_server(server)

    first_round_rss = {pid: float(mb) for pid, mb in rounds[0]["rss_mb"].items()}
    growth = {
        pid: round(100 * (float(mb) / first_round_rss[pid] - 1), 2)
        for pid, mb in rounds[-1]["rss_mb"].items()
    }
    summary = {
        "workers": args.workers,
        "concurrency": args.concurrency,
        "seconds_per_round": args.seconds,
        "speech_seconds": args.speech,
        "rss_mb_after_warmup": {str(pid): round(mb, 1) for pid, mb in rss_start.items()},
        "rounds": rounds,
        "rss_growth_pct_first_to_last_round": growth,
        "non_200_503_statuses": sorted(
            {s for r in rounds for s in r["statuses"] if s not in ("200", "503")}
        ),
        "workers_replaced": replaced,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=2))
    print(f"wrote {args.out}")
    return 0 if not summary["non_200_503_statuses"] and not replaced else 1


if __name__ == "__main__":
    sys.exit(main())
