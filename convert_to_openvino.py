"""Convert Wav2Lip and S3FD PyTorch checkpoints into OpenVINO IR for the CPU service.

Usage::

    python convert_to_openvino.py --wav2lip wav2lip.pth [--wav2lip-gan wav2lip_gan.pth] \\
        --s3fd s3fd.pth --output-dir models
    python convert_to_openvino.py --download --output-dir models        # needs WAV2LIP_URL
    python convert_to_openvino.py --random-init 0 --output-dir models   # untrained, for tests

Writes ``wav2lip.xml/.bin``, ``wav2lip_gan.xml/.bin`` (when given), ``face_detection.xml/.bin``
and ``manifest.json`` into the output directory.

IR interface:
  wav2lip / wav2lip_gan: audio_sequences (N, 1, 80, 16) mel windows in [-4, 4],
      face_sequences (N, 6, 96, 96) BGR in [0, 1] (masked frame, reference frame)
      -> lipsync (N, 3, 96, 96) BGR in [0, 1].
  face_detection: image (N, 3, H, W) float RGB pixels minus (104, 117, 123) (the reference
      flips BGR frames to RGB first)
      -> cls_s4, reg_s4, ..., cls_s128, reg_s128; cls (N, 2, h, w) logits (background, face),
      reg (N, 4, h, w) SSD offsets.

Exit codes: 0 success, 2 invalid arguments or checkpoint, 3 download failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from torch import nn
from torch.nn import functional as F

from lipsync.util import configure_logging, sha256_file
from networks import S3FD, Wav2Lip
from networks.s3fd import HEAD_SOURCES, STRIDES, L2Norm, head_name

logger = logging.getLogger(__name__)

# --- Model and file names -------------------------------------------------------------------

WAV2LIP, WAV2LIP_GAN, S3FD_NAME = "wav2lip", "wav2lip_gan", "s3fd"
MODEL_KINDS = (WAV2LIP, WAV2LIP_GAN, S3FD_NAME)
IR_NAMES = {WAV2LIP: "wav2lip", WAV2LIP_GAN: "wav2lip_gan", S3FD_NAME: "face_detection"}
CHECKPOINT_FILES = {WAV2LIP: "wav2lip.pth", WAV2LIP_GAN: "wav2lip_gan.pth", S3FD_NAME: "s3fd.pth"}
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

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

# --- Downloads ------------------------------------------------------------------------------

# There is no stable official direct link for the Wav2Lip weights (the authors share them
# through a cloud folder), so those URLs must be supplied by flag or environment variable.
DEFAULT_URLS: dict[str, str | None] = {
    WAV2LIP: None,
    WAV2LIP_GAN: None,
    S3FD_NAME: "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}
URL_ENV_VARS = {WAV2LIP: "WAV2LIP_URL", WAV2LIP_GAN: "WAV2LIP_GAN_URL", S3FD_NAME: "S3FD_URL"}
DEFAULT_DOWNLOAD_TIMEOUT = 20.0
LOCAL_FILES_HINT = (
    "to convert local files instead, pass them explicitly: "
    "python convert_to_openvino.py --wav2lip path/to/wav2lip.pth --s3fd path/to/s3fd.pth"
)


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched or failed verification."""


# --- Checkpoint loading and validation ------------------------------------------------------


