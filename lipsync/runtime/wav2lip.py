"""The Wav2Lip generator compiled with OpenVINO, and its input/output conventions.

One IR is compiled two ways. Whole, for a face that changes every frame (a video); and cut
in two at load time, for a face shared by every frame (an image): the face encoder (face
input -> the skip features the decoder concatenates) runs once per request, then each
batch needs only the rest (audio encoder and decoder), ~8 % fewer FLOPs per frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from lipsync.runtime.core import CompiledNetwork

# Side of the square face crop the generator sees and produces.
FACE_SIZE = 96
AUDIO_INPUT = "audio_sequences"
FACE_INPUT = "face_sequences"
OUTPUT = "lipsync"
# Face encoder outputs / decoder inputs: "face_features.0", "face_features.1", ...
FEATURES = "face_features"

FaceFeatures = dict[str, np.ndarray]
Preprocess = Callable[[ov.Model], ov.Model]


def add_preprocessing(model: ov.Model) -> ov.Model:
    """Let the generator take uint8 NHWC face stacks: convert to f32, /255, NHWC->NCHW."""
    ppp = ov.preprocess.PrePostProcessor(model)
    face = ppp.input(FACE_INPUT)
    face.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    face.model().set_layout(ov.Layout("NCHW"))
    face.preprocess().convert_element_type(ov.Type.f32).scale(255.0)
    return ppp.build()


def _parameter(model: ov.Model, name: str) -> ov.Node:
    for param in model.get_parameters():
        if name in param.output(0).get_names():
            return param
    raise ValueError(f"the model has no input named {name!r}")


def face_feature_outputs(model: ov.Model) -> list[ov.Output]:
    """The skip features: outputs computed from the face input alone that feed nodes which
    also depend on the audio, in topological order (the same for every read of one IR).

    A feature produced by a FakeQuantize (INT8 IR) is taken at that node's input, so the
    decoder keeps the quantization of its inputs.
    """
    inputs_of: dict[str, frozenset[str]] = {}  # node -> the model inputs it depends on
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Parameter":
            is_face = FACE_INPUT in node.output(0).get_names()
            inputs_of[node.get_name()] = frozenset({FACE_INPUT if is_face else node.get_name()})
        else:
            sources = (i.get_source_output().get_node().get_name() for i in node.inputs())
            inputs_of[node.get_name()] = frozenset().union(*(inputs_of[n] for n in sources))
    face_only = frozenset({FACE_INPUT})
    cuts: dict[tuple[str, int], ov.Output] = {}
    for node in model.get_ordered_ops():
        if inputs_of[node.get_name()] != face_only or node.get_type_name() == "Parameter":
            continue
        for output in node.outputs():
            consumers = (t.get_node().get_name() for t in output.get_target_inputs())
            if any(inputs_of[c] != face_only for c in consumers):
                cut = (
                    node.input(0).get_source_output()
                    if node.get_type_name() == "FakeQuantize"
                    else output
                )
                cuts.setdefault((cut.get_node().get_name(), cut.get_index()), cut)
    if not cuts:
        raise ValueError("no face encoder found: no output depends on the face input alone")
    return list(cuts.values())


def face_encoder_model(model: ov.Model) -> ov.Model:
    """Cut the face encoder from a generator: uint8 NHWC faces (see `add_preprocessing`)
    -> FEATURES.i, each (N, C, H, W) float32."""
    results = []
    for i, output in enumerate(face_feature_outputs(model)):
        result = ops.result(output)
        result.output(0).set_names({f"{FEATURES}.{i}"})
        results.append(result)
    return add_preprocessing(ov.Model(results, [_parameter(model, FACE_INPUT)], "face_encoder"))


def decoder_model(model: ov.Model) -> ov.Model:
    """The generator with its face encoder replaced by inputs FEATURES.i, each (1, C, H, W)
    float32 (one face's features, broadcast to every mel window of the batch) or
    (B, C, H, W) (a face per mel window: several sessions' frames in one batch)."""
    audio = _parameter(model, AUDIO_INPUT)
    batch = ops.gather(ops.shape_of(audio), ops.constant(np.array([0])), ops.constant(0))
    features = []
    for i, output in enumerate(face_feature_outputs(model)):
        shape = output.get_partial_shape()
        if not shape[1:].is_static:
            raise ValueError(f"face feature {i} has a dynamic shape {shape}")
        chw = [dim.get_length() for dim in shape[1:]]
        feature = ops.parameter(
            ov.PartialShape([-1, *chw]), output.get_element_type(), name=f"{FEATURES}.{i}"
        )
        feature.output(0).set_names({f"{FEATURES}.{i}"})
        per_window = ops.broadcast(feature, ops.concat([batch, ops.constant(np.array(chw))], 0))
        for target in list(output.get_target_inputs()):
            target.replace_source_output(per_window.output(0))
        features.append(feature)
    return ov.Model(model.get_results(), [audio, *features], "wav2lip_decoder")


def face_input(crops: np.ndarray) -> np.ndarray:
    """Build the generator's face input from 96x96 crops.

    crops: (B, 96, 96, 3) uint8 BGR -> (B, 96, 96, 6) uint8: lower half zeroed, then the
    unmodified crop (the reference's order), still unscaled (the model divides by 255).
    """
    masked = crops.copy()
    masked[:, FACE_SIZE // 2 :] = 0
    return np.concatenate([masked, crops], axis=3)


def audio_input(mel_windows: np.ndarray) -> np.ndarray:
    """(B, 80, 16) mel windows -> (B, 1, 80, 16) float32 network input."""
    return np.ascontiguousarray(mel_windows[:, None], dtype=np.float32)


def to_uint8_faces(pred: np.ndarray) -> np.ndarray:
    """(B, 3, 96, 96) float in [0, 1] -> (B, 96, 96, 3) uint8 BGR, truncating like the reference."""
    return (pred.transpose(0, 2, 3, 1) * np.float32(255.0)).astype(np.uint8)


class Pending(Protocol):
    """A batch of mouths being made: `wait()` once for them, (B, 96, 96, 3) uint8 BGR."""

    def wait(self) -> np.ndarray: ...


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
    """One Wav2Lip generator (plain or GAN weights): its whole network, for a face per
    frame, and its face encoder and decoder, for one face shared by every frame."""

    def __init__(
        self, whole: CompiledNetwork, encoder: CompiledNetwork, decoder: CompiledNetwork
    ) -> None:
        self.whole = whole
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def from_ir(cls, network: Callable[[Preprocess], CompiledNetwork]) -> Wav2LipGenerator:
        """The three networks of one generator IR; `network(preprocess)` compiles-on-use the
        IR after `preprocess` (whole: `add_preprocessing`, or one of the two cuts)."""
        return cls(network(add_preprocessing), network(face_encoder_model), network(decoder_model))

    def start(self, mel_windows: np.ndarray, faces: np.ndarray) -> PendingBatch:
        """Start a batch with a face per mel window, without waiting for it.

        mel_windows: (B, 80, 16) float32; faces: (B, 96, 96, 6) uint8 from `face_input`.
        """
        if len(mel_windows) != len(faces):
            raise ValueError(f"{len(mel_windows)} mel windows for {len(faces)} faces")
        inputs = {AUDIO_INPUT: audio_input(mel_windows), FACE_INPUT: np.ascontiguousarray(faces)}
        return self._start(self.whole, inputs)

    def encode_face(self, face: np.ndarray) -> FaceFeatures:
        """face: (1, 96, 96, 6) uint8 from `face_input` -> {FEATURES.i: (1, C, H, W) float32}."""
        if len(face) != 1:
            raise ValueError(f"encode_face takes one face, got {len(face)}")
        with self.encoder.request() as req:
            req.infer({FACE_INPUT: np.ascontiguousarray(face)})
            return {
                out.get_any_name(): req.get_tensor(out).data.copy() for out in req.model_outputs
            }

    def start_with_face(self, mel_windows: np.ndarray, features: FaceFeatures) -> PendingBatch:
        """Start a batch whose every mel window shows the face of `encode_face`.

        mel_windows: (B, 80, 16) float32; features: each (1, C, H, W) (one face for every
        window) or (B, C, H, W) (a face per window).
        """
        return self._start(self.decoder, {AUDIO_INPUT: audio_input(mel_windows), **features})

    @staticmethod
    def _start(network: CompiledNetwork, inputs: dict[str, np.ndarray]) -> PendingBatch:
        req = network.acquire()
        try:
            req.start_async(inputs)
        except BaseException:
            network.release(req)
            raise
        return PendingBatch(network, req)

    def infer(self, mel_windows: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Generate mouths for a batch and wait.

        mel_windows: (B, 80, 16) float32; faces: (B, 96, 96, 6) uint8 from `face_input`, or
        (1, 96, 96, 6) for one face shown in every window. -> (B, 96, 96, 3) uint8 BGR.
        """
        if len(faces) == 1:
            return self.start_with_face(mel_windows, self.encode_face(faces)).wait()
        return self.start(mel_windows, faces).wait()
