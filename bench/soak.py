"""Soak: mixed clients against the real 2-worker server while faults are injected.

    python -m bench.soak [--models-dir DIR] [--seconds 180] [--live 2] [--live-fps 25]
                         [--out bench/results/soak.json]

Starts gunicorn on loopback (2 gevent workers, local avatar store; untrained random-init
models when none are given) and runs, for `--seconds`, at once: whole-file clients,
streamed clients (`stream: true`, the body read to its end), live WebSocket clients (4 s
utterances of test_assets/speech.wav paced in real time as 40 ms PCM chunks, then `flush`,
over and over) and one avatar-churn client (register a new image, generate with it,
delete it, then look for it on fresh connections). Every HTTP client honours Retry-After
and reconnects after a connection error. Faults, at fixed fractions of the run:

- the avatar directory full (a small tmpfs filled by a file, 15-35 %; when the tmpfs
  cannot be mounted, the run says why and the avatar directory is a plain one);
- a worker killed with SIGKILL (40 %), and the time until its replacement answers;
- another worker paused with SIGSTOP for PAUSE_S (55 %), then SIGCONT;
- IDLE_SOCKETS WebSocket connections that upgrade and never send `start` (70-85 %), kept
  up (reopened when closed), while a probe opens a real session.

Reported (printed and written as JSON): the status codes seen per kind of request (no 500
is the goal), per client the longest time from a request's first attempt to its success,
live frame lag p50/p95/max (frame arrival minus the send of the chunk completing its mel
window; measured outside the fault windows, and over the whole run), frames lost,
phantom avatars (listed though never stored) and resurrected ones (answered or listed
after their DELETE), leftover temporaries in the avatar directory and the server's TMPDIR,
the probe session's time to `ready` during the idle flood, and the workers' RSS, threads
and open files before and after. Run it from the project root (as root for the tmpfs).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import requests

from bench.load import models_dir, speech_wav
from bench.realtime import FACE_BOX, load_average, percentiles
from bench.soak_clients import (
    FACE,
    ROOT,
    Plan,
    Record,
    b64,
    churn_client,
    generation_client,
    live_client,
)
from bench.soak_faults import faults, leftovers, process_figures, small_tmpfs
from lipsync import audio
from tools import local_server

# -- the run ---------------------------------------------------------------------------------


def run(models: Path, plan: Plan, work: Path) -> dict:
    """One soak: the server, the clients and the faults; the report."""
    avatar_dir = work / "avatars"
    with small_tmpfs(avatar_dir) as no_tmpfs:
        server = local_server.start_server(
            models, work, LIPSYNC_WORKERS="2", LIPSYNC_RETRY_AFTER_S="1"
        )
        try:
            return soak(server, avatar_dir, plan, no_tmpfs)
        finally:
            local_server.stop_server(server)


def soak(server, avatar_dir: Path, plan: Plan, no_tmpfs: str | None) -> dict:
    url = server.url
    base = requests.post(url + "/api/avatars", json={"image": b64(FACE), "box": list(FACE_BOX)})
    base.raise_for_status()
    base_id = base.json()["avatar_id"]
    record = Record(faults={"disk": no_tmpfs, "base_avatar": base_id})
    before = process_figures(server.worker_pids())
    stop, disk_full = threading.Event(), threading.Event()
    wav, _ = audio.read_audio((ROOT / "test_assets" / "speech.wav").read_bytes())
    pcm = (np.clip(wav, -1, 1 - 1 / 32768) * 32768).astype("<i2")
    ws_url = url.replace("http://", "ws://") + "/api/stream"
    speech = b64(speech_wav(plan.speech_s))
    image = {"image": b64(FACE), "box": list(FACE_BOX), "audio": speech}
    clients = [
        *(
            (generation_client, (url, f"whole_file_{i}", image, record, stop))
            for i in range(plan.whole_file)
        ),
        *(
            (
                generation_client,
                (
                    url,
                    f"streamed_{i}",
                    {"avatar_id": base_id, "audio": speech, "stream": True},
                    record,
                    stop,
                ),
            )
            for i in range(plan.streamed)
        ),
        *(
            (live_client, (ws_url, f"live_{i}", base_id, plan.live_fps, pcm, record, stop))
            for i in range(plan.live)
        ),
        (churn_client, (url, base_id, record, stop, disk_full)),
        (faults, (server, avatar_dir, plan, record, stop, disk_full)),
    ]
    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in clients]
    load_before = load_average()
    for thread in threads:
        thread.start()
    stop.wait(plan.seconds)
    stop.set()
    for thread in threads:
        thread.join(120)
    time.sleep(2.0)  # the server finishes what the clients left
    return report(
        record,
        plan,
        before,
        process_figures(server.worker_pids()),
        leftovers(avatar_dir, server.tmpdir),
        load_before,
    )


def report(record: Record, plan: Plan, before: dict, after: dict, left: dict, load: float) -> dict:
    outside = [
        lag for sent, lag in record.lags if not any(a <= sent <= b for a, b in record.windows)
    ]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "plan": {k: v for k, v in vars(plan).items()},
        "load_average": [load, load_average()],
        "statuses": {kind: dict(counts) for kind, counts in sorted(record.statuses.items())},
        "longest_to_served_s": record.longest(),
        "live_lag_ms": percentiles(outside) if outside else None,
        "live_lag_ms_whole_run": percentiles([lag for _, lag in record.lags])
        if record.lags
        else None,
        "live_frames": len(record.lags),
        "live_frames_lost": record.frames_lost,
        "phantom_avatars": sorted(set(record.phantoms)),
        "resurrected_avatars": sorted(set(record.resurrected)),
        "leftover_temporaries": left,
        "faults": {k: v for k, v in record.faults.items() if k != "base_avatar"},
        "workers_before": before,
        "workers_after": after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--live", type=int, default=Plan.live, help="live sessions at once")
    parser.add_argument(
        "--live-fps", type=float, default=Plan.live_fps, help="frames/s each live session asks"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lipsync-soak-") as work:
        result = run(
            models_dir(args.models_dir),
            Plan(seconds=args.seconds, live=args.live, live_fps=args.live_fps),
            Path(work),
        )
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
