"""Streamed vs whole-file generation, in process: when the first bytes and the first
decodable frame are ready, and the total time.

    python bench/stream_latency.py [--models-dir DIR] [--speech 5.0] [--repeats 3]
                                   [--format webm|mp4] [--precision auto]

A registered avatar (test_assets/face.jpg, its face box given: no detection), `--speech`
seconds of test_assets/speech.wav; whole-file `generation.generate` and
`generation.generate_stream` run alternately `--repeats` times on one engine. Untrained
random-init models when none are given (speed is the same, mouths are meaningless).
Reports medians in ms (and every run's total) as JSON on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import av
import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import audio  # noqa: E402
from bench.load import models_dir  # noqa: E402
from inference_engine import Wav2LipInferenceEngine  # noqa: E402
from lipsync import generation  # noqa: E402
from lipsync.media.encode_options import EncodeOptions  # noqa: E402
from lipsync.options import RenderOptions  # noqa: E402

# The test photo's face as (top, bottom, left, right), as in tests/conftest.py.
FACE_BOX = (50, 180, 165, 280)


def decodes_a_frame(data: bytes) -> bool:
    try:
        with av.open(io.BytesIO(data)) as container:
            return next(container.decode(video=0), None) is not None
    except (av.FFmpegError, StopIteration):
        return False


def run_stream(engine, prepared, speech, options, encode_options) -> dict[str, float]:
    start = time.perf_counter()
    arrivals, chunks = [], []
    for chunk in generation.generate_stream(engine, prepared, speech, options, encode_options):
        arrivals.append(time.perf_counter() - start)
        chunks.append(chunk)
    total = time.perf_counter() - start
    # Off the clock: the first prefix of chunks that decodes to a frame.
    first_frame = next(
        t for i, t in enumerate(arrivals) if decodes_a_frame(b"".join(chunks[: i + 1]))
    )
    return {
        "first_chunk_ms": arrivals[0] * 1000,
        "first_frame_ms": first_frame * 1000,
        "total_ms": total * 1000,
        "chunks": len(chunks),
        "bytes": sum(map(len, chunks)),
    }


def run_whole(engine, prepared, speech, options, encode_options) -> dict[str, float]:
    start = time.perf_counter()
    result = generation.generate(engine, prepared, speech, options, encode_options)
    return {"total_ms": (time.perf_counter() - start) * 1000, "bytes": len(result.video.data)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir")
    parser.add_argument("--speech", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", choices=["webm", "mp4"], default="webm")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args(argv)

    engine = Wav2LipInferenceEngine(models_dir(args.models_dir), precision=args.precision)
    options = RenderOptions(box=FACE_BOX)
    prepared = engine.prepare_face(cv2.imread(str(ROOT / "test_assets" / "face.jpg")), options)
    track, rate = audio.read_audio((ROOT / "test_assets" / "speech.wav").read_bytes())
    track = track[: int(args.speech * rate)]
    speech = generation.Speech(track, rate, audio.resample(track, rate))
    encode_options = EncodeOptions(container=args.format)
    run_whole(engine, prepared, speech, options, encode_options)  # warm-up: compile, caches

    runs: dict[str, list[dict[str, float]]] = {"whole": [], "stream": []}
    for _ in range(args.repeats):
        runs["whole"].append(run_whole(engine, prepared, speech, options, encode_options))
        runs["stream"].append(run_stream(engine, prepared, speech, options, encode_options))
    report = {
        "precision": engine.precision,
        "format": args.format,
        "speech_s": args.speech,
        "repeats": args.repeats,
        **{
            f"{kind}_{key}": round(statistics.median(run[key] for run in kind_runs), 1)
            for kind, kind_runs in runs.items()
            for key in kind_runs[0]
        },
        **{
            f"{kind}_total_ms_each": [round(r["total_ms"]) for r in rs] for kind, rs in runs.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
