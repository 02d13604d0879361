"""INT8 post-training quantization of the Wav2Lip generator IR with NNCF.

    python quantize_int8.py --models-dir models [--samples 300] [--seed 0]

Reads `wav2lip.xml` (and `wav2lip_gan.xml` when present), quantizes weights and activations
with `nncf.quantize` on generated calibration inputs and writes `wav2lip.int8.xml/.bin`
(resp. `wav2lip_gan.int8.xml/.bin`) next to them, recording each under the `int8` key of
`manifest.json` (source IR hashes, samples, seed, preset, NNCF version, held-out accuracy).

Calibration inputs are made the way the engine makes them: 96x96 face crops of
test_assets/face.jpg (random shifts, scales, brightness, flips) and synthetic 1/f textures,
stacked into the 6-channel input by `wav2lip_model.face_input`, then converted to the IR's
raw input (float32 NCHW in [0, 1]; the /255 lives in the engine's preprocessing, not in the
IR); mel windows from generated speech-like audio via `audio.melspectrogram` and
`audio.mel_windows`.

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

import cv2
import numpy as np
import openvino as ov

import audio
from lipsync.options import GENERATOR_NAMES
from lipsync.runtime.wav2lip import (
    AUDIO_INPUT,
    FACE_INPUT,
    FACE_SIZE,
    OUTPUT,
    add_preprocessing,
    audio_input,
    face_input,
    to_uint8_faces,
)
from lipsync.util import configure_logging, sha256_file

logger = logging.getLogger("quantize_int8")

ROOT = Path(__file__).resolve().parents[1]
FACE_IMAGE = ROOT / "test_assets" / "face.jpg"
# The face in test_assets/face.jpg as (top, bottom, left, right), read off the image by eye
# (the same box as tests/conftest.py), with the engine's default bottom pad of 10 pixels.
FACE_BOX = (50, 190, 165, 280)
MANIFEST_NAME = "manifest.json"
INT8_SUFFIX = ".int8"
PRESETS = ("mixed", "performance")
DEFAULT_PRESET = "mixed"
DEFAULT_SAMPLES = 300
FPS = 25.0
TEXTURE_FRACTION = 0.25  # share of calibration crops that are synthetic textures, not faces
HELD_OUT_SEED_OFFSET = 10_007  # held-out inputs never share a seed with calibration


# --- Generated inputs -------------------------------------------------------------------------


def speech_like(
    duration_s: float, sample_rate: int = audio.SAMPLE_RATE, seed: int = 0
) -> np.ndarray:
    """Seeded speech-like audio: a voiced source (harmonics of a drifting pitch, shaped by
    two moving formants), syllable-rate amplitude modulation, fricative noise bursts and
    pauses between phrases. Returns (round(duration_s * sample_rate),) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate)
    t = np.arange(n) / sample_rate

    def slow(rate_hz: float, low: float, high: float) -> np.ndarray:
        """A smooth random curve in [low, high] varying at about rate_hz."""
        knots = np.arange(0.0, duration_s + 2.0 / rate_hz, 1.0 / rate_hz)
        values = rng.uniform(low, high, len(knots))
        return np.interp(t, knots, values)

    f0 = slow(3.0, 95.0, 230.0)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formant1, formant2 = slow(5.0, 300.0, 850.0), slow(5.0, 900.0, 2400.0)
    voiced = np.zeros(n)
    for k in range(1, 31):
        fk = k * f0
        gain = (
            np.exp(-(((fk - formant1) / 180.0) ** 2))
            + 0.6 * np.exp(-(((fk - formant2) / 250.0) ** 2))
            + 0.15 / k
        )
        voiced += np.where(fk < sample_rate / 2 - 200, gain, 0.0) * np.sin(k * phase)
    syllables = np.clip(np.sin(2 * np.pi * np.cumsum(slow(1.0, 3.0, 6.0)) / sample_rate), 0, None)
    phrases = (slow(0.7, -1.0, 1.0) > -0.45).astype(np.float64)
    phrases = np.convolve(phrases, np.hanning(801) / np.hanning(801).sum(), mode="same")
    loudness = slow(0.3, 0.15, 1.0)
    noise = np.diff(rng.standard_normal(n + 1))  # high-passed: fricative-like
    fricative = (slow(4.0, 0.0, 1.0) > 0.75) * 0.35
    wav = loudness * phrases * (syllables**0.6 * voiced / 6.0 + fricative * noise)
    wav += 0.003 * rng.standard_normal(n)  # room noise, also during pauses
    return (0.9 * wav / max(np.abs(wav).max(), 1e-9)).astype(np.float32)


