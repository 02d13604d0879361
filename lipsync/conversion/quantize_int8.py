"""INT8 post-training quantization of the Wav2Lip generator IR with NNCF.

    python -m lipsync.conversion.quantize_int8 --models-dir models [--samples 300] [--seed 0]

Reads `wav2lip.xml` (and `wav2lip_gan.xml` when present), quantizes weights and activations
with `nncf.quantize` on generated calibration inputs and writes `wav2lip.int8.xml/.bin`
(resp. `wav2lip_gan.int8.xml/.bin`) next to them, recording each under the `int8` key of
`manifest.json` (source IR hashes, samples, seed, preset, NNCF version, held-out accuracy).

Calibration inputs are made the way the engine makes them (generated_inputs.py: face
crops and textures, mel windows of generated speech-like audio).

Choices, measured on a 2-core AVX-512 (VNNI, BF16) CPU with OpenVINO 2026.4 / NNCF 3.4:
preset "mixed" and "performance" run at the same speed (~190 frames/s at batch 16, vs ~95
bf16 and ~48 f32), so "mixed" (asymmetric activations where useful) is the default;
keeping the final 1x1 convolution in float (--ignore-output-head) changed nothing, and
full (slow) bias correction gained ~1 dB at 4x the time, so the fast one is used.

Accuracy on untrained weights says little: the seeded random-init generator is chaotic
(+-1 grey level of input noise alone costs 28.7 dB PSNR, bf16 32.5 dB), and INT8 lands at
~19 dB against f32 there. Judge INT8 on the trained weights: the held-out PSNR and max
abs difference against f32 are printed and stored in the manifest entry.

A conversion-time tool: NNCF is in requirements-dev.txt only and the serving path never
imports this module. The engine loads `<name>.int8.xml` when its precision is "int8".
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from lipsync.conversion.generated_inputs import calibration_items, engine_inputs
from lipsync.options import GENERATOR_NAMES
from lipsync.runtime.wav2lip import (
    AUDIO_INPUT,
    FACE_INPUT,
    OUTPUT,
    add_preprocessing,
    audio_input,
    to_uint8_faces,
)
from lipsync.util import configure_logging, sha256_file

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
INT8_SUFFIX = ".int8"
PRESETS = ("mixed", "performance")
DEFAULT_PRESET = "mixed"
DEFAULT_SAMPLES = 300
HELD_OUT_SEED_OFFSET = 10_007  # held-out inputs never share a seed with calibration


# --- Quantization -----------------------------------------------------------------------------


def output_head_names(model: ov.Model) -> list[str]:
    """Friendly name of the final 1x1 convolution, the one feeding the output sigmoid."""
    node = model.outputs[0].get_node().input_value(0).get_node()  # Result -> Sigmoid
    while node.get_type_name() not in ("Convolution", "Parameter"):
        node = node.input_value(0).get_node()
    return [node.get_friendly_name()] if node.get_type_name() == "Convolution" else []


def quantize_model(
    model: ov.Model,
    samples: int,
    seed: int,
    *,
    preset: str = DEFAULT_PRESET,
    ignore_output_head: bool = False,
    fast_bias_correction: bool = True,
) -> ov.Model:
    """nncf.quantize an in-memory generator on `samples` generated inputs."""
    import nncf  # conversion-time dependency (requirements-dev.txt)

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    ignored = None
    if ignore_output_head:
        ignored = nncf.IgnoredScope(names=output_head_names(model))
    dataset = nncf.Dataset(calibration_items(samples, seed))
    return nncf.quantize(
        model,
        dataset,
        preset=nncf.QuantizationPreset(preset),
        target_device=nncf.TargetDevice.CPU,
        subset_size=samples,
        fast_bias_correction=fast_bias_correction,
        ignored_scope=ignored,
    )


def _save_atomic(model: ov.Model, out_path: Path) -> None:
    """Save IR as out_path (.xml + .bin) through temporary names, so readers never see half."""
    tmp_xml = out_path.with_name(out_path.stem + f".tmp{os.getpid()}.xml")
    ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
    os.replace(tmp_xml.with_suffix(".bin"), out_path.with_suffix(".bin"))
    os.replace(tmp_xml, out_path)


def quantize_generator(
    xml_path: str | Path,
    out_path: str | Path,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    preset: str = DEFAULT_PRESET,
    ignore_output_head: bool = False,
    fast_bias_correction: bool = True,
) -> Path:
    """Quantize the generator IR at `xml_path` to INT8 and write it to `out_path` (.xml)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    xml_path, out_path = Path(xml_path), Path(out_path)
    model = ov.Core().read_model(str(xml_path))
    started = time.perf_counter()
    quantized = quantize_model(
        model,
        samples,
        seed,
        preset=preset,
        ignore_output_head=ignore_output_head,
        fast_bias_correction=fast_bias_correction,
    )
    _save_atomic(quantized, out_path)
    logger.info(
        "quantized %s -> %s (%d samples, seed %d, preset %s) in %.1f s",
        xml_path.name,
        out_path.name,
        samples,
        seed,
        preset,
        time.perf_counter() - started,
    )
    return out_path


def int8_path(xml_path: str | Path) -> Path:
    """models/wav2lip.xml -> models/wav2lip.int8.xml"""
    xml_path = Path(xml_path)
    return xml_path.with_name(xml_path.stem + INT8_SUFFIX + xml_path.suffix)


