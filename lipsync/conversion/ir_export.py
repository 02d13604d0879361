"""Export of the PyTorch networks to OpenVINO IR: tracing, I/O names and dynamic shapes,
saving, and verification of the saved IR.

IR interface:
  wav2lip / wav2lip_gan: audio_sequences (N, 1, 80, 16) mel windows in [-4, 4],
      face_sequences (N, 6, 96, 96) BGR in [0, 1] (masked frame, reference frame)
      -> lipsync (N, 3, 96, 96) BGR in [0, 1].
  face_detection: image (N, 3, H, W) float RGB pixels minus (104, 117, 123) (the reference
      flips BGR frames to RGB first)
      -> cls_s4, reg_s4, ..., cls_s128, reg_s128; cls (N, 2, h, w) logits (background, face),
      reg (N, 4, h, w) SSD offsets.

A conversion-time module (torch); the serving path never imports it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import openvino as ov
import torch
from torch import nn

from lipsync.conversion.checkpoints import (
    S3FD_NAME,
    WAV2LIP,
    WAV2LIP_GAN,
    build_s3fd,
    build_wav2lip,
)
from lipsync.networks.s3fd import STRIDES

logger = logging.getLogger(__name__)

# The IR file stem of each checkpoint kind.
IR_NAMES = {WAV2LIP: "wav2lip", WAV2LIP_GAN: "wav2lip_gan", S3FD_NAME: "face_detection"}
# IR tensor names and partial shapes (-1 = dynamic dimension).
WAV2LIP_INPUTS: dict[str, list[int]] = {
    "audio_sequences": [-1, 1, 80, 16],
    "face_sequences": [-1, 6, 96, 96],
}
WAV2LIP_OUTPUTS: dict[str, list[int]] = {"lipsync": [-1, 3, 96, 96]}
DETECTOR_INPUTS: dict[str, list[int]] = {"image": [-1, 3, -1, -1]}
DETECTOR_OUTPUTS: dict[str, list[int]] = {
    f"{kind}_s{stride}": [-1, 2 if kind == "cls" else 4, -1, -1]
    for stride in STRIDES
    for kind in ("cls", "reg")
}


def _set_io(
    model: ov.Model, inputs: Mapping[str, list[int]], outputs: Mapping[str, list[int]]
) -> None:
    """Name the model's inputs/outputs (in order) and give the inputs their partial shapes."""
    if len(model.inputs) != len(inputs) or len(model.outputs) != len(outputs):
        raise RuntimeError(
            f"converted model has {len(model.inputs)} inputs / {len(model.outputs)} outputs, "
            f"expected {len(inputs)} / {len(outputs)}"
        )
    for port, name in zip(model.inputs, inputs, strict=True):
        port.get_tensor().set_names({name})
        port.get_node().set_friendly_name(name)
    for port, name in zip(model.outputs, outputs, strict=True):
        port.get_tensor().set_names({name})
    model.reshape({name: ov.PartialShape(shape) for name, shape in inputs.items()})


def _shape_list(shape: ov.PartialShape) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in shape]


def verify_ir(
    xml_path: str | Path, inputs: Mapping[str, list[int]], outputs: Mapping[str, list[int]]
) -> None:
    """Re-read a saved IR and check tensor names and (dynamic) shapes; raise RuntimeError."""
    model = ov.Core().read_model(str(xml_path))
    for ports, spec, what in ((model.inputs, inputs, "input"), (model.outputs, outputs, "output")):
        found = {name: _shape_list(p.get_partial_shape()) for p in ports for name in p.get_names()}
        for name, shape in spec.items():
            if name not in found:
                raise RuntimeError(f"{xml_path}: {what} {name!r} missing (has {sorted(found)})")
            if found[name] != shape:
                raise RuntimeError(
                    f"{xml_path}: {what} {name!r} is {found[name]}, expected {shape}"
                )


def stored_precision(xml_path: Path) -> str:
    """FP16 when any weight constant is stored as f16 in the IR, else FP32."""
    model = ov.Core().read_model(str(xml_path))
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16:
            return "FP16"
    return "FP32"


def export_ir(
    module: nn.Module,
    example_input: tuple[torch.Tensor, ...],
    xml_path: Path,
    inputs: Mapping[str, list[int]],
    outputs: Mapping[str, list[int]],
    *,
    fp16_weights: bool = False,
) -> None:
    """Trace ``module`` into OpenVINO, name/shape its I/O, save it and verify the saved IR."""
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # OpenVINO traces with TorchScript, which torch deprecates; the trace itself is exact.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        model = ov.convert_model(module.eval(), example_input=example_input)
    _set_io(model, inputs, outputs)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16_weights)
    verify_ir(xml_path, inputs, outputs)
    logger.info("saved %s in %.1f s", xml_path, time.perf_counter() - started)


def convert_wav2lip(
    state_dict: Mapping[str, torch.Tensor], xml_path: Path, *, fp16_weights: bool = False
) -> None:
    """Convert a Wav2Lip state_dict to IR: (audio_sequences, face_sequences) -> lipsync."""
    example = (torch.zeros(2, 1, 80, 16), torch.zeros(2, 6, 96, 96))
    export_ir(
        build_wav2lip(state_dict),
        example,
        xml_path,
        WAV2LIP_INPUTS,
        WAV2LIP_OUTPUTS,
        fp16_weights=fp16_weights,
    )


def convert_s3fd(
    state_dict: Mapping[str, torch.Tensor], xml_path: Path, *, fp16_weights: bool = False
) -> None:
    """Convert an S3FD state_dict to IR: image -> cls_s4, reg_s4, ..., cls_s128, reg_s128."""
    example = (torch.zeros(1, 3, 128, 128),)
    export_ir(
        build_s3fd(state_dict),
        example,
        xml_path,
        DETECTOR_INPUTS,
        DETECTOR_OUTPUTS,
        fp16_weights=fp16_weights,
    )
