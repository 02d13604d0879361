"""Prepared faces and frame scheduling: pure data and numpy/OpenCV, no inference.

A `PreparedFace` is what lip-sync needs of an avatar (frames, face boxes, 96x96 crops and
the generator's face input); `frame_order` says which source frame each output frame
shows, `batch_bounds` and `cut_batches` how output frames are grouped into inference
batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from lipsync.runtime.wav2lip import FACE_SIZE, face_input


@dataclass(frozen=True)
class PreparedFace:
    """Frames with their face boxes and 96x96 crops, ready for lip-sync.

    frames: (M, H, W, 3) uint8 BGR (M = 1 for an image); boxes: (M, 4) int64
    `(top, bottom, left, right)`; crops: (M, 96, 96, 3) uint8.
    """

    frames: np.ndarray
    boxes: np.ndarray
    crops: np.ndarray
    inputs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", face_input(self.crops))

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def as_frames(face: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """A BGR image (H, W, 3) or frames (M, H, W, 3) / list of them -> (M, H, W, 3) uint8."""
    frames = np.asarray(face)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0 or 0 in frames.shape:
        raise ValueError(f"face must be a BGR image or frames, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"face frames must be uint8, got {frames.dtype}")
    return frames


def frame_order(num_output: int, num_source: int) -> np.ndarray:
    """Source frame index for each output frame: forward, then backward, and so on.

    A clip shorter than the speech plays 0, 1, ..., M-1, M-2, ..., 1, 0, 1, ... so it never
    jumps. Returns (num_output,) int64.
    """
    if num_source == 1:
        return np.zeros(num_output, dtype=np.int64)
    period = 2 * num_source - 2
    phase = np.arange(num_output) % period
    return np.where(phase < num_source, phase, period - phase)


def batch_bounds(
    num_frames: int, batch_size: int, first_batch: int | None = None
) -> list[tuple[int, int]]:
    """(start, stop) of each batch over `num_frames`: the first of `first_batch` frames
    (default batch_size), then batch_size each, the last possibly shorter."""
    first = batch_size if first_batch is None else first_batch
    if first < 1:
        raise ValueError(f"first_batch must be >= 1, got {first_batch}")
    if num_frames < 1:
        return []
    starts = [0, *range(first, num_frames, batch_size)]
    return list(zip(starts, [*starts[1:], num_frames], strict=True))


def cut_batches(
    bounds: Iterable[tuple[int, int]], rows: Callable[[int], int]
) -> Iterator[tuple[int, int]]:
    """Each (start, stop) of `bounds`, when it is reached, as parts of `rows(left)` frames
    (1 <= rows(left) <= left): how many a batch may have is decided as late as possible."""
    for start, stop in bounds:
        while start < stop:
            size = rows(stop - start)
            if not 1 <= size <= stop - start:
                raise ValueError(f"rows({stop - start}) must be in [1, {stop - start}], got {size}")
            yield start, start + size
            start += size


def crop_faces(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Crop each frame to its box and resize to 96x96 (bilinear). -> (M, 96, 96, 3) uint8."""
    return np.stack(
        [
            cv2.resize(frame[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE))
            for frame, (y1, y2, x1, x2) in zip(frames, boxes, strict=True)
        ]
    )