def mel_windows(count: int, seed: int) -> np.ndarray:
    """`count` mel windows (count, 80, 16) float32 of generated speech, in random order."""
    rng = np.random.default_rng(seed)
    duration = max(4.0, count / FPS + 1.0)
    wav = speech_like(duration, seed=seed)
    windows = audio.mel_windows(audio.melspectrogram(wav), FPS)
    return windows[rng.permutation(len(windows))[:count]]


def _texture(rng: np.random.Generator, size: int = FACE_SIZE) -> np.ndarray:
    """A (size, size, 3) uint8 colour texture with a ~1/f spectrum, like natural images."""
    out = np.zeros((size, size, 3))
    slope = rng.uniform(0.5, 1.5)
    octave = 2
    while octave <= size:
        layer = rng.uniform(-0.5, 0.5, (octave, octave, 3))
        out += cv2.resize(layer, (size, size), interpolation=cv2.INTER_LINEAR) * octave**-slope
        octave *= 2
    out = (out - out.mean()) / (out.std() + 1e-8)
    return np.clip(rng.uniform(80, 160) + rng.uniform(30, 80) * out, 0, 255).astype(np.uint8)


def _face_crop(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A (96, 96, 3) uint8 crop around the face: shifted, scaled, re-lit, maybe flipped."""
    top, bottom, left, right = FACE_BOX
    h, w = image.shape[:2]
    cy, cx = (top + bottom) / 2, (left + right) / 2
    size_y, size_x = (bottom - top), (right - left)
    scale = rng.uniform(0.85, 1.25)
    cy += rng.uniform(-0.1, 0.1) * size_y
    cx += rng.uniform(-0.1, 0.1) * size_x
    half_y = size_y * scale * rng.uniform(0.92, 1.08) / 2
    half_x = size_x * scale * rng.uniform(0.92, 1.08) / 2
    y1, y2 = max(0, round(cy - half_y)), min(h, round(cy + half_y))
    x1, x2 = max(0, round(cx - half_x)), min(w, round(cx + half_x))
    crop: np.ndarray = cv2.resize(image[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE)).astype(np.float32)
    crop = crop * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
    crop = crop * rng.uniform(0.9, 1.1, 3)  # colour cast
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.2:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(0.5, 1.5))
    return np.clip(crop, 0, 255).astype(np.uint8)


def face_crops(count: int, seed: int, image: np.ndarray | None = None) -> np.ndarray:
    """`count` (96, 96, 3) uint8 BGR crops: faces of test_assets/face.jpg and textures."""
    rng = np.random.default_rng(seed)
    image = cv2.imread(str(FACE_IMAGE)) if image is None else image
    if image is None:
        raise FileNotFoundError(f"cannot read {FACE_IMAGE}")
    crops = [
        _texture(rng) if rng.random() < TEXTURE_FRACTION else _face_crop(rng, image)
        for _ in range(count)
    ]
    return np.stack(crops)


def engine_inputs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated inputs as the engine feeds the compiled (preprocessed) model:
    mel windows (count, 80, 16) float32 and faces (count, 96, 96, 6) uint8."""
    return mel_windows(count, seed), face_input(face_crops(count, seed + 1))


def raw_inputs(mels: np.ndarray, faces: np.ndarray) -> dict[str, np.ndarray]:
    """Engine inputs -> the IR's raw inputs: (B, 1, 80, 16) and (B, 6, 96, 96) float32 in
    [0, 1] (what `wav2lip_model.add_preprocessing` computes inside the compiled model)."""
    face = faces.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return {AUDIO_INPUT: audio_input(mels), FACE_INPUT: np.ascontiguousarray(face)}


def calibration_items(samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`samples` single-frame raw input dicts for nncf.Dataset."""
    mels, faces = engine_inputs(samples, seed)
    return [raw_inputs(mels[i : i + 1], faces[i : i + 1]) for i in range(samples)]


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


def count_ops(model: ov.Model, type_name: str) -> int:
    return sum(op.get_type_name() == type_name for op in model.get_ops())


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
    """Max abs difference and PSNR of the candidate's uint8 96x96 outputs against the
    reference IR's (both compiled at `precision`) on held-out generated inputs."""
    core = ov.Core()
    reference = compile_generator(core, reference_xml, "f32")
    candidate = compile_generator(core, candidate_xml, precision)
    mels, faces = engine_inputs(samples, seed + HELD_OUT_SEED_OFFSET)
    expected, got = [], []
    for start in range(0, samples, batch_size):
        part = slice(start, start + batch_size)
        expected.append(generate(reference, mels[part], faces[part]))
        got.append(generate(candidate, mels[part], faces[part]))
    expected_all, got_all = np.concatenate(expected), np.concatenate(got)
    diff = np.abs(expected_all.astype(np.int16) - got_all.astype(np.int16))
    return {
        "samples": samples,
        "max_abs": int(diff.max()),
        "mean_abs": round(float(diff.mean()), 3),
        "psnr_db": round(psnr(expected_all, got_all), 2),
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
