"""Putting generated faces back into frames: the reference's hard paste, a soft lower-face
blend with colour matching, and the cross-fade weights of the silence gate.

Pure numpy/OpenCV. Boxes are `(top, bottom, left, right)`; frames (H, W, 3) uint8 BGR;
generated faces and crops (96, 96, 3) uint8 BGR.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from lipsync.options import FaceBox

# The mask is 0 above this fraction of the box height (about the nose tip in an S3FD box
# padded 10 px down): eyes, nose and forehead always keep the original pixels.
MASK_TOP = 0.5
# Feather width as a fraction of the box's shorter side; the mask rises from 0 to 1 over it
# inside the box, so the box's own border keeps the original pixels too.
FEATHER_FRACTION = 0.12
MIN_FEATHER_PX = 2.0
# The generator's face size: colour matching measures at this size, before resizing.
FACE_SIZE = 96


def _ramp(distance: np.ndarray, feather: float) -> np.ndarray:
    """Smoothstep from 0 (distance <= 0) to 1 (distance >= feather). float32."""
    t = np.clip(distance / feather, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


@functools.lru_cache(maxsize=128)
def lower_face_mask(height: int, width: int) -> np.ndarray:
    """Weight of the generated pixels in a `height` x `width` box: (height, width) float32.

    0 above MASK_TOP and on the box's border rows/columns, rising over the feather (which
    scales with the box) to 1 over the mouth, chin and lower cheeks. Read-only (cached).
    """
    feather = max(MIN_FEATHER_PX, FEATHER_FRACTION * min(height, width))
    rows = np.arange(height, dtype=np.float32)
    cols = np.arange(width, dtype=np.float32)
    vertical = _ramp(np.minimum(rows - MASK_TOP * (height - 1), height - 1 - rows), feather)
    horizontal = _ramp(np.minimum(cols, width - 1 - cols), feather)
    mask = np.outer(vertical, horizontal)
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=128)
def _mask_parts(height: int, width: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(first row with weight > 0, mask from that row, 1 - mask from that row)."""
    mask = lower_face_mask(height, width)
    first = int(np.argmax(mask.max(axis=1) > 0))
    part = np.ascontiguousarray(mask[first:])
    return first, part, 1.0 - part


@functools.lru_cache(maxsize=1)
def _colour_band() -> np.ndarray:
    """Pixels of a 96x96 face on the mask's feathered edge, where generated pixels meet
    original ones: (96, 96) uint8, 1 on the band (an OpenCV mask)."""
    mask = lower_face_mask(FACE_SIZE, FACE_SIZE)
    return ((mask > 0) & (mask < 1)).astype(np.uint8)


def match_colour(face: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Shift the generated face's colour to the original crop's along the mask edge.

    face, crop: (96, 96, 3) uint8. The per-channel mean difference on the feathered band is
    added to the face when that lowers the band's mean absolute difference (measured: a
    face already in tone, or a band that is not skin, is left alone). -> (96, 96, 3) uint8.
    """
    band = _colour_band()
    difference = cv2.subtract(crop, face, dtype=cv2.CV_32F)
    offset = cv2.mean(difference, band)
    before = sum(cv2.mean(np.abs(difference), band)[:3])
    # OpenCV takes the 4-tuple `offset` as a Scalar; its stubs only list arrays there.
    shifted = cv2.absdiff(difference, offset)  # type: ignore[call-overload]
    after = sum(cv2.mean(shifted, band)[:3])
    if not after < before:
        return face
    return cv2.add(face, offset, dtype=cv2.CV_8U)  # type: ignore[call-overload]


def pasted_region(box: FaceBox, blend: str) -> FaceBox:
    """The part of a frame that `paste_face` may change for `box`: (top, bottom, left,
    right); "soft" leaves the rows above its mask alone."""
    top, bottom, left, right = (int(v) for v in box)
    if blend == "soft":
        top += _mask_parts(bottom - top, right - left)[0]
    return top, bottom, left, right


def paste_face(
    frame: np.ndarray,
    box: FaceBox,
    face: np.ndarray,
    crop: np.ndarray,
    blend: str,
    weight: float = 1.0,
) -> None:
    """Composite one generated face into `frame` (in place).

    blend "none": the reference's paste of the whole box (bilinear resize); "soft": only the
    lower face through `lower_face_mask`, colour-matched to `crop` (the original face at
    96x96). `weight` in (0, 1] scales the generated share (the silence gate's cross-fade);
    1 with "none" is the reference exactly.
    """
    top, bottom, left, right = (int(v) for v in box)
    height, width = bottom - top, right - left
    if blend == "none":
        resized = cv2.resize(face, (width, height))
        region = frame[top:bottom, left:right]
        if weight >= 1.0:
            region[:] = resized
        else:
            cv2.addWeighted(resized, weight, region, 1.0 - weight, 0.0, dst=region)
        return
    if blend != "soft":
        raise ValueError(f"blend must be 'soft' or 'none', got {blend!r}")
    first, mask, inverse = _mask_parts(height, width)
    if weight < 1.0:
        mask = mask * np.float32(weight)
        inverse = 1.0 - mask
    resized = cv2.resize(match_colour(face, crop), (width, height))
    region = frame[top + first : bottom, left:right]
    region[:] = cv2.blendLinear(resized[first:], region, mask, inverse)


def gate_weights(silent: np.ndarray, fade_frames: int) -> np.ndarray:
    """Generated share per frame under the silence gate: (N,) bool -> (N,) float32 in [0, 1].

    Voiced frames get 1. A silent frame d frames from the nearest voiced one gets
    1 - d / (fade_frames + 1), floored at 0: a linear fade-out after speech and fade-in
    before it, monotone across each switch; 0 means the original frame, no inference.
    """
    silent = np.asarray(silent, dtype=bool)
    count = len(silent)
    voiced = np.flatnonzero(~silent)
    if len(voiced) == 0:
        return np.zeros(count, np.float32)
    positions = np.arange(count)
    after = np.searchsorted(voiced, positions).clip(max=len(voiced) - 1)
    before = (after - 1).clip(min=0)
    distance = np.minimum(np.abs(voiced[after] - positions), np.abs(voiced[before] - positions))
    return np.clip(1.0 - distance / (fade_frames + 1), 0.0, 1.0).astype(np.float32)
