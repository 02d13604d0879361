"""Options of one rendering, validated once, and the two box conventions.

Plain data: no OpenVINO or OpenCV here, so request parsing and the API description can use
it without loading the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lipsync.errors import InvalidFieldError, InvalidInputError
from lipsync.limits import FACE_SIDES, FPS, MIN_PAD, SILENCE_FADE_FRAMES, SILENCE_THRESHOLD_DB

# The Wav2Lip generators a request can choose: the base model and the GAN-trained one.
GENERATOR_NAMES = ("wav2lip", "wav2lip_gan")
DEFAULT_PADS = (0, 10, 0, 0)

# How a generated face goes back into its frame: "soft" takes only the lower face through a
# feathered mask with its colour matched; "none" pastes the whole box like the reference.
BLEND_MODES = ("soft", "none")
# Output size by quality mode: fit within (long side, short side) pixels; None keeps the
# input's size. Portrait inputs fit the same bounds turned 90 degrees.
QUALITY_BOUNDS: dict[str, tuple[int, int] | None] = {
    "standard": (1280, 720),
    "high": (1920, 1080),
    "original": None,
}
QUALITY_MODES = tuple(QUALITY_BOUNDS)
# Silence gate: a frame whose mel window peaks below this level (dB on Wav2Lip's mel scale,
# within `limits.SILENCE_THRESHOLD_DB`) shows the avatar's own frame. Measured on
# test_assets/speech.wav: speech windows peak at -27..-46 dB, white noise at -60 dBFS RMS
# at -74 dB, digital silence -100.
DEFAULT_SILENCE_THRESHOLD_DB = -65.0
# Frames over which generated and original frames cross-fade at a switch.
DEFAULT_SILENCE_FADE_FRAMES = 3

# A detection rectangle as S3FD gives it: (x1, y1, x2, y2), pixels.
Rect = tuple[int, int, int, int]
# A face box as the reference pipeline crops and pastes it: (top, bottom, left, right).
FaceBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class RenderOptions:
    """How to turn a face and speech into frames. Validated here, once."""

    fps: float = 25.0
    pads: tuple[int, int, int, int] = DEFAULT_PADS
    box: FaceBox | None = None
    smooth: bool = True
    model: str = "wav2lip"
    # A video frame without a face: error (default) or take the nearest frame's detection.
    fill_missing_faces: bool = False
    blend: str = "soft"
    quality: str = "standard"
    # Silence gate (off by default): frames in silence keep the avatar's frame, no inference.
    silence_gate: bool = False
    silence_threshold_db: float = DEFAULT_SILENCE_THRESHOLD_DB
    silence_fade_frames: int = DEFAULT_SILENCE_FADE_FRAMES

    def __post_init__(self) -> None:
        """InvalidFieldError (a ValueError) naming the first option out of range."""
        if not (isinstance(self.fps, int | float) and math.isfinite(self.fps)):
            raise InvalidFieldError("fps", f"must be a number, got {self.fps!r}")
        if self.fps not in FPS:
            raise InvalidFieldError("fps", f"must be between {FPS.text}, got {self.fps!r}")
        if len(self.pads) != FACE_SIDES or any(
            not isinstance(p, int) or isinstance(p, bool) or p < MIN_PAD for p in self.pads
        ):
            raise InvalidFieldError("pads", f"must be 4 non-negative integers, got {self.pads!r}")
        if self.box is not None and (
            len(self.box) != FACE_SIDES
            or any(not isinstance(v, int) or isinstance(v, bool) for v in self.box)
        ):
            raise InvalidFieldError(
                "box", f"must be 4 integers (top, bottom, left, right), got {self.box!r}"
            )
        if self.model not in GENERATOR_NAMES:
            raise InvalidFieldError(
                "model", f"must be one of {GENERATOR_NAMES}, got {self.model!r}"
            )
        if self.blend not in BLEND_MODES:
            raise InvalidFieldError("blend", f"must be one of {BLEND_MODES}, got {self.blend!r}")
        if self.quality not in QUALITY_MODES:
            raise InvalidFieldError(
                "quality", f"must be one of {QUALITY_MODES}, got {self.quality!r}"
            )
        if not isinstance(self.silence_gate, bool):
            raise InvalidFieldError(
                "silence_gate", f"must be true or false, got {self.silence_gate!r}"
            )
        self._check_silence_options()

    def _check_silence_options(self) -> None:
        threshold = self.silence_threshold_db
        if threshold not in SILENCE_THRESHOLD_DB:
            raise InvalidFieldError(
                "silence_threshold_db",
                f"must be a number between {SILENCE_THRESHOLD_DB.text}, got {threshold!r}",
            )
        fade = self.silence_fade_frames
        if not isinstance(fade, int) or fade not in SILENCE_FADE_FRAMES:
            raise InvalidFieldError(
                "silence_fade_frames",
                f"must be an integer between {SILENCE_FADE_FRAMES.text}, got {fade!r}",
            )


def output_size(width: int, height: int, quality: str) -> tuple[int, int]:
    """The (width, height) frames of a `width` x `height` input are rendered at.

    Fits within the quality's bounds (never enlarges), keeps the aspect ratio, and rounds
    down to even sizes (VP9/H.264 4:2:0 need them); "original" only drops an odd last
    row/column. A side never goes below 2 pixels.
    """
    if quality not in QUALITY_BOUNDS:
        raise InvalidFieldError("quality", f"must be one of {QUALITY_MODES}, got {quality!r}")
    if width < 1 or height < 1:
        raise InvalidInputError(f"image size must be positive, got {width}x{height}")
    bounds = QUALITY_BOUNDS[quality]
    scale = 1.0
    if bounds is not None:
        long_side, short_side = bounds
        scale = min(1.0, long_side / max(width, height), short_side / min(width, height))
    return _even(width * scale), _even(height * scale)


def _even(size: float) -> int:
    return max(2, round(size) // 2 * 2)
