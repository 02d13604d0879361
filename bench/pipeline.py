"""Benchmark of the whole lip-sync pipeline, in-process, on the service's own code path.

    python -m bench.pipeline [--models-dir DIR] [--durations 5,30,120]
        [--sizes 720x576,1280x720] [--fps 25] [--repeats 3] [--precisions f32,bf16,int8]
        [--torch-baseline/--no-torch-baseline] [--pairs 3] [--out bench/results/pipeline.json]
        [--quick]

For every (precision, speech duration, image size) it runs, in a fresh subprocess (so peak
RSS is that configuration's), what POST /api/generate runs for a new face image: audio
decode from WAV bytes, image decode from JPEG bytes, `engine.prepare_face` (S3FD detection;
the avatar store's cache-miss path) and `generation.generate` (mel, batched Wav2Lip, paste,
VP9/Opus WebM encode). Stage times are medians over --repeats runs after a warm-up run.

- `infer` is the time the service *waited* for Wav2Lip: the engine runs batch k+1 while
  batch k is pasted and encoded, so part of the Wav2Lip compute is booked under `encode`.
  `wav2lip_fps` is Wav2Lip alone (sync batches) on the same inputs; `stream_fps` is frames
  / (infer + paste + encode), the rate frames leave the lip-sync loop.
- `detect` is S3FD; `detect_box` the same preparation with an explicit face box, and
  `total_box` / `rtf_box` the request with that box instead of detection.
- `rtf` = total / speech duration (< 1 is faster than real time).

It also times the plain PyTorch reference pipeline (lipsync/networks/reference_pipeline.py)
on the 5 s input at the first size: without encoding, against ours doing the same work; and end to
end, with the reference's way of writing the video (DIVX AVI via cv2.VideoWriter, then
ffmpeg's H.264 + AAC re-encode, here through PyAV), against our whole request. The
baseline and ours alternate for --pairs rounds (fresh processes each) and the ratios are
medians over the rounds, so a busy minute on a shared machine skews one round only. A
Wav2Lip-only microbenchmark adds frames/s per batch size for each OpenVINO precision,
LATENCY vs THROUGHPUT hints, and PyTorch fp32 at batch 16.

Without trained models in models/ it converts seeded random-init networks (cached in
.cache/bench-models, with an INT8 copy made by lipsync/conversion/quantize_int8.py) and says so
loudly: the graphs are the real ones, so speeds are representative; the outputs are noise.

Run it from the project root. Its parts: bench/stages.py (the pipeline child),
bench/precision.py (the Wav2Lip-only microbenchmark child), bench/torch_baseline.py (the
PyTorch child), bench/models.py, bench/inputs.py, bench/machine.py and bench/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.inputs import write_inputs
from bench.machine import machine_info, peak_rss_mb
from bench.models import ROOT, int8_hint, prepare_models, usable_precisions
from bench.precision import HINT_BATCH, micro_child
from bench.report import (
    medians,
    micro_ratios,
    print_report,
    summarize_pipeline,
    torch_comparison,
    write_json,
)
from bench.stages import pipeline_child
from bench.torch_baseline import torch_child

DEFAULT_OUT = ROOT / "bench" / "results" / "pipeline.json"
MICRO_BATCHES = (1, 8, 16, 32, 64)
CHILD_TIMEOUT_S = 4 * 3600
_BAR = "!" * 88
UNTRAINED_BANNER = f"""{_BAR}
!! UNTRAINED WEIGHTS: seeded random-init Wav2Lip/S3FD (no trained models found).
!! Timings are representative of the real networks (same graphs); outputs are noise.
{_BAR}"""


# --- Command line -----------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def csv_of(convert: Callable[[str], Any]) -> Callable[[str], list]:
    return lambda text: [convert(v.strip()) for v in text.split(",") if v.strip()]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add(
        "--models-dir",
        type=Path,
        help="IR directory (default: models/ if it holds converted models, else random-init "
        "models converted into .cache/bench-models)",
    )
    add("--durations", type=csv_of(float), default=[5.0, 30.0, 120.0], help="speech seconds")
    add("--sizes", type=csv_of(parse_size), default=[(720, 576), (1280, 720)], help="WxH,...")
    add("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    add("--repeats", type=positive_int, default=3, help="runs per configuration; medians reported")
    add("--precisions", type=csv_of(str), default=["f32", "bf16", "int8"])
    add("--batch-size", type=positive_int, default=16, help="engine batch size (default 16)")
    add("--sample-rate", type=int, default=16000, help="sample rate of the WAV speech")
    add("--torch-baseline", action=argparse.BooleanOptionalAction, default=True)
    add(
        "--pairs",
        type=positive_int,
        default=3,
        help="rounds alternating the torch baseline and ours (>= 1)",
    )
    add("--micro", action=argparse.BooleanOptionalAction, default=True, help="Wav2Lip only")
    add("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    add("--quick", action="store_true", help="smoke run: 1 repeat, 5 s, 720x576, small micro")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    """--quick: one repeat of 5 s at 720x576; torch baseline (if asked) in one round;
    microbenchmark at batch 16 only, without the hint comparison."""
    args.micro_batches = (HINT_BATCH,) if args.quick else MICRO_BATCHES
    args.torch_seconds = 5.0  # the torch baseline always runs 5 s at the first size
    if args.quick:
        args.repeats, args.durations, args.sizes, args.pairs = 1, [5.0], [(720, 576)], 1
    return args


# --- Child processes -------------------------------------------------------------------------


def run_child(cfg: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its result dict."""
    cfg_path = workdir / f"child_{time.monotonic_ns()}.json"
    cfg = {**cfg, "result_path": str(cfg_path.with_suffix(".out.json"))}
    cfg_path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "bench.pipeline", "--child", str(cfg_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"child {cfg['kind']} failed ({done.returncode}):\n{tail}")
    return json.loads(Path(cfg["result_path"]).read_text())


