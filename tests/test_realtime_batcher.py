"""The real-time batcher (lipsync/server/realtime/batcher.py) in-process: windows that
several sessions submit before one of them waits run as ONE inference, each session gets
its own rows, equal to running it alone; an image's face is encoded once per session."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FACE_BOX

from lipsync.engine import Wav2LipInferenceEngine
from lipsync.options import RenderOptions
from lipsync.runtime.wav2lip import Wav2LipGenerator
from lipsync.server.realtime.batcher import FrameBatcher

OPTIONS = RenderOptions(box=FACE_BOX, blend="none", quality="original")


@pytest.fixture(scope="module")
def engine(untrained_models) -> Wav2LipInferenceEngine:
    return Wav2LipInferenceEngine(untrained_models, precision="f32", batch_size=8)


@pytest.fixture
def calls(monkeypatch) -> dict[str, list[int]]:
    """Spy on the generator's inferences (they still run): rows per call, per network."""
    seen: dict[str, list[int]] = {"decoder": [], "whole": [], "encoder": []}
    real_decoder = Wav2LipGenerator.start_with_face
    real_whole = Wav2LipGenerator.start
    real_encoder = Wav2LipGenerator.encode_face

    def decoder(self, mels, features):
        seen["decoder"].append(len(mels))
        return real_decoder(self, mels, features)

    def whole(self, mels, faces):
        seen["whole"].append(len(mels))
        return real_whole(self, mels, faces)

    def encoder(self, face):
        seen["encoder"].append(len(face))
        return real_encoder(self, face)

    monkeypatch.setattr(Wav2LipGenerator, "start_with_face", decoder)
    monkeypatch.setattr(Wav2LipGenerator, "start", whole)
    monkeypatch.setattr(Wav2LipGenerator, "encode_face", encoder)
    return seen


def mels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 80, 16)).astype(np.float32)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_sessions_pending_together_run_as_one_batch(engine, face_image, calls, kind) -> None:
    if kind == "image":  # two sessions, two different faces: features per row
        faces = [face_image, np.ascontiguousarray(face_image[:, ::-1])]
    else:
        faces = [np.stack([np.roll(face_image, s, axis=1) for s in (0, 3)])] * 2
    prepared = [engine.prepare_face(face, OPTIONS) for face in faces]
    batcher = FrameBatcher(max_frames=16)
    starts = [batcher.starter(engine, p, "wav2lip") for p in prepared]
    assert calls["encoder"] == ([1, 1] if kind == "image" else [])
    windows = [mels(3, 0), mels(4, 1)]
    idx = [np.zeros(3, np.int64), np.array([0, 1, 1, 0])]
    tickets = [start(w, i) for start, w, i in zip(starts, windows, idx, strict=True)]
    mouths = [ticket.wait() for ticket in tickets]
    network = "decoder" if kind == "image" else "whole"
    assert calls[network] == [7]  # one inference for both sessions' windows
    for p, w, i, got in zip(prepared, windows, idx, mouths, strict=True):
        alone = engine.batch_starter(p)(w, i).wait()
        assert got.shape == (len(w), 96, 96, 3)
        assert np.abs(got.astype(np.int16) - alone).max() <= 1


def test_a_batch_takes_at_most_max_frames(engine, face_image, calls) -> None:
    prepared = engine.prepare_face(face_image, OPTIONS)
    batcher = FrameBatcher(max_frames=5)
    start = batcher.starter(engine, prepared, "wav2lip")
    tickets = [start(mels(n, n), np.zeros(n, np.int64)) for n in (3, 2, 4)]
    assert [len(t.wait()) for t in tickets] == [3, 2, 4]
    assert calls["decoder"] == [5, 4]
    assert calls["encoder"] == [1]  # the face once, for every batch of the session
