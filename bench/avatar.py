"""Server time of a 5 s reply: registered avatar (no detection) vs the raw image (detection).

    python -m bench.avatar [--models-dir DIR] [--repeats 5] [--size 720x576] [--speech 5]
                           [--out bench/results/avatar.json]

Starts the real gunicorn server on loopback (untrained random-init models when none are
given: speed is the same, mouths are meaningless), registers a face image once, then times
`--repeats` requests of each kind in alternation. Raw-image requests send a different image
each time (one pixel changed), so none hits the avatar cache and each runs the detector as
a first request from a new face would. Reports medians and the ratio. Run it from the project
root.
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

import cv2
import requests

from bench.load import models_dir, speech_wav
from tools import local_server

ROOT = Path(__file__).resolve().parent.parent


def jpeg(size: tuple[int, int], variant: int) -> bytes:
    """The test portrait resized to `size` (w, h); `variant` changes one pixel."""
    image = cv2.resize(cv2.imread(str(ROOT / "test_assets" / "face.jpg")), size)
    image[0, 0] = (variant % 256, variant // 256 % 256, 7)
    return cv2.imencode(".png", image)[1].tobytes()  # lossless: the pixel change survives


def register(url: str, size: tuple[int, int]) -> str:
    """Register the test portrait at `size` (w, h) as an avatar. -> its id."""
    face = base64.b64encode(jpeg(size, 0)).decode()
    registered = requests.post(url + "/api/avatars", json={"image": face}, timeout=600)
    registered.raise_for_status()
    return registered.json()["avatar_id"]


def timed_post(url: str, payload: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    response = requests.post(url + "/api/generate", json=payload, timeout=600)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, response.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="720x576")
    parser.add_argument("--speech", type=float, default=5.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "avatar.json"))
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    audio_b64 = base64.b64encode(speech_wav(args.speech)).decode()

    with tempfile.TemporaryDirectory(prefix="lipsync-avatar-bench-") as work:
        server = local_server.start_server(models_dir(args.models_dir), Path(work))
        try:
            avatar_id = register(server.url, size)
            timed_post(server.url, {"avatar_id": avatar_id, "audio": audio_b64})  # warm-up
            by_id, raw, stages = [], [], {}
            for i in range(args.repeats):
                seconds, body = timed_post(server.url, {"avatar_id": avatar_id, "audio": audio_b64})
                by_id.append(seconds)
                stages["avatar_id"] = body["timings_ms"]
                image = base64.b64encode(jpeg(size, i + 1)).decode()
                seconds, body = timed_post(server.url, {"image": image, "audio": audio_b64})
                raw.append(seconds)
                stages["raw_image"] = body["timings_ms"]
        finally:
            local_server.stop_server(server)

    result = {
        "size": args.size,
        "speech_seconds": args.speech,
        "repeats": args.repeats,
        "avatar_id_median_s": round(statistics.median(by_id), 3),
        "raw_image_median_s": round(statistics.median(raw), 3),
        "raw_over_avatar": round(statistics.median(raw) / statistics.median(by_id), 2),
        "avatar_id_runs_s": [round(s, 3) for s in by_id],
        "raw_image_runs_s": [round(s, 3) for s in raw],
        "last_stage_timings_ms": stages,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
