"""Live inference first (issue 19, item 7), in-process and deterministic: while a live
batch is pending on the worker's batcher, a whole-file generation starts no new batch (it
waits between batches, its running batch is not disturbed); then it goes on, and its frames
are those it makes alone. Real networks (untrained models); nothing is timed."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import FACE_BOX

from lipsync.engine import Wav2LipInferenceEngine
from lipsync.options import RenderOptions
from lipsync.runtime.priority import InferenceGate
from lipsync.runtime.wav2lip import Wav2LipGenerator
from lipsync.server.realtime.batcher import FrameBatcher

OPTIONS = RenderOptions(box=FACE_BOX, blend="none", quality="original")
BATCH = 4  # whole-file batch size
LIVE_WINDOWS = 3  # a live batch: a different size, to tell the two apart
WHOLE_FILE_FRAMES = 14


@pytest.fixture(scope="module")
def engine(untrained_models) -> Wav2LipInferenceEngine:
    return Wav2LipInferenceEngine(untrained_models, precision="f32", batch_size=BATCH)


@pytest.fixture
def gate(engine) -> Iterator[InferenceGate]:
    """A gate that never gives up waiting (the default lets a whole-file batch go after
    MAX_YIELD_S, which a loaded machine could reach before the test runs the live batch)."""
    default = engine.inference_gate
    engine.inference_gate = InferenceGate(max_wait_s=600)
    yield engine.inference_gate
    engine.inference_gate = default


@pytest.fixture
def started(monkeypatch) -> list[int]:
    """Rows of each decoder inference, in the order they start (they still run)."""
    rows: list[int] = []
    real = Wav2LipGenerator.start_with_face

    def spy(self, mels, features):
        rows.append(len(mels))
        return real(self, mels, features)

    monkeypatch.setattr(Wav2LipGenerator, "start_with_face", spy)
    return rows


def mels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 80, 16)).astype(np.float32)


def wait_until(condition, what: str) -> None:
    """Block (not a timing check: a generous limit only against a hang) until `condition()`."""
    event = threading.Event()
    for _ in range(6000):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError(f"never happened: {what}")


def test_a_pending_live_batch_goes_before_the_next_whole_file_batch(
    engine, face_image, gate, started
) -> None:
    prepared = engine.prepare_face(face_image, OPTIONS)
    windows = mels(WHOLE_FILE_FRAMES, seed=1)
    alone = np.concatenate(list(engine.iter_frames(prepared, windows, blend="none")))
    started.clear()

    whole_file = engine.iter_frames(prepared, windows, blend="none")
    frames = [next(whole_file)]  # batch 0 done, batch 1 running (started ahead)
    assert started == [BATCH, BATCH]
    batcher = FrameBatcher(max_frames=16)
    live = batcher.starter(engine, prepared, "wav2lip")(mels(LIVE_WINDOWS, seed=2), np.zeros(3))
    assert gate.live_pending == 1

    rest = threading.Thread(target=lambda: frames.extend(whole_file))
    rest.start()
    wait_until(lambda: gate.yielding == 1, "the whole-file batch waits at the gate")
    assert started == [BATCH, BATCH]  # nothing new started while the live batch is pending
    assert len(frames) == 1  # ... and batch 1, already running, is not held back
    mouths = live.wait()  # the live batch runs
    rest.join(600)

    assert not rest.is_alive() and gate.live_pending == 0 and gate.yields == 1
    assert started[:3] == [BATCH, BATCH, LIVE_WINDOWS]  # live before whole-file batch 2
    assert sum(started[3:]) == WHOLE_FILE_FRAMES - 2 * BATCH
    assert mouths.shape == (LIVE_WINDOWS, 96, 96, 3)
    assert np.array_equal(np.concatenate(frames), alone)  # whole-file output unchanged


def test_whole_file_work_completes_behind_a_live_load_that_never_pauses(
    engine, face_image, started
) -> None:
    """The wait per batch is bounded: a live batch pending throughout slows a whole-file
    generation (each of its later batches waits), never stops it."""
    engine_gate = engine.inference_gate
    engine.inference_gate = InferenceGate(max_wait_s=0.01)
    try:
        prepared = engine.prepare_face(face_image, OPTIONS)
        batcher = FrameBatcher(max_frames=16)
        live = batcher.starter(engine, prepared, "wav2lip")(mels(LIVE_WINDOWS, 3), np.zeros(3))
        frames = list(engine.iter_frames(prepared, mels(WHOLE_FILE_FRAMES, 4), blend="none"))
        batches = -(-WHOLE_FILE_FRAMES // BATCH)
        assert sum(len(f) for f in frames) == WHOLE_FILE_FRAMES
        assert engine.inference_gate.yields == batches  # every batch waited, and went on
        live.wait()
        assert engine.inference_gate.live_pending == 0
    finally:
        engine.inference_gate = engine_gate


def test_gate_counts_must_balance() -> None:
    gate = InferenceGate()
    gate.live_begin()
    gate.live_end()
    gate.before_batch()  # nothing pending: goes at once
    assert gate.yields == 0
    with pytest.raises(RuntimeError, match="without live_begin"):
        gate.live_end()
    with pytest.raises(ValueError, match="max_wait_s"):
        InferenceGate(max_wait_s=-1)
