"""The engine and the avatar store of a process, built from its Settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lipsync import generation
from lipsync.avatars import MB, AvatarStore, TemporariesObserver, open_store
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.runtime.priority import PEERS_DIR_ENV, InferenceGate
from lipsync.settings import Settings


def build_engine(settings: Settings) -> Wav2LipInferenceEngine:
    """The engine the settings describe: models, device, precision, compile cache, batch
    size and OpenVINO threads. Models compile on first use. Under gunicorn, its live work
    goes first on every worker of the server (PEERS_DIR_ENV, lipsync/runtime/priority.py)."""
    peers = os.environ.get(PEERS_DIR_ENV)
    return Wav2LipInferenceEngine(
        settings.models_dir,
        settings.device,
        settings.precision,
        cache_dir=settings.cache_dir,
        batch_size=settings.batch_size,
        inference_threads=settings.inference_threads,
        inference_gate=InferenceGate(peers_dir=Path(peers) if peers else None),
    )


def build_store(
    settings: Settings,
    engine: Callable[[], Wav2LipInferenceEngine],
    *,
    registered: bool = True,
    observe: TemporariesObserver | None = None,
) -> AvatarStore:
    """The avatar store faces are prepared through: the one the settings name (Redis, the
    avatar directory) when `registered`, else memory only (the CLI, the Python API).
    `engine` gives the engine on first detection; `observe` is told of the avatar
    directory's temporaries."""

    def decode(data: bytes):
        return generation.decode_face(data, settings)

    def prepare(frames, options, timings):
        return engine().prepare_face(frames, options, timings=timings)

    if registered:
        return open_store(settings, decode=decode, prepare=prepare, observe=observe)
    return AvatarStore(None, int(settings.avatar_cache_mb * MB), decode, prepare)
