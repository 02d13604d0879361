"""Output size by quality mode and the cost of the soft blend, on the service's code path.

    python -m bench.quality [--models-dir DIR] [--precision auto] [--speech 5]
        [--repeats 2] [--out bench/results/quality.json]

In one process, alternating for --repeats rounds (medians reported), it runs what
POST /api/generate runs for a new face image (audio and image decode, `prepare_face`,
`generation.generate` to VP9/Opus WebM) for:

- a 4000x3000 photo in `standard` (fitted to 960x720 before detection) and in `original`;
- a 1280x720 image in `standard` (nothing to fit), the baseline of the size target.

It reports total time, stage times and file size of each, then the soft blend's cost per
frame at 720p against the reference paste, checks that `blend="none"` still pastes exactly
what the reference does, and times the silence gate off and on for the 720p image with
speech followed by as long a silence (the frames and inference it saves). Targets:
photo/standard within 1.2x the 720p time; blend <= 2 ms per frame at 720p; blend none
exact.

The face is given as an explicit box in every run (the untrained detector's answers are
noise), so the times compare sizes, not detections. Without trained models it converts
random-init networks like bench/pipeline.py (speeds representative, mouths meaningless).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.inputs import make_image, make_wav
from bench.machine import machine_info
from bench.models import OV_CACHE, prepare_models
from bench.pipeline import UNTRAINED_BANNER
from bench.stages import run_once
from lipsync import compositing, generation
from lipsync.conversion import generated_inputs
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.media.encode_options import EncodeOptions
from lipsync.options import RenderOptions
from lipsync.settings import Settings
from lipsync.util import batched

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "quality.json"
PHOTO_SIZE = (4000, 3000)
HD_SIZE = (1280, 720)
SAMPLE_RATE = 16000
BLEND_FRAMES = 500
# Targets of the issue.
MAX_PHOTO_VS_HD = 1.2
MAX_BLEND_MS = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--speech", type=float, default=5.0, help="seconds of speech")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser


def time_requests(
    engine: Wav2LipInferenceEngine, cases: dict[str, dict[str, Any]], wav: bytes, repeats: int
) -> dict[str, dict[str, Any]]:
    """Each case `repeats` times, cases alternating. -> per case: medians and output facts."""
    settings = Settings()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    facts: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name, case in cases.items():
            stages, _, video = run_once(engine, case["image"], wav, case["options"], settings)
            runs[name].append(stages)
            facts[name] = {
                "input": case["input"],
                "quality": case["options"].quality,
                "output": f"{video.width}x{video.height}",
                "frames": video.num_frames,
                "file_bytes": len(video.data),
            }
            print(f"  {name}: {stages['total']:.2f} s, {video.width}x{video.height}", flush=True)
    return {
        name: {
            **facts[name],
            "total_s": round(statistics.median(r["total"] for r in runs[name]), 3),
            "stages_ms": {
                stage: round(1000 * statistics.median(r[stage] for r in runs[name]), 1)
                for stage in runs[name][0]
                if stage != "total"
            },
        }
        for name in cases
    }


def blend_cost(box: tuple[int, int, int, int]) -> dict[str, float]:
    """Median ms per frame of pasting one generated face into a 720p frame, per blend."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (HD_SIZE[1], HD_SIZE[0], 3), dtype=np.uint8)
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    top, bottom, left, right = box
    crop = cv2.resize(frame[top:bottom, left:right], (96, 96))
    result = {}
    for blend in ("none", "soft"):
        seconds = []
        for _ in range(BLEND_FRAMES):
            start = time.perf_counter()
            compositing.paste_face(frame, box, face, crop, blend)
            seconds.append(time.perf_counter() - start)
        result[f"{blend}_ms"] = round(1000 * statistics.median(seconds), 3)
    result["soft_extra_ms"] = round(result["soft_ms"] - result["none_ms"], 3)
    return result


def blend_none_is_the_reference(engine: Wav2LipInferenceEngine, image: bytes, box) -> bool:
    """`blend="none"` frames == the reference's paste (bilinear resize into the box) of the
    same generated faces, and every pixel outside the box unchanged."""
    frame = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    options = RenderOptions(box=box, blend="none", quality="original")
    prepared = engine.prepare_face(frame, options)
    mels = engine.audio_to_mel_windows(np.zeros(SAMPLE_RATE, np.float32), 25.0)
    generator = engine.generator(options.model)
    features = generator.encode_face(prepared.inputs)
    mouths = np.concatenate(  # the same batches as iter_frames, so the same kernels
        [generator.start_with_face(m, features).wait() for m in batched(mels, engine.batch_size)]
    )
    ours = np.concatenate(list(engine.iter_frames(prepared, mels, blend="none")))
    top, bottom, left, right = prepared.boxes[0]
    expected = np.repeat(prepared.frames, len(mels), axis=0)
    for out, mouth in zip(expected, mouths, strict=True):
        out[top:bottom, left:right] = cv2.resize(mouth, (int(right - left), int(bottom - top)))
    return bool(np.array_equal(ours, expected))