def child_main(cfg_path: Path) -> int:
    """`--child CFG`: run the measurement CFG describes; write its result where it says."""
    cfg = json.loads(cfg_path.read_text())
    kind = cfg["kind"]
    handler = {"pipeline": pipeline_child, "micro": micro_child, "torch": torch_child}[kind]
    result = handler(cfg)
    result["peak_rss_mb"] = peak_rss_mb()
    result["loadavg_end"] = os.getloadavg()[0]
    Path(cfg["result_path"]).write_text(json.dumps(result))
    return 0


# --- Main -------------------------------------------------------------------------------------


def pipeline_configs(
    args, models_dir: Path, inputs: dict, precisions: list, *, comparison: bool = False
) -> list[dict]:
    """One config per (precision, size, duration); with `comparison`, only the torch
    baseline's input, one run each, also timing the no-encode path."""
    sizes = args.sizes[:1] if comparison else args.sizes
    durations = [args.torch_seconds] if comparison else args.durations
    configs = []
    for precision in precisions:
        for width, height in sizes:
            size = f"{width}x{height}"
            for duration in durations:
                configs.append(
                    {
                        "kind": "pipeline",
                        "models_dir": str(models_dir),
                        "precision": precision,
                        "batch_size": args.batch_size,
                        "fps": args.fps,
                        "repeats": 1 if comparison else args.repeats,
                        "duration": duration,
                        "size": size,
                        "image": inputs["images"][size]["path"],
                        "box": inputs["images"][size]["box"],
                        "wav": inputs["wavs"][duration],
                        "warmup_wav": inputs["wavs"][1.0],
                        "no_encode": comparison,
                    }
                )
    return configs


