"""Scale-out: Ray Serve with 1 -> N replicas on a local Ray cluster against gunicorn with as
many workers, on the same machine, in the same run; and the cost of Ray's proxy per request.

    python -m bench.scale [--models-dir DIR] [--replicas 1 2] [--nodes 2] [--concurrency 4]
                          [--seconds 30] [--speech 2.0] [--probes 200]
                          [--out bench/results/scale.json]

Each engine gets the same CPUs on both sides: the cluster has `--nodes` nodes sharing the
machine's cores, a replica takes one node's CPUs (`num_cpus`, so OpenVINO runs that many
threads), and gunicorn's N workers run with `LIPSYNC_INFERENCE_THREADS` set the same.
Every configuration serves `--concurrency` clients posting a generation (an image with a
known box, `--speech` seconds), honouring Retry-After, for `--seconds`: successful
requests/s, p50/p95 of the 200s, status counts (bench.load's round). The proxy's cost:
`--probes` sequential `GET /health/live` through gunicorn and through Ray (p50/p95; the
difference is the proxy's hop to a replica). Only loopback traffic, every loop bounded.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.load import FACE_BOX, models_dir, run_round, speech_wav
from tools import local_ray, local_server

ROOT = Path(__file__).resolve().parent.parent


def probe_latency_ms(url: str, count: int) -> dict:
    """p50/p95/mean of `count` sequential GET /health/live on one connection."""
    session = requests.Session()
    session.get(url + "/health/live", timeout=30)  # connection and caches warm
    times = []
    for _ in range(count):
        start = time.perf_counter()
        assert session.get(url + "/health/live", timeout=30).status_code == 200
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def gunicorn_rounds(models: Path, work: Path, args, payload: dict, threads: int) -> list[dict]:
    """One round per worker count, plus the probe latency with the first."""
    rounds = []
    for workers in args.replicas:
        server = local_server.start_server(
            models,
            work / f"gunicorn-{workers}",
            LIPSYNC_WORKERS=str(workers),
            LIPSYNC_INFERENCE_THREADS=str(threads),
        )
        try:
            requests.post(server.url + "/api/generate", json=payload, timeout=300)  # warm
            report = {
                "engines": workers,
                **run_round(server.url, payload, args.concurrency, args.seconds),
            }
            if workers == args.replicas[0]:
                report["health_live"] = probe_latency_ms(server.url, args.probes)
        finally:
            local_server.stop_server(server)
        print(f"gunicorn, {workers} worker(s): {json.dumps(report)}", flush=True)
        rounds.append(report)
    return rounds


def ray_rounds(models: Path, work: Path, args, payload: dict, cpus: float) -> list[dict]:
    """One round per replica count on one cluster (redeployed with min = max replicas)."""
    cluster = local_ray.start_cluster(
        work / "ray",
        nodes=args.nodes,
        cpus_per_node=cpus,
        LIPSYNC_MODELS_DIR=str(models),
        LIPSYNC_CACHE_DIR=str(work / "ov-cache"),
        LIPSYNC_AVATAR_DIR="none",
        LIPSYNC_LOG_LEVEL="warning",
    )
    rounds = []
    try:
        for replicas in args.replicas:
            url = local_ray.deploy(
                cluster, num_cpus=cpus, memory_mb=512, min_replicas=replicas, max_replicas=replicas
            )
            wait_for_replicas(cluster, replicas)
            requests.post(url + "/api/generate", json=payload, timeout=300)  # warm
            report = {
                "engines": replicas,
                **run_round(url, payload, args.concurrency, args.seconds),
            }
            if replicas == args.replicas[0]:
                report["health_live"] = probe_latency_ms(url, args.probes)
            print(f"ray serve, {replicas} replica(s): {json.dumps(report)}", flush=True)
            rounds.append(report)
    finally:
        local_ray.stop_cluster(cluster)
    return rounds


def wait_for_replicas(
    cluster: local_ray.LocalRayCluster, count: int, timeout_s: float = 300
) -> None:
    deadline = time.monotonic() + timeout_s
    while len(local_ray.replica_pids(cluster)) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} replicas did not come up within {timeout_s:g} s")
        time.sleep(1)
    time.sleep(2)  # the proxy learns about the new replicas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nodes", type=int, default=2, help="Ray nodes sharing the cores")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--speech", type=float, default=2.0, help="seconds of speech per request")
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    cpus = max(1, cores // args.nodes)
    if max(args.replicas) > args.nodes:
        parser.error(f"at most --nodes ({args.nodes}) replicas: one per node")

    payload = {
        "image": base64.b64encode((ROOT / "test_assets" / "face.jpg").read_bytes()).decode(),
        "audio": base64.b64encode(speech_wav(args.speech)).decode(),
        "box": FACE_BOX,
    }
    models = models_dir(args.models_dir)
    with tempfile.TemporaryDirectory(prefix="lipsync-scale-") as tmp:
        work = Path(tmp)
        gunicorn = gunicorn_rounds(models, work, args, payload, threads=cpus)
        ray = ray_rounds(models, work, args, payload, cpus=cpus)

    overhead = {
        key: round(ray[0]["health_live"][key] - gunicorn[0]["health_live"][key], 2)
        for key in ("p50_ms", "p95_ms", "mean_ms")
    }
    summary = {
        "machine_cores": cores,
        "threads_per_engine": cpus,
        "ray_nodes": args.nodes,
        "concurrency": args.concurrency,
        "seconds_per_round": args.seconds,
        "speech_seconds": args.speech,
        "gunicorn": gunicorn,
        "ray_serve": ray,
        "ray_proxy_overhead_health_live": overhead,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
    }
    print("\nengines  gunicorn req/s  p50 / p95 s     ray req/s  p50 / p95 s")
    for g, r in zip(gunicorn, ray, strict=True):
        print(
            f"{g['engines']:>7}  {g['throughput_ok_per_s']:>14}  {g['p50_s']} / {g['p95_s']:<8}"
            f"  {r['throughput_ok_per_s']:>9}  {r['p50_s']} / {r['p95_s']}"
        )
    print(f"Ray proxy overhead per request (/health/live): {overhead}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    statuses = {s for r in gunicorn + ray for s in r["statuses"]}
    return 0 if statuses <= {"200", "503"} else 1


if __name__ == "__main__":
    sys.exit(main())