def _unpickling_reason(exc: Exception) -> str:
    """The informative line of torch's verbose weights-only error (else its first line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "Unsupported" in line:
            return line.removeprefix("WeightsUnpickler error:").strip()
    return lines[0] if lines else type(exc).__name__


def _torch_load(path: Path) -> Any:
    """torch.load on CPU, tensors-only unpickling first; full unpickling only as a fallback.

    The fallback is taken only when the file references non-tensor Python objects (classes
    outside torch's allowlist); corrupt files are refused with ValueError.
    """
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickling_reason(exc)
        if "Unsupported global" not in reason:
            raise ValueError(f"{path} is not a readable PyTorch checkpoint: {reason}") from exc
        logger.warning(
            "%s holds non-tensor objects (%s); loading it with weights_only=False, which can "
            "run arbitrary pickled code: only use checkpoints from a trusted source",
            path,
            reason,
        )
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Extract a flat name->tensor mapping, unwrapping ``{"state_dict": ...}`` and ``module.``."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict mapping, got {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        name = key.removeprefix("module.")
        state[name] = value.float() if value.is_floating_point() else value
    return state


def check_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Raise ValueError naming the first key that is missing, unexpected or mis-shaped.

    ``*.num_batches_tracked`` buffers may be absent (older PyTorch); they do not affect
    inference.
    """
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in state_dict:
            if key.endswith(".num_batches_tracked"):
                continue
            raise ValueError(
                f"checkpoint is missing key {key!r} (expected shape {tuple(ref.shape)})"
            )
        got = tuple(state_dict[key].shape)
        if got != tuple(ref.shape):
            raise ValueError(
                f"checkpoint key {key!r} has shape {got}, the architecture expects "
                f"{tuple(ref.shape)}"
            )
    for key in state_dict:
        if key not in expected:
            raise ValueError(f"checkpoint has unexpected key {key!r}")


def _complete(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Validate and fill absent ``num_batches_tracked`` buffers with zeros."""
    check_state_dict(state_dict, model)
    full = dict(state_dict)
    for key, ref in model.state_dict().items():
        full.setdefault(key, torch.zeros_like(ref))
    return full


def load_wav2lip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a Wav2Lip checkpoint (``{"state_dict": ...}``, optional ``module.`` prefix).

    Returns the validated state_dict with plain keys; raises ValueError on any mismatch.
    """
    path = Path(path)
    state = _as_state_dict(_torch_load(path), path)
    try:
        return _complete(state, Wav2Lip())
    except ValueError as exc:
        raise ValueError(f"{path}: not a Wav2Lip checkpoint: {exc}") from None


def load_s3fd_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an S3FD checkpoint (a plain state_dict); raises ValueError on any mismatch."""
    path = Path(path)
    state = _as_state_dict(_torch_load(path), path)
    try:
        return _complete(state, S3FD())
    except ValueError as exc:
        raise ValueError(f"{path}: not an S3FD checkpoint: {exc}") from None


def build_wav2lip(state_dict: Mapping[str, torch.Tensor]) -> Wav2Lip:
    """A Wav2Lip module in eval mode holding ``state_dict`` (validated, strict)."""
    model = Wav2Lip()
    model.load_state_dict(_complete(state_dict, model), strict=True)
    return model.eval()


def build_s3fd(state_dict: Mapping[str, torch.Tensor]) -> S3FD:
    """An S3FD module in eval mode holding ``state_dict`` (validated, strict)."""
    model = S3FD()
    model.load_state_dict(_complete(state_dict, model), strict=True)
    return model.eval()


# --- Seeded, well-conditioned random networks -----------------------------------------------
#
# Default init makes Wav2Lip's sigmoid saturate and S3FD's scores collapse, which would make
# tests of the conversion and of the serving pipeline meaningless. Both networks are therefore
# initialised from data: random weights, then the statistics of one forward pass over seeded
# synthetic inputs (uniform noise and 1/f textures) set
#   Wav2Lip: BatchNorm running mean/var (affine params random), then the final 1x1 conv is
#            scaled so the pre-sigmoid output has std WAV2LIP_LOGIT_STD;
#   S3FD:    per-channel conv scale and bias (no BatchNorm there) so every backbone
#            pre-activation has std 1 and a mean drawn from S3FD_BACKBONE_MEAN (mostly-active
#            ReLUs keep float rounding errors from growing through the 19 layers), and the
#            heads have the target logit statistics below.
# Everything draws from one torch.Generator, so a seed gives identical tensors.

S3FD_PIXEL_MEAN = (104.0, 117.0, 123.0)
WAV2LIP_CALIBRATION_BATCH = 8
WAV2LIP_LOGIT_STD = 1.0  # -> output std ~0.2 around 0.5
S3FD_CALIBRATION_BATCH = 8
S3FD_CALIBRATION_SIZE = 128
S3FD_BACKBONE_MEAN = (1.5, 2.0)
S3FD_REG_STD = 0.7  # regression offsets: |reg| < 3 almost everywhere
# Face-minus-background logit (mean, std) of the sources other than the peak source: low
# scores (mostly under the 0.05 candidate threshold, occasionally above).
S3FD_FACE_LOGIT = {
    "conv3_3": (-6.0, 1.0),
    "conv4_3": (-4.5, 1.0),
    "fc7": (-6.0, 1.0),
    "conv6_2": (-6.0, 1.0),
    "conv7_2": (-6.0, 1.0),
}
# The stride-16 source plays "the face": its face logit is a local-peak filter (centre minus
# the mean of its 8 neighbours, along a random feature direction) with std S3FD_PEAK_STD,
# shifted so that the median calibration image's best cell has logit S3FD_PEAK_TOP
# (p ~0.78). Neighbours of a peak are pushed down, so the best cell usually stands out.
# (A larger std gives clearer maxima but amplifies float rounding noise in the logits.)
S3FD_PEAK_SOURCE = "conv5_3"
S3FD_PEAK_STD = 2.5
S3FD_PEAK_TOP = 1.25


def _seed_for(seed: int, kind: str) -> int:
    """Distinct generator seed per network kind (injective in ``seed``)."""
    return seed * len(MODEL_KINDS) + MODEL_KINDS.index(kind)


def _uniform(g: torch.Generator, shape: Sequence[int], low: float, high: float) -> torch.Tensor:
    """Float64 uniform samples (float64 keeps reductions independent of threading)."""
    return low + (high - low) * torch.rand(tuple(shape), generator=g, dtype=torch.float64)


def _fractal_noise(g: torch.Generator, n: int, c: int, h: int, w: int) -> torch.Tensor:
    """(n, c, h, w) zero-mean unit-std images with a ~1/f spectrum, like natural images."""
    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    slope = _uniform(g, (n, 1, 1, 1), 0.5, 1.5)
    size = 2
    while size <= max(h, w):
        octave = _uniform(g, (n, c, size, size), -0.5, 0.5)
        octave = F.interpolate(octave, size=(h, w), mode="bilinear", align_corners=False)
        out += octave * size ** (-slope)
        size *= 2
    out -= out.mean(dim=(1, 2, 3), keepdim=True)
    return out / (out.std(dim=(1, 2, 3), keepdim=True) + 1e-8)


def synthetic_images(g: torch.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """(n, 3, h, w) pixel values in [0, 255]: half uniform noise, half 1/f textures."""
    half = n // 2
    noise = _uniform(g, (half, 3, h, w), 0.0, 255.0)
    contrast = _uniform(g, (n - half, 1, 1, 1), 30.0, 80.0)
    brightness = _uniform(g, (n - half, 1, 1, 1), 80.0, 160.0)
    textures = (brightness + contrast * _fractal_noise(g, n - half, 3, h, w)).clamp(0, 255)
    return torch.cat([noise, textures])


def wav2lip_calibration_inputs(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic Wav2Lip inputs: audio (n, 1, 80, 16) in [-4, 4], faces (n, 6, 96, 96) in [0, 1].

    Faces mimic inference: channels 0-2 are channels 3-5 with the lower half zeroed.
    """
    frames = synthetic_images(g, n, 96, 96) / 255.0
    masked = frames.clone()
    masked[:, :, 48:] = 0.0
    half = n // 2
    mel_noise = _uniform(g, (half, 1, 80, 16), -4.0, 4.0)
    mel_smooth = (_fractal_noise(g, n - half, 1, 80, 16) * 1.5 - 1.0).clamp(-4.0, 4.0)
    return torch.cat([mel_noise, mel_smooth]), torch.cat([masked, frames], dim=1)


def _randomise_conv(conv: nn.Conv2d | nn.ConvTranspose2d, g: torch.Generator) -> None:
    fan_in = conv.weight.shape[1] * conv.weight[0, 0].numel()
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    if conv.bias is not None:
        conv.bias.copy_(_uniform(g, conv.bias.shape, -0.1, 0.1))


def _float32_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.float() if v.is_floating_point() else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def random_wav2lip_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A seeded, non-saturating Wav2Lip state_dict (plain keys)."""
    g = torch.Generator().manual_seed(seed)
    model = Wav2Lip()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                _randomise_conv(module, g)
        for bn in norms:
            bn.weight.copy_(_uniform(g, bn.weight.shape, 0.5, 1.5))
            bn.bias.copy_(_uniform(g, bn.bias.shape, -0.1, 0.1))
            bn.reset_running_stats()
            bn.momentum = None  # one cumulative batch: running stats = that batch's stats
        audio, faces = wav2lip_calibration_inputs(g, WAV2LIP_CALIBRATION_BATCH)
        model.double()  # float64 statistics do not depend on thread count or CPU kernels
        head = model.output_block[1]
        assert isinstance(head, nn.Conv2d)
        captured: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda _m, _i, out: captured.append(out))
        model.train()
        model(audio, faces)
        hook.remove()
        model.eval()
        for bn in norms:
            bn.momentum = 0.1
        logits = captured[0]
        mean, std = logits.mean(dim=(0, 2, 3)), logits.std(dim=(0, 2, 3)) + 1e-6
        scale = WAV2LIP_LOGIT_STD / std
        offset = _uniform(g, mean.shape, -0.25, 0.25)
        head.weight.mul_(scale.view(-1, 1, 1, 1))
        _bias(head).copy_((_bias(head) - mean) * scale + offset)
    return _float32_state(model)


def _standardise(
    conv: nn.Conv2d, out: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Rescale ``conv`` so its per-channel output over ``out`` has the given mean and std."""
    mu, sd = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3)) + 1e-6
    scale = std / sd
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    _bias(conv).copy_((_bias(conv) - mu) * scale + mean)
    return (out - mu.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """A conv's bias (every conv of both networks has one)."""
    if conv.bias is None:
        raise ValueError(f"{conv} has no bias")
    return conv.bias


def _calibrate_peak(conv: nn.Conv2d, out: torch.Tensor) -> torch.Tensor:
    """Shift the face channel (last, already standardised) so the median best cell hits target."""
    best = out[:, -1].flatten(1).max(dim=1).values
    shift = S3FD_PEAK_TOP - best.median()
    _bias(conv)[-1] += shift
    out = out.clone()
    out[:, -1] += shift
    return out


def _s3fd_targets() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-conv (mean, std) targets of the outputs, keyed by module name."""
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for source, _, _, n_conf in HEAD_SOURCES:
        head = head_name(source)
        face_mean, face_std = S3FD_FACE_LOGIT.get(source, (0.0, S3FD_PEAK_STD))
        bg_std = 0.1 if source == S3FD_PEAK_SOURCE else 0.5
        targets[f"{head}_mbox_conf"] = (
            torch.tensor([0.0] * (n_conf - 1) + [face_mean]),
            torch.tensor([bg_std] * (n_conf - 1) + [face_std]),
        )
        targets[f"{head}_mbox_loc"] = (torch.zeros(4), torch.full((4,), S3FD_REG_STD))
    return targets


def random_s3fd_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A seeded S3FD state_dict with unit-scale activations and spread, peaked face scores."""
    g = torch.Generator().manual_seed(seed)
    model = S3FD().eval()
    targets = _s3fd_targets()
    peak_head = f"{head_name(S3FD_PEAK_SOURCE)}_mbox_conf"
    laplace = torch.full((3, 3), -1.0 / 8.0)
    laplace[1, 1] = 1.0
    hooks = []

    def hook_for(name: str, mean: torch.Tensor, std: torch.Tensor) -> Callable[..., torch.Tensor]:
        def hook(conv: nn.Conv2d, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
            out = _standardise(conv, out, mean, std)
            return _calibrate_peak(conv, out) if name == peak_head else out

        return hook

    with torch.no_grad():
        for name, module in model.named_children():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g))
                _bias(module).zero_()
                if name == peak_head:
                    direction = torch.randn(module.in_channels, generator=g)
                    module.weight[-1] = direction.view(-1, 1, 1) * laplace
                mean, std = targets.get(name) or (
                    _uniform(g, (module.out_channels,), *S3FD_BACKBONE_MEAN),
                    torch.ones(module.out_channels),
                )
                hooks.append(module.register_forward_hook(hook_for(name, mean, std)))
            else:  # L2Norm: keep the reference scale, jittered per channel
                assert isinstance(module, L2Norm)
                module.weight.mul_(_uniform(g, module.weight.shape, 0.8, 1.2))
        size = S3FD_CALIBRATION_SIZE
        pixels = synthetic_images(g, S3FD_CALIBRATION_BATCH, size, size)
        model.double()  # float64 statistics do not depend on thread count or CPU kernels
        model(pixels - torch.tensor(S3FD_PIXEL_MEAN, dtype=torch.float64).view(1, 3, 1, 1))
        for hook in hooks:
            hook.remove()
    return _float32_state(model)


