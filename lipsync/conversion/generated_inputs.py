"""Generated Wav2Lip inputs, made the way the engine makes them: for NNCF calibration, the
held-out INT8 accuracy check, tests and benchmarks.

Faces are 96x96 crops of test_assets/face.jpg (random shifts, scales, brightness, flips) and
synthetic 1/f textures, stacked into the 6-channel input by `lipsync.runtime.wav2lip.face_input`;
`raw_inputs` converts them to the IR's raw input (float32 NCHW in [0, 1]; the /255 lives in the
engine's preprocessing, not in the IR). Mel windows come from generated speech-like audio via
`audio.melspectrogram` and `audio.mel_windows`. Everything is seeded.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lipsync import audio
from lipsync.runtime.wav2lip import AUDIO_INPUT, FACE_INPUT, FACE_SIZE, audio_input, face_input

ROOT = Path(__file__).resolve().parents[2]  # the source tree (test_assets/)
FACE_IMAGE = ROOT / "test_assets" / "face.jpg"
# The face in test_assets/face.jpg as (top, bottom, left, right), read off the image by eye
# (the same box as tests/conftest.py), with the engine's default bottom pad of 10 pixels.
FACE_BOX = (50, 190, 165, 280)
FPS = 25.0
TEXTURE_FRACTION = 0.25  # share of calibration crops that are synthetic textures, not faces


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
    # float32, then float64 from the colour cast on
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
    [0, 1] (what `lipsync.runtime.wav2lip.add_preprocessing` computes inside the compiled model)."""
    face = faces.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return {AUDIO_INPUT: audio_input(mels), FACE_INPUT: np.ascontiguousarray(face)}


def calibration_items(samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`samples` single-frame raw input dicts for nncf.Dataset."""
    mels, faces = engine_inputs(samples, seed)
    return [raw_inputs(mels[i : i + 1], faces[i : i + 1]) for i in range(samples)]
