"""The models a benchmark measures: trained ones in models/, else seeded random-init ones
converted once into .cache/bench-models (with an INT8 copy), and the precisions that can run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openvino as ov

from lipsync.conversion import quantize_int8
from lipsync.engine import DETECTOR_NAME
from lipsync.runtime.core import PRECISIONS, cpu_supports_bf16

ROOT = Path(__file__).resolve().parent.parent
BENCH_MODELS = ROOT / ".cache" / "bench-models"
OV_CACHE = ROOT / ".cache" / "bench-openvino"
MODEL = "wav2lip"


def read_manifest(models_dir: Path) -> dict[str, Any]:
    path = models_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def has_models(models_dir: Path) -> bool:
    return all((models_dir / f"{n}.xml").is_file() for n in (MODEL, DETECTOR_NAME))


def prepare_models(models_dir: Path | None) -> tuple[Path, bool]:
    """The models to benchmark and whether they are untrained.

    --models-dir if given; else models/ when it holds converted models; else random-init
    models converted once into .cache/bench-models.
    """
    if models_dir is None:
        models_dir = ROOT / "models" if has_models(ROOT / "models") else BENCH_MODELS
    if not has_models(models_dir):
        if models_dir != BENCH_MODELS:
            raise SystemExit(f"error: {models_dir} has no {MODEL}.xml / {DETECTOR_NAME}.xml")
        from lipsync.conversion import (
            convert as convert_to_openvino,  # torch: conversion only, never in a measured child
        )

        print(f"converting random-init models into {models_dir} ...", flush=True)
        if convert_to_openvino.main(["--random-init", "0", "--output-dir", str(models_dir)]):
            raise SystemExit("error: random-init conversion failed")
    manifest = read_manifest(models_dir)
    untrained = bool(manifest.get("untrained")) or (models_dir / "untrained-checkpoints").is_dir()
    return models_dir, untrained


def int8_xml(models_dir: Path) -> Path:
    return quantize_int8.int8_path(models_dir / f"{MODEL}.xml")


def ensure_int8(models_dir: Path) -> str | None:
    """Make sure the INT8 generator exists; None if it does, else why it is skipped."""
    if int8_xml(models_dir).is_file():
        return None
    if models_dir != BENCH_MODELS:
        return (
            f"{int8_xml(models_dir).name} missing: run python -m lipsync.conversion.quantize_int8 "
            f"--models-dir {models_dir}"
        )
    print(
        "quantizing the bench models to INT8 (python -m lipsync.conversion.quantize_int8) ...",
        flush=True,
    )
    cmd = [
        sys.executable,
        "-m",
        "lipsync.conversion.quantize_int8",
        "--models-dir",
        str(models_dir),
    ]
    cmd += ["--models", MODEL]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return f"quantize_int8 failed: {done.stderr.strip().splitlines()[-1:]}"
    return None


def usable_precisions(precisions: Sequence[str], models_dir: Path) -> tuple[list, list]:
    """(precisions to run, [{precision, reason}] skipped)."""
    bf16 = cpu_supports_bf16(ov.Core())
    run, skipped = [], []
    for precision in precisions:
        reason = None
        if precision not in ("f32", "bf16", "int8"):
            reason = "unknown precision"
        elif precision == "bf16" and not bf16:
            reason = "CPU has no native bf16"
        elif precision == "int8" and "int8" not in PRECISIONS:
            reason = "this engine has no int8 precision"
        elif precision == "int8":
            reason = ensure_int8(models_dir)
        if reason:
            print(f"skipping {precision}: {reason}", flush=True)
            skipped.append({"precision": precision, "reason": reason})
        else:
            run.append(precision)
    return run, skipped


def int8_hint() -> str:
    """Precision of the layers NNCF left in float, in an int8 model: bf16 where native."""
    return "bf16" if cpu_supports_bf16(ov.Core()) else "f32"