def run_pipeline(configs: list[dict], workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for i, cfg in enumerate(configs, 1):
        label = f"{cfg['precision']} {cfg['duration']:g}s {cfg['size']}"
        print(f"[{i}/{len(configs)}] pipeline {label} ...", flush=True)
        row = summarize_pipeline(cfg, run_child(cfg, workdir))
        print(
            f"    total {row['stages_s']['total']:.2f} s, Wav2Lip {row['wav2lip_fps']:.1f} "
            f"frames/s, RTF {row['rtf']:.3f}, peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        rows.append(row)
    return rows


def run_micro(args, models_dir: Path, precisions: list, workdir: Path) -> dict[str, Any]:
    micro = {}
    for precision in precisions:
        print(f"microbenchmark {precision} ...", flush=True)
        cfg = {
            "kind": "micro",
            "models_dir": str(models_dir),
            "precision": precision,
            "batches": list(args.micro_batches),
            "min_time": 0.5 if args.quick else 2.0,
            "hints": not args.quick,
        }
        micro[precision] = run_child(cfg, workdir)
    return micro


def run_torch(args, models_dir: Path, inputs: dict, workdir: Path) -> dict[str, Any]:
    width, height = args.sizes[0]
    print(f"PyTorch reference baseline {args.torch_seconds:g}s {width}x{height} ...", flush=True)
    cfg = {
        "kind": "torch",
        "models_dir": str(models_dir),
        "image": inputs["images"][f"{width}x{height}"]["path"],
        "wav": inputs["wavs"][args.torch_seconds],
        "fps": args.fps,
        "threads": 2,
        "min_time": 0.5 if args.quick else 2.0,
    }
    return {**run_child(cfg, workdir), "size": f"{width}x{height}"}


def run_comparison(args, models_dir: Path, inputs: dict, precisions: list, workdir: Path) -> dict:
    """Alternate the torch baseline and ours on its input for `--pairs` rounds, so that each
    ratio compares runs made minutes apart on a noisy machine; report the median ratios."""
    rounds = []
    for index in range(args.pairs):
        print(f"comparison round {index + 1}/{args.pairs}", flush=True)
        torch_raw = run_torch(args, models_dir, inputs, workdir)
        configs = pipeline_configs(args, models_dir, inputs, precisions, comparison=True)
        ours = run_pipeline(configs, workdir)
        rounds.append(torch_comparison(torch_raw, ours, args.torch_seconds))
    ratios = rounds[0]["ratio_vs_ours"]
    return {
        **rounds[0],
        "rounds": len(rounds),
        "stages_s": medians([r["stages_s"] for r in rounds]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
        "ratio_vs_ours": {p: medians([r["ratio_vs_ours"][p] for r in rounds]) for p in ratios},
        "per_round": [
            {"stages_s": r["stages_s"], "ratio_vs_ours": r["ratio_vs_ours"]} for r in rounds
        ],
        "wav2lip_fps_b16": statistics.median(r["wav2lip_fps_b16"] for r in rounds),
    }


def run_settings(args: argparse.Namespace, models_dir: Path, precisions: list) -> dict[str, Any]:
    """The report's record of what was measured, and how."""
    return {
        "models_dir": str(models_dir),
        "durations_s": args.durations,
        "sizes": [f"{w}x{h}" for w, h in args.sizes],
        "fps": args.fps,
        "repeats": args.repeats,
        "precisions": precisions,
        "int8_float_layers": int8_hint(),
        "batch_size": args.batch_size,
        "audio": f"{args.sample_rate} Hz 16-bit mono WAV",
        "format": "webm (VP9 realtime cpu-used 8 + Opus), service defaults",
        "quick": args.quick,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    args = apply_quick(args)
    started = time.perf_counter()
    models_dir, untrained = prepare_models(args.models_dir)
    if untrained:
        print(UNTRAINED_BANNER, flush=True)
    precisions, skipped = usable_precisions(args.precisions, models_dir)
    report: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "untrained_weights": untrained,
        "machine": machine_info(),
        "settings": run_settings(args, models_dir, precisions),
        "skipped": skipped,
        "loadavg_start": os.getloadavg(),
    }
    if untrained:
        report["warning"] = "UNTRAINED random-init weights: speed figures only"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        inputs = write_inputs(workdir, args)
        report["inputs"] = {
            k: {"box": v["box"], "jpeg_bytes": v["bytes"]} for k, v in inputs["images"].items()
        }
        configs = pipeline_configs(args, models_dir, inputs, precisions)
        report["pipeline"] = run_pipeline(configs, workdir)
        report["micro"] = run_micro(args, models_dir, precisions, workdir) if args.micro else {}
        if args.torch_baseline:
            report["torch_baseline"] = run_comparison(args, models_dir, inputs, precisions, workdir)
    torch_fps = report.get("torch_baseline", {}).get("wav2lip_fps_b16")
    report["micro_ratio_vs_torch_b16"] = micro_ratios(report["micro"], torch_fps)
    report["loadavg_end"] = os.getloadavg()
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_json(args.out, report)
    if untrained:
        print("\n" + UNTRAINED_BANNER)
    print_report(report)
    print(f"\nwrote {args.out} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
