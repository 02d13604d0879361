"""The Wav2Lip generator compiled with OpenVINO, and its input/output conventions."""

from __future__ import annotations

import numpy as np
import openvino as ov

from ov_runtime import CompiledNetwork

# Side of the square face crop the generator sees and produces.
FACE_SIZE = 96
# Input channels: the crop with its lower half blanked (the pose), then the crop itself.
FACE_CHANNELS = 6
AUDIO_INPUT = "audio_sequences"
FACE_INPUT = "face_sequences"
OUTPUT = "lipsync"
GENERATOR_NAMES = ("wav2lip", "wav2lip_gan")


def add_preprocessing(model: ov.Model) -> ov.Model:
    """Let the generator take uint8 NHWC face stacks: convert to f32, /255, NHWC->NCHW."""
    ppp = ov.preprocess.PrePostProcessor(model)
    face = ppp.input(FACE_INPUT)
    face.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    face.model().set_layout(ov.Layout("NCHW"))
    face.preprocess().convert_element_type(ov.Type.f32).scale(255.0)
    return ppp.build()


def face_input(crops: np.ndarray) -> np.ndarray:
    """Build the generator's face input from 96x96 crops.

    crops: (B, 96, 96, 3) uint8 BGR -> (B, 96, 96, 6) uint8: lower half zeroed, then the
    unmodified crop (the reference's order), still unscaled (the model divides by 255).
    """
    masked = crops.copy()
    masked[:, FACE_SIZE // 2 :] = 0
    return np.concatenate([masked, crops], axis=3)


def audio_input(mel_chunks: np.ndarray) -> np.ndarray:
    """(B, 80, 16) mel windows -> (B, 1, 80, 16) float32 network input."""
    return np.ascontiguousarray(mel_chunks[:, None], dtype=np.float32)


def to_uint8_faces(pred: np.ndarray) -> np.ndarray:
    """(B, 3, 96, 96) float in [0, 1] -> (B, 96, 96, 3) uint8 BGR, truncating like the reference."""
    return (pred.transpose(0, 2, 3, 1) * np.float32(255.0)).astype(np.uint8)


class PendingBatch:
    """A batch running asynchronously on an infer request; `wait()` once for its mouths."""

    def __init__(self, network: CompiledNetwork, req: ov.InferRequest) -> None:
        self._network = network
        self._req: ov.InferRequest | None = req

    def wait(self) -> np.ndarray:
        """Block until done. -> (B, 96, 96, 3) uint8 BGR; the request returns to the pool."""
        if self._req is None:
            raise RuntimeError("batch already collected")
        req, self._req = self._req, None
        try:
            req.wait()
            return to_uint8_faces(req.get_tensor(OUTPUT).data)
        finally:
            self._network.release(req)


class Wav2LipGenerator:
    """One compiled Wav2Lip generator (plain or GAN weights)."""

    def __init__(self, network: CompiledNetwork) -> None:
        self.network = network

    def start(self, mel_chunks: np.ndarray, faces: np.ndarray) -> PendingBatch:
        """Start a batch without waiting for it.

        mel_chunks: (B, 80, 16) float32; faces: (B, 96, 96, 6) uint8 from `face_input`.
        """
        if len(mel_chunks) != len(faces):
            raise ValueError(f"{len(mel_chunks)} mel windows for {len(faces)} faces")
        req = self.network.acquire()
        try:
            req.start_async(
                {AUDIO_INPUT: audio_input(mel_chunks), FACE_INPUT: np.ascontiguousarray(faces)}
            )
        except BaseException:
            self.network.release(req)
            raise
        return PendingBatch(self.network, req)

    def infer(self, mel_chunks: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Generate mouths for a batch and wait. -> (B, 96, 96, 3) uint8 BGR."""
        return self.start(mel_chunks, faces).wait()
