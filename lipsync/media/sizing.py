"""Frames at the output size of a quality mode (see `lipsync.options.output_size`)."""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.options import FaceBox, Rect, output_size


def fit_frames(frames: np.ndarray, quality: str) -> np.ndarray:
    """(M, H, W, 3) uint8 -> (M, h, w, 3) uint8 at `output_size(W, H, quality)`.

    Shrinks with area averaging (no aliasing on phone photos); a size kept apart from an
    odd last row/column is cropped, not resampled, so those pixels stay exact. Returns the
    input itself when nothing changes.
    """
    height, width = frames.shape[1:3]
    new_width, new_height = output_size(width, height, quality)
    if (new_width, new_height) == (width, height):
        return frames
    if (new_width, new_height) == (width - width % 2, height - height % 2):
        return np.ascontiguousarray(frames[:, :new_height, :new_width])
    return np.stack(
        [cv2.resize(f, (new_width, new_height), interpolation=cv2.INTER_AREA) for f in frames]
    )


def scale_box(box: FaceBox, source: tuple[int, int], target: tuple[int, int]) -> FaceBox:
    """A `(top, bottom, left, right)` box given on a `source` (width, height) image, on the
    same image fitted to `target` (width, height) by `fit_frames`: scaled, or clipped when
    only an odd row/column was cropped."""
    top, bottom, left, right = box
    if target == (source[0] - source[0] % 2, source[1] - source[1] % 2):
        return (
            min(top, target[1]),
            min(bottom, target[1]),
            min(left, target[0]),
            min(right, target[0]),
        )
    sx, sy = target[0] / source[0], target[1] / source[1]
    return (round(top * sy), round(bottom * sy), round(left * sx), round(right * sx))


def scale_rect(rect: Rect, source: tuple[int, ...], target: tuple[int, ...]) -> Rect:
    """An `(x1, y1, x2, y2)` detection on (M, H, W, 3) `source` frames, on `target` ones."""
    sx, sy = target[2] / source[2], target[1] / source[1]
    x1, y1, x2, y2 = rect
    return (int(x1 * sx), int(y1 * sy), int(x2 * sx), int(y2 * sy))