def silence_gate_savings(
    engine: Wav2LipInferenceEngine, image: bytes, box, speech_s: float, repeats: int
) -> dict[str, Any]:
    """Speech then as much silence, on the 720p image, gate off vs on (alternating)."""
    voiced = generated_inputs.speech_like(speech_s / 2, SAMPLE_RATE, seed=1)
    wav = np.concatenate([voiced, np.zeros_like(voiced)])
    speech = generation.Speech(wav, SAMPLE_RATE, wav)
    frame = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    prepared = engine.prepare_face(frame, RenderOptions(box=box))
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    silent = 0
    for _ in range(repeats):
        for gate in (False, True):
            start = time.perf_counter()
            result = generation.generate(
                engine,
                prepared,
                speech,
                RenderOptions(box=box, silence_gate=gate),
                EncodeOptions(container="webm"),
            )
            runs[gate].append({**result.timings_ms, "total": time.perf_counter() - start})
            silent = result.silent_frames if gate else silent
    report: dict[str, Any] = {"frames": result.video.num_frames, "silent_frames": silent}
    for gate, name in ((False, "gate_off"), (True, "gate_on")):
        report[name] = {
            "total_s": round(statistics.median(r["total"] for r in runs[gate]), 3),
            "infer_ms": round(statistics.median(r.get("infer", 0.0) for r in runs[gate]), 1),
            "paste_ms": round(statistics.median(r.get("paste", 0.0) for r in runs[gate]), 1),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models_dir, untrained = prepare_models(args.models_dir)
    if untrained:
        print(UNTRAINED_BANNER, flush=True)
    engine = Wav2LipInferenceEngine(models_dir, precision=args.precision, cache_dir=OV_CACHE)
    photo, photo_box = make_image(*PHOTO_SIZE)
    hd, hd_box = make_image(*HD_SIZE)
    wav = make_wav(args.speech, SAMPLE_RATE)
    cases = {
        "photo_standard": {"image": photo, "input": "4000x3000", "box": photo_box},
        "photo_original": {"image": photo, "input": "4000x3000", "box": photo_box},
        "hd_standard": {"image": hd, "input": "1280x720", "box": hd_box},
    }
    for name, case in cases.items():
        case["options"] = RenderOptions(box=case["box"], quality=name.split("_")[1])
    print("warming up ...", flush=True)
    run_once(engine, hd, make_wav(1.0, SAMPLE_RATE), cases["hd_standard"]["options"], Settings())
    print(f"{args.speech:g} s of speech, {args.repeats} round(s):", flush=True)
    requests = time_requests(engine, cases, wav, args.repeats)
    ratio = requests["photo_standard"]["total_s"] / requests["hd_standard"]["total_s"]
    blend = blend_cost(hd_box)
    exact = blend_none_is_the_reference(engine, hd, hd_box)
    print("silence gate ...", flush=True)
    gate = silence_gate_savings(engine, hd, hd_box, args.speech, args.repeats)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "untrained_weights": untrained,
        "machine": machine_info(),
        "settings": {
            "precision": engine.precision,
            "speech_s": args.speech,
            "repeats": args.repeats,
            "face": "explicit box",
        },
        "requests": requests,
        "photo_standard_vs_hd": round(ratio, 3),
        "photo_original_vs_standard": round(
            requests["photo_original"]["total_s"] / requests["photo_standard"]["total_s"], 3
        ),
        "blend_720p": blend,
        "blend_none_is_reference": exact,
        "silence_gate_720p": gate,
        "targets": {
            "photo_standard_within_1_2x_hd": ratio <= MAX_PHOTO_VS_HD,
            "blend_at_most_2_ms": blend["soft_ms"] <= MAX_BLEND_MS,
            "blend_none_parity": exact,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = ("photo_standard_vs_hd", "blend_720p", "silence_gate_720p", "targets")
    print(json.dumps({k: report[k] for k in summary}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