def write_random_checkpoints(seed: int, directory: str | Path) -> dict[str, Path]:
    """Write seeded untrained checkpoints in the official formats; returns kind -> path.

    wav2lip.pth / wav2lip_gan.pth: ``{"state_dict": {"module." + key: tensor},
    "global_step": 0, "global_epoch": 0}``; s3fd.pth: a plain state_dict.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for kind in MODEL_KINDS:
        kind_seed = _seed_for(seed, kind)
        if kind == S3FD_NAME:
            payload: Any = random_s3fd_state_dict(kind_seed)
        else:
            state = random_wav2lip_state_dict(kind_seed)
            payload = {
                "state_dict": {f"module.{k}": v for k, v in state.items()},
                "global_step": 0,
                "global_epoch": 0,
            }
        path = directory / CHECKPOINT_FILES[kind]
        _atomic_torch_save(payload, path)
        logger.info("wrote untrained %s checkpoint %s (seed %d)", kind, path, seed)
        paths[kind] = path
    return paths


def _atomic_torch_save(payload: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


# --- Conversion -----------------------------------------------------------------------------


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


def _io_spec(spec: Mapping[str, list[int]]) -> list[dict[str, Any]]:
    return [{"name": name, "shape": shape} for name, shape in spec.items()]


def convert_all(
    checkpoints: Mapping[str, str | Path],
    output_dir: str | Path,
    *,
    fp16_weights: bool = False,
    untrained: bool = False,
    random_seed: int | None = None,
) -> dict[str, Any]:
    """Convert the given checkpoints (kind -> path; kinds wav2lip, wav2lip_gan, s3fd).

    wav2lip and s3fd are required. Writes the IRs and manifest.json into ``output_dir`` and
    returns the manifest. Raises ValueError for unusable checkpoints.
    """
    output_dir = Path(output_dir)
    missing = [k for k in (WAV2LIP, S3FD_NAME) if checkpoints.get(k) is None]
    if missing:
        raise ValueError(f"missing checkpoint(s): {', '.join(missing)}")
    unknown = set(checkpoints) - set(MODEL_KINDS)
    if unknown:
        raise ValueError(f"unknown model kind(s): {', '.join(sorted(unknown))}")
    # Load and validate everything before writing anything.
    loaded: dict[str, tuple[Path, dict[str, torch.Tensor]]] = {}
    for kind in MODEL_KINDS:
        if checkpoints.get(kind) is None:
            continue
        path = Path(checkpoints[kind])
        loader = load_s3fd_state_dict if kind == S3FD_NAME else load_wav2lip_state_dict
        loaded[kind] = (path, loader(path))
    if untrained:
        logger.warning(
            "converting UNTRAINED random networks (seed %s): outputs are meaningless, "
            "for tests and benchmarks only",
            random_seed,
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    for kind in set(MODEL_KINDS) - set(loaded):
        stale = output_dir / f"{IR_NAMES[kind]}.xml"
        if stale.exists():
            logger.warning("%s is left from an earlier run and not in the new manifest", stale)
    entries: dict[str, Any] = {}
    for kind, (path, state) in loaded.items():
        ir_name = IR_NAMES[kind]
        xml_path = output_dir / f"{ir_name}.xml"
        is_detector = kind == S3FD_NAME
        convert = convert_s3fd if is_detector else convert_wav2lip
        convert(state, xml_path, fp16_weights=fp16_weights)
        entry: dict[str, Any] = {
            "xml": xml_path.name,
            "bin": xml_path.with_suffix(".bin").name,
            "source": path.name,
            "sha256": sha256_file(path),
            "openvino_version": ov.get_version(),
            "weights_precision": stored_precision(xml_path),
            "inputs": _io_spec(DETECTOR_INPUTS if is_detector else WAV2LIP_INPUTS),
            "outputs": _io_spec(DETECTOR_OUTPUTS if is_detector else WAV2LIP_OUTPUTS),
            "untrained": untrained,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if untrained:
            entry["random_init_seed"] = random_seed
        entries[ir_name] = entry
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "openvino_version": ov.get_version(),
        "torch_version": torch.__version__,
        "untrained": untrained,
        "models": entries,
    }
    _write_json_atomic(output_dir / MANIFEST_NAME, manifest)
    logger.info("wrote %s (%s)", output_dir / MANIFEST_NAME, ", ".join(entries))
    return manifest


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# --- Downloading ----------------------------------------------------------------------------


def download_checkpoint(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
) -> Path:
    """Fetch ``url`` into ``dest`` via a temp file + atomic rename; verify sha256 if given.

    An existing ``dest`` is reused when it matches ``sha256`` (or no hash is given). Raises
    DownloadError (with a hint on supplying local files) and leaves no partial file.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        logger.info("using existing %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    logger.info("downloading %s -> %s", url, dest)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(
                f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256.lower()}"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url}: {reason}; {LOCAL_FILES_HINT}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _download_url(kind: str, flag_value: str | None) -> str | None:
    return flag_value or os.environ.get(URL_ENV_VARS[kind]) or DEFAULT_URLS[kind]


