"""BGR frames to the encoders' I420 planes, BT.601 limited range, and the FFmpeg tags that
tell players which matrix and range the planes use."""

from __future__ import annotations

import cv2
import numpy as np

# FFmpeg enum values (libavutil/pixfmt.h) tagging the output matrix and range: BT.601
# (SMPTE 170M) limited range, the conversion `bgr_to_i420` performs.
AVCOL_SPC_SMPTE170M = 6
AVCOL_RANGE_MPEG = 1
# BGR -> limited-range BT.601 Y, Cb, Cr (rows), last column the offset, for cv2.transform.
_BGR_TO_YCBCR = (
    np.array(
        [
            [24.966, 128.553, 65.481, 16 * 255],
            [112.0, -74.203, -37.797, 128 * 255],
            [-18.214, -93.786, 112.0, 128 * 255],
        ],
        dtype=np.float32,
    )
    / 255
)


def bgr_to_i420(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR, H and W even -> (H * 3 / 2, W) uint8 I420 (yuv420p planes Y, U,
    V stacked), BT.601 limited range like swscale's default; chroma is the 2x2 mean
    (cv2's COLOR_BGR2YUV_I420 point-samples it, which aliases on coloured edges)."""
    height, width = frame.shape[:2]
    ycbcr = cv2.transform(frame, _BGR_TO_YCBCR)
    chroma = cv2.resize(ycbcr, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    luma_size = height * width
    chroma_size = luma_size // 4
    out = np.empty(luma_size + 2 * chroma_size, dtype=np.uint8)
    out[:luma_size].reshape(height, width)[:] = ycbcr[:, :, 0]
    out[luma_size : luma_size + chroma_size].reshape(height // 2, width // 2)[:] = chroma[:, :, 1]
    out[luma_size + chroma_size :].reshape(height // 2, width // 2)[:] = chroma[:, :, 2]
    return out.reshape(height * 3 // 2, width)
