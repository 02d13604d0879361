"""S3FD face detector running on OpenVINO."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import openvino as ov

from lipsync.face_detection.boxes import (
    FACE_THRESHOLD,
    STRIDES,
    best_face,
    decode_detections,
    faces_from_detections,
)
from lipsync.runtime.core import CompiledNetwork
from lipsync.util import batched

logger = logging.getLogger(__name__)

# The reference subtracts these from the image *after* BGR->RGB (so from R, G, B).
PIXEL_MEAN = (104.0, 117.0, 123.0)
# Pixels per detector batch: batch size adapts to the frame size to bound activation memory
# (conv1 of a 1280x720 frame alone holds ~240 MB of f32 activations).
PIXELS_PER_BATCH = 1_000_000
MAX_BATCH = 16
# The network pools 5 times by 2 before its 3x3 fc6: smaller images cannot hold a face.
MIN_IMAGE_SIDE = 32
OUTPUT_NAMES = tuple(f"{kind}_s{stride}" for stride in STRIDES for kind in ("cls", "reg"))


def add_preprocessing(model: ov.Model) -> ov.Model:
    """Let the network take uint8 BGR NHWC images: convert, BGR->RGB, subtract the mean."""
    ppp = ov.preprocess.PrePostProcessor(model)
    inp = ppp.input("image")
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    inp.model().set_layout(ov.Layout("NCHW"))
    inp.preprocess().convert_element_type(ov.Type.f32).reverse_channels().mean(list(PIXEL_MEAN))
    return ppp.build()


def batch_size_for(shape: tuple[int, ...]) -> int:
    """Frames per detector call for frames of `shape` (H, W, ...)."""
    return int(np.clip(PIXELS_PER_BATCH // max(1, shape[0] * shape[1]), 1, MAX_BATCH))


class S3FDDetector:
    """Single-shot scale-invariant face detector (S3FD) compiled with OpenVINO."""

    def __init__(self, network: CompiledNetwork) -> None:
        self.network = network

    def raw_outputs(self, images: np.ndarray) -> list[np.ndarray]:
        """Run the network. images: (B, H, W, 3) uint8 BGR -> 12 head outputs (cls/reg)."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be (B, H, W, 3) uint8, got {images.shape} {images.dtype}"
            )
        with self.network.request() as req:
            req.infer({"image": np.ascontiguousarray(images)})
            return [req.get_tensor(name).data.copy() for name in OUTPUT_NAMES]

    def _candidates(
        self, images: np.ndarray | Sequence[np.ndarray], threshold: float
    ) -> Iterator[np.ndarray]:
        """Per-image (K, 5) detections above `threshold`, batching same-sized frames."""
        if not len(images):
            return
        if min(images[0].shape[:2]) < MIN_IMAGE_SIDE:
            yield from (np.zeros((0, 5), np.float32) for _ in images)
            return
        for batch in batched(images, batch_size_for(images[0].shape)):
            yield from decode_detections(self.raw_outputs(np.asarray(batch)), threshold)

    def detect_faces(self, images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        """All faces per image after NMS, best first: list of (F, 5) `x1, y1, x2, y2, score`."""
        return [faces_from_detections(d) for d in self._candidates(images, FACE_THRESHOLD)]

    def detect_best(
        self, images: np.ndarray | Sequence[np.ndarray]
    ) -> list[tuple[int, int, int, int] | None]:
        """The reference's pick per image: integer `(x1, y1, x2, y2)` of the top face, or None."""
        return [best_face(d) for d in self._candidates(images, FACE_THRESHOLD)]
