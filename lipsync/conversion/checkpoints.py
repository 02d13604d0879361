"""Wav2Lip and S3FD PyTorch checkpoints: model kinds and file names, loading with validation
against the network definitions, and building the eval-mode modules.

A conversion-time module (torch); the serving path never imports it.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsync.networks import S3FD, Wav2Lip

logger = logging.getLogger(__name__)

WAV2LIP, WAV2LIP_GAN, S3FD_NAME = "wav2lip", "wav2lip_gan", "s3fd"
MODEL_KINDS = (WAV2LIP, WAV2LIP_GAN, S3FD_NAME)
CHECKPOINT_FILES = {WAV2LIP: "wav2lip.pth", WAV2LIP_GAN: "wav2lip_gan.pth", S3FD_NAME: "s3fd.pth"}


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


def _load_for(path: str | Path, model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """The checkpoint at ``path`` as a validated state_dict for ``model``; ValueError naming
    the file as not being ``what`` checkpoint on any mismatch."""
    path = Path(path)
    state = _as_state_dict(_torch_load(path), path)
    try:
        return _complete(state, model)
    except ValueError as exc:
        raise ValueError(f"{path}: not {what} checkpoint: {exc}") from None


def load_wav2lip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a Wav2Lip checkpoint (``{"state_dict": ...}``, optional ``module.`` prefix).

    Returns the validated state_dict with plain keys; raises ValueError on any mismatch.
    """
    return _load_for(path, Wav2Lip(), "a Wav2Lip")


def load_s3fd_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an S3FD checkpoint (a plain state_dict); raises ValueError on any mismatch."""
    return _load_for(path, S3FD(), "an S3FD")


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