def download_all(args: argparse.Namespace, directory: Path) -> dict[str, Path]:
    """Resolve every checkpoint for --download: given local paths win, others are fetched."""
    plan: dict[str, str] = {}
    local: dict[str, Path] = {}
    for kind in MODEL_KINDS:
        given = getattr(args, kind)
        if given is not None:
            local[kind] = Path(given)
            continue
        url = _download_url(kind, getattr(args, f"{kind}_url"))
        if url:
            plan[kind] = url
        elif kind == WAV2LIP:
            raise ValueError(
                "no download URL for the wav2lip checkpoint (there is no stable official "
                f"direct link): set {URL_ENV_VARS[kind]} or --wav2lip-url, or {LOCAL_FILES_HINT}"
            )
    for kind, url in plan.items():
        local[kind] = download_checkpoint(
            url,
            directory / CHECKPOINT_FILES[kind],
            sha256=getattr(args, f"{kind}_sha256"),
            timeout=args.download_timeout,
        )
    return local


# --- Command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert Wav2Lip and S3FD checkpoints to OpenVINO IR.",
        epilog="Exit codes: 0 ok, 2 bad arguments or checkpoint, 3 download failed.",
    )
    src = parser.add_argument_group("checkpoints")
    src.add_argument("--wav2lip", type=Path, help="Wav2Lip checkpoint (.pth)")
    src.add_argument("--wav2lip-gan", type=Path, help="Wav2Lip GAN checkpoint (.pth), optional")
    src.add_argument("--s3fd", type=Path, help="S3FD face detector checkpoint (.pth)")
    src.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="where --download / --random-init write checkpoints (default: "
        "checkpoints/ resp. <output-dir>/untrained-checkpoints/)",
    )
    mode = src.add_mutually_exclusive_group()
    mode.add_argument(
        "--download", action="store_true", help="download checkpoints not given as local files"
    )
    mode.add_argument(
        "--random-init",
        type=int,
        metavar="SEED",
        help="write and convert seeded UNTRAINED checkpoints (tests only)",
    )
    dl = parser.add_argument_group("download")
    for kind in MODEL_KINDS:
        flag = kind.replace("_", "-")
        dl.add_argument(
            f"--{flag}-url",
            help=f"URL (default: ${URL_ENV_VARS[kind]}"
            + (
                f" or {DEFAULT_URLS[kind]})" if DEFAULT_URLS[kind] else "; no official direct link)"
            ),
        )
        dl.add_argument(f"--{flag}-sha256", type=str.lower, help="expected sha256 (hex)")
    dl.add_argument(
        "--download-timeout",
        type=float,
        default=DEFAULT_DOWNLOAD_TIMEOUT,
        help="socket timeout in seconds (default: %(default)s)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output-dir",
        type=Path,
        default=Path("models"),
        help="IR and manifest directory (default: %(default)s)",
    )
    out.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store weights as FP16 (compute precision is chosen at load time)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _resolve_checkpoints(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> dict[str, Path]:
    if args.random_init is not None:
        if any(getattr(args, k) is not None for k in MODEL_KINDS):
            parser.error("--random-init cannot be combined with checkpoint paths")
        directory = args.checkpoint_dir or args.output_dir / "untrained-checkpoints"
        logger.warning(
            "writing UNTRAINED random checkpoints (seed %d) to %s", args.random_init, directory
        )
        return write_random_checkpoints(args.random_init, directory)
    if args.download:
        return download_all(args, args.checkpoint_dir or Path("checkpoints"))
    if args.wav2lip is None or args.s3fd is None:
        parser.error("--wav2lip and --s3fd are required (or use --download / --random-init)")
    return {k: getattr(args, k) for k in MODEL_KINDS if getattr(args, k) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        checkpoints = _resolve_checkpoints(args, parser)
        convert_all(
            checkpoints,
            args.output_dir,
            fp16_weights=args.fp16_weights,
            untrained=args.random_init is not None,
            random_seed=args.random_init,
        )
    except DownloadError as exc:
        _print_error(exc)
        return 3
    except ValueError as exc:
        _print_error(exc)
        return 2
    return 0


def _print_error(exc: Exception) -> None:
    """One-line error message on stderr."""
    print("error: " + " ".join(str(exc).split()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
