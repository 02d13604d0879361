"""Generated benchmark inputs: the test portrait fitted into each frame size (JPEG) and seeded
speech-like audio (WAV).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import cv2
import soundfile as sf

from bench.models import ROOT
from lipsync.conversion import generated_inputs

FACE_IMAGE = ROOT / "test_assets" / "face.jpg"
# The face of test_assets/face.jpg (512x512) as (top, bottom, left, right), by eye.
FACE_BOX_512 = (50, 180, 165, 280)


def make_image(width: int, height: int) -> tuple[bytes, tuple[int, int, int, int]]:
    """JPEG bytes of test_assets/face.jpg fitted into width x height (on a blurred, stretched
    copy of itself), and the face box (top, bottom, left, right) in that image."""
    face = cv2.imread(str(FACE_IMAGE))
    scale = min(width / face.shape[1], height / face.shape[0])
    fw, fh = round(face.shape[1] * scale), round(face.shape[0] * scale)
    canvas = cv2.GaussianBlur(cv2.resize(face, (width, height)), (0, 0), 12)
    left, top = (width - fw) // 2, (height - fh) // 2
    canvas[top : top + fh, left : left + fw] = cv2.resize(face, (fw, fh))
    ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    y1, y2, x1, x2 = FACE_BOX_512
    box = (top + round(y1 * scale), top + round(y2 * scale))
    return jpeg.tobytes(), (*box, left + round(x1 * scale), left + round(x2 * scale))


def make_wav(duration_s: float, sample_rate: int, seed: int = 0) -> bytes:
    """16-bit PCM mono WAV bytes of seeded speech-like audio (see generated_inputs.speech_like)."""
    buffer = io.BytesIO()
    wav = generated_inputs.speech_like(duration_s, sample_rate, seed)
    sf.write(buffer, wav, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_inputs(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write every image and WAV the children need; returns their paths and face boxes."""
    images, wavs = {}, {}
    for width, height in args.sizes:
        jpeg, box = make_image(width, height)
        path = workdir / f"face_{width}x{height}.jpg"
        path.write_bytes(jpeg)
        images[f"{width}x{height}"] = {"path": str(path), "box": box, "bytes": len(jpeg)}
    for duration in sorted({*args.durations, 1.0, args.torch_seconds}):
        path = workdir / f"speech_{duration:g}s.wav"
        path.write_bytes(make_wav(duration, args.sample_rate))
        wavs[duration] = str(path)
    return {"images": images, "wavs": wavs}
