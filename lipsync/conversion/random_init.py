"""Seeded, well-conditioned random Wav2Lip and S3FD checkpoints (untrained; for tests and
benchmarks), written in the official checkpoint formats.

Default init makes Wav2Lip's sigmoid saturate and S3FD's scores collapse, which would make
tests of the conversion and of the serving pipeline meaningless. Both networks are therefore
initialised from data: random weights, then the statistics of one forward pass over seeded
synthetic inputs (uniform noise and 1/f textures) set
  Wav2Lip: BatchNorm running mean/var (affine params random), then the final 1x1 conv is
           scaled so the pre-sigmoid output has std WAV2LIP_LOGIT_STD;
  S3FD:    per-channel conv scale and bias (no BatchNorm there) so every backbone
           pre-activation has std 1 and a mean drawn from S3FD_BACKBONE_MEAN (mostly-active
           ReLUs keep float rounding errors from growing through the 19 layers), and the
           heads have the target logit statistics below.
Everything draws from one torch.Generator, so a seed gives identical tensors.

A conversion-time tool (torch), used by ``convert_to_openvino.py --random-init SEED``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lipsync.conversion.checkpoints import CHECKPOINT_FILES, MODEL_KINDS, S3FD_NAME
from lipsync.networks import S3FD, L2Norm, Wav2Lip
from lipsync.networks.s3fd import HEAD_SOURCES, head_name

logger = logging.getLogger(__name__)

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


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a conv built with one."""
    if conv.bias is None:
        raise ValueError(f"{conv} has no bias")
    return conv.bias


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
        if not isinstance(head, nn.Conv2d):
            raise TypeError(f"Wav2Lip's output_block[1] is {type(head).__name__}, not the conv")
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
            elif isinstance(module, L2Norm):  # keep the reference scale, jittered per channel
                module.weight.mul_(_uniform(g, module.weight.shape, 0.8, 1.2))
            else:
                raise TypeError(f"S3FD layer {name} is an unexpected {type(module).__name__}")
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
