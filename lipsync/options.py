"""Options of one rendering, validated once, and the two box conventions.

Plain data: no OpenVINO or OpenCV here, so request parsing and the API description can use
it without loading the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lipsync.errors import InvalidFieldError

# The Wav2Lip generators a request can choose: the base model and the GAN-trained one.
GENERATOR_NAMES = ("wav2lip", "wav2lip_gan")
DEFAULT_PADS = (0, 10, 0, 0)
MAX_FPS = 60.0

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

    def __post_init__(self) -> None:
        """InvalidFieldError (a ValueError) naming the first option out of range."""
        if not (isinstance(self.fps, int | float) and math.isfinite(self.fps)):
            raise InvalidFieldError("fps", f"must be a number, got {self.fps!r}")
        if not 1.0 <= self.fps <= MAX_FPS:
            raise InvalidFieldError("fps", f"must be between 1 and {MAX_FPS:g}, got {self.fps!r}")
        if len(self.pads) != 4 or any(
            not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in self.pads
        ):
            raise InvalidFieldError("pads", f"must be 4 non-negative integers, got {self.pads!r}")
        if self.box is not None and (
            len(self.box) != 4
            or any(not isinstance(v, int) or isinstance(v, bool) for v in self.box)
        ):
            raise InvalidFieldError(
                "box", f"must be 4 integers (top, bottom, left, right), got {self.box!r}"
            )
        if self.model not in GENERATOR_NAMES:
            raise InvalidFieldError(
                "model", f"must be one of {GENERATOR_NAMES}, got {self.model!r}"
            )