# --- Accuracy ---------------------------------------------------------------------------------


def compile_generator(
    core: ov.Core, xml_path: str | Path, precision: str = "f32", config: dict | None = None
) -> ov.CompiledModel:
    """Compile a generator IR with the engine's preprocessing (uint8 NHWC faces)."""
    model = add_preprocessing(core.read_model(str(xml_path)))
    return core.compile_model(
        model, "CPU", {"INFERENCE_PRECISION_HINT": precision, **(config or {})}
    )


def generate(compiled: ov.CompiledModel, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(B, 96, 96, 3) uint8 mouths, exactly as Wav2LipGenerator.start computes them."""
    result = compiled({AUDIO_INPUT: audio_input(mels), FACE_INPUT: faces})
    return to_uint8_faces(result[OUTPUT])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def compare_to_reference(
    reference_xml: str | Path,
    candidate_xml: str | Path,
    *,
    samples: int = 64,
    seed: int = 0,
    precision: str = "f32",
    batch_size: int = 16,
) -> dict[str, float]:
    """Max abs difference and PSNR of the candidate's uint8 96x96 outputs (compiled at
    `precision`) against the reference IR's (at f32) on held-out generated inputs."""
    core = ov.Core()
    reference = compile_generator(core, reference_xml, "f32")
    candidate = compile_generator(core, candidate_xml, precision)
    mels, faces = engine_inputs(samples, seed + HELD_OUT_SEED_OFFSET)
    expected, got = [], []
    for start in range(0, samples, batch_size):
        part = slice(start, start + batch_size)
        expected.append(generate(reference, mels[part], faces[part]))
        got.append(generate(candidate, mels[part], faces[part]))
    return difference(np.concatenate(expected), np.concatenate(got))


def difference(expected: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Sample count, max and mean abs difference and PSNR of two (N, ...) uint8 arrays."""
    diff = np.abs(expected.astype(np.int16) - got.astype(np.int16))
    return {
        "samples": len(expected),
        "max_abs": int(diff.max()),
        "mean_abs": round(float(diff.mean()), 3),
        "psnr_db": round(psnr(expected, got), 2),
    }


# --- Manifest and command line ----------------------------------------------------------------


def record_in_manifest(models_dir: Path, name: str, entry: dict[str, Any]) -> None:
    """Set manifest["int8"][name] = entry (creating the manifest if needed), atomically."""
    path = models_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.setdefault("int8", {})[name] = entry
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)


def manifest_entry(
    xml_path: Path, out_path: Path, args: argparse.Namespace, accuracy: dict[str, float] | None
) -> dict[str, Any]:
    import nncf

    entry: dict[str, Any] = {
        "xml": out_path.name,
        "bin": out_path.with_suffix(".bin").name,
        "source_xml": xml_path.name,
        "source_sha256": sha256_file(xml_path.with_suffix(".bin")),
        "source_xml_sha256": sha256_file(xml_path),
        "samples": args.samples,
        "seed": args.seed,
        "preset": args.preset,
        "ignored_output_head": args.ignore_output_head,
        "fast_bias_correction": not args.full_bias_correction,
        "nncf_version": nncf.__version__,
        "openvino_version": ov.get_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if accuracy is not None:
        entry["held_out_vs_f32"] = accuracy
    return entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="INT8 post-training quantization of the Wav2Lip generator IR (NNCF).",
        epilog="Exit codes: 0 ok, 2 bad arguments or missing model.",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="IR directory (default: models)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help="calibration inputs (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="calibration seed (default: 0)")
    parser.add_argument(
        "--preset", choices=PRESETS, default=DEFAULT_PRESET, help="NNCF preset (default: mixed)"
    )
    parser.add_argument(
        "--ignore-output-head",
        action="store_true",
        help="keep the final 1x1 convolution in float",
    )
    parser.add_argument(
        "--full-bias-correction",
        action="store_true",
        help="NNCF's full bias correction (slower, sometimes more accurate)",
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=64,
        help="held-out inputs for the f32 comparison, 0 to skip (default: %(default)s)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=GENERATOR_NAMES,
        help="generators to quantize (default: those present)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    names = args.models or [n for n in GENERATOR_NAMES if (args.models_dir / f"{n}.xml").is_file()]
    missing = [n for n in names if not (args.models_dir / f"{n}.xml").is_file()]
    if not names or missing:
        which = ", ".join(missing) or "wav2lip"
        print(f"error: {which}.xml not found in {args.models_dir}", file=sys.stderr)
        return 2
    for name in names:
        xml_path = args.models_dir / f"{name}.xml"
        out_path = quantize_generator(
            xml_path,
            int8_path(xml_path),
            samples=args.samples,
            seed=args.seed,
            preset=args.preset,
            ignore_output_head=args.ignore_output_head,
            fast_bias_correction=not args.full_bias_correction,
        )
        accuracy = None
        if args.eval_samples > 0:
            accuracy = compare_to_reference(
                xml_path, out_path, samples=args.eval_samples, seed=args.seed
            )
            logger.info(
                "%s int8 vs f32 on %d held-out inputs: max abs %d, PSNR %.2f dB",
                name,
                accuracy["samples"],
                accuracy["max_abs"],
                accuracy["psnr_db"],
            )
        record_in_manifest(
            args.models_dir, name, manifest_entry(xml_path, out_path, args, accuracy)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
