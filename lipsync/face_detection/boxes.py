"""Pure box math for S3FD: prior decoding, NMS, padding and temporal smoothing.

Conventions: a *detection* is `(x1, y1, x2, y2, score)` in pixels of the input image; a
*face box* is `(top, bottom, left, right)` = `(y1, y2, x1, x2)` integer pixel bounds, the
order the reference uses for `--box`, `--pads` and its crop coordinates.
"""

from __future__ import annotations

import numpy as np

from lipsync.errors import InvalidInputError

# S3FD heads: one per feature map of stride 4, 8, ..., 128; each prior is a square anchor
# of side 4 * stride centred on its cell.
STRIDES = (4, 8, 16, 32, 64, 128)
ANCHOR_SCALE = 4
# SSD box-regression variances (centre, size).
CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
# Candidate, NMS and final thresholds of the reference detector.
CANDIDATE_THRESHOLD = 0.05
NMS_IOU_THRESHOLD = 0.3
FACE_THRESHOLD = 0.5
# Frames averaged by the reference's temporal box smoothing.
SMOOTHING_WINDOW = 5


def face_probability(cls: np.ndarray) -> np.ndarray:
    """Softmax probability of the face class.

    cls: (B, 2, H, W) float logits (background, face) -> (B, H, W) float32.
    """
    cls = cls.astype(np.float32, copy=False)
    with np.errstate(over="ignore"):  # exp overflow -> inf -> probability 0, as it should
        return (1.0 / (1.0 + np.exp(cls[:, 0] - cls[:, 1]))).astype(np.float32)


def decode_level(reg: np.ndarray, stride: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Decode regression offsets at the given cells of one head into corner boxes.

    reg: (K, 4) float32 offsets (dx, dy, dw, dh) for the K cells at `rows`, `cols` (K,).
    Returns (K, 4) float32 boxes `x1, y1, x2, y2`, computed in float32 in the same order of
    operations as the reference so integer truncation later agrees.
    """
    reg = reg.astype(np.float32, copy=False)
    anchor = np.float32(ANCHOR_SCALE * stride)
    centers = np.stack([stride / 2 + cols * stride, stride / 2 + rows * stride], axis=1).astype(
        np.float32
    )
    xy = centers + reg[:, :2] * np.float32(CENTER_VARIANCE) * anchor
    wh = anchor * np.exp(reg[:, 2:] * np.float32(SIZE_VARIANCE))
    top_left = xy - wh / 2
    return np.concatenate([top_left, wh + top_left], axis=1)


def decode_detections(
    outputs: list[np.ndarray], threshold: float = CANDIDATE_THRESHOLD
) -> list[np.ndarray]:
    """Turn the 12 S3FD head outputs into per-image candidate detections.

    outputs: [cls_s4, reg_s4, ..., cls_s128, reg_s128]; cls (B, 2, H, W), reg (B, 4, H, W).
    Returns B arrays of shape (K, 5) float32 `x1, y1, x2, y2, score` with score > threshold.
    """
    if len(outputs) != 2 * len(STRIDES):
        raise ValueError(f"expected {2 * len(STRIDES)} S3FD outputs, got {len(outputs)}")
    batch = outputs[0].shape[0]
    per_image: list[list[np.ndarray]] = [[] for _ in range(batch)]
    for level, stride in enumerate(STRIDES):
        scores = face_probability(outputs[2 * level])
        reg = outputs[2 * level + 1]
        for b in range(batch):
            rows, cols = np.nonzero(scores[b] > threshold)
            boxes = decode_level(reg[b][:, rows, cols].T, stride, rows, cols)
            per_image[b].append(np.column_stack([boxes, scores[b, rows, cols]]))
    return [np.concatenate(parts).astype(np.float32) for parts in per_image]


def nms(dets: np.ndarray, iou_threshold: float = NMS_IOU_THRESHOLD) -> np.ndarray:
    """Greedy non-maximum suppression with the reference's inclusive (+1) pixel areas.

    dets: (K, 5) `x1, y1, x2, y2, score`. Returns kept row indices, highest score first.
    """
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def faces_from_detections(dets: np.ndarray) -> np.ndarray:
    """All faces of one image: NMS at 0.3 then score > 0.5, best first. (K, 5) -> (F, 5).

    Filtering at 0.5 before NMS gives the same result as the reference's NMS-then-filter:
    a box can only be suppressed by a higher-scoring one, so boxes at or below 0.5 never
    remove a box above it. It keeps NMS cheap when many cells fire.
    """
    dets = dets[dets[:, 4] > FACE_THRESHOLD]
    return dets[nms(dets)]


def best_face(dets: np.ndarray) -> tuple[int, int, int, int] | None:
    """The reference's choice: the first face after NMS (the top score) if above 0.5.

    Returns integer `(x1, y1, x2, y2)`, clipped at 0 and truncated like the reference,
    or None when no detection scores above 0.5. NMS keeps the top-scoring box first, so
    this is an argmax.
    """
    if dets.shape[0] == 0:
        return None
    top = dets[int(np.argmax(dets[:, 4]))]
    if top[4] <= FACE_THRESHOLD:
        return None
    x1, y1, x2, y2 = (int(v) for v in np.clip(top[:4], 0, None))
    return x1, y1, x2, y2


def pad_box(
    rect: tuple[int, int, int, int], pads: tuple[int, int, int, int], shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """Apply `pads` (top, bottom, left, right) to a detection and clip it to the image.

    rect: `(x1, y1, x2, y2)`; shape: image shape (H, W, ...). Returns `(y1, y2, x1, x2)`.
    """
    pad_top, pad_bottom, pad_left, pad_right = pads
    height, width = shape[:2]
    x1, y1, x2, y2 = rect
    return (
        max(0, y1 - pad_top),
        min(height, y2 + pad_bottom),
        max(0, x1 - pad_left),
        min(width, x2 + pad_right),
    )


def smooth_boxes(boxes: np.ndarray, window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """The reference's temporal smoothing of face boxes over `window` frames.

    boxes: (N, 4) int. Box i becomes the integer-truncated mean of boxes i..i+window-1;
    the last `window - 1` boxes average the final window, in place, so they see boxes
    already smoothed (as the reference does). With fewer than `window` boxes the final
    window is all of them. Returns a new (N, 4) int64 array.
    """
    out = np.asarray(boxes, dtype=np.int64).copy()
    n = len(out)
    if n == 0:
        return out
    head = max(0, n - window + 1)
    if head:
        windows = np.lib.stride_tricks.sliding_window_view(out, window, axis=0)
        out[:head] = windows[:head].mean(axis=2).astype(np.int64)
    tail_start = max(0, n - window)
    for i in range(head, n):
        out[i] = out[tail_start:].mean(axis=0).astype(np.int64)
    return out


def validate_box(
    box: tuple[int, int, int, int], shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """Check an explicit face box `(top, bottom, left, right)` against an image shape."""
    if len(box) != 4:
        raise InvalidInputError(
            f"box must have 4 integers (top, bottom, left, right), got {box!r}", field="box"
        )
    top, bottom, left, right = (int(v) for v in box)
    height, width = shape[:2]
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise InvalidInputError(
            f"box {tuple(box)} (top, bottom, left, right) is empty or outside the "
            f"{width}x{height} image",
            field="box",
        )
    return top, bottom, left, right
