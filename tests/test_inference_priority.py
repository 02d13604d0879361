"""Live inference first (issue 19, item 7), in-process and deterministic: while a live
batch is pending on the worker's batcher, a whole-file generation starts no new batch (it
waits between batches, its running batch is not disturbed); then it goes on, and its frames
are those it makes alone. While a live session is open, whole-file batches start as small
slices. The workers of a server see each other's live work through shared flags (one
file each, an open-file-description lock a killed worker drops). Real networks (untrained
models); nothing is timed."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import FACE_BOX

from lipsync.engine import Wav2LipInferenceEngine
from lipsync.options import RenderOptions
from lipsync.runtime import priority
from lipsync.runtime.priority import BATCH_ROWS_BESIDE_LIVE, InferenceGate, SharedFlag
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
    with pytest.raises(RuntimeError, match="live batches: lowered more often than raised"):
        gate.live_end()
    with pytest.raises(ValueError, match="max_wait_s"):
        InferenceGate(max_wait_s=-1)


@pytest.fixture
def started_video(monkeypatch) -> list[int]:
    """Rows of each whole-network inference (a video avatar's), in the order they start."""
    rows: list[int] = []
    real = Wav2LipGenerator.start

    def spy(self, mels, faces):
        assert len(faces) == len(mels)
        rows.append(len(mels))
        return real(self, mels, faces)

    monkeypatch.setattr(Wav2LipGenerator, "start", spy)
    return rows


@pytest.mark.parametrize("avatar", ["image", "video"])
def test_beside_an_open_live_session_whole_file_batches_start_as_slices(
    engine, face_image, gate, started, started_video, avatar
) -> None:
    frames = [face_image] if avatar == "image" else [face_image, face_image[:, ::-1].copy()]
    prepared = engine.prepare_face(frames, OPTIONS)
    rows = started if avatar == "image" else started_video
    windows = mels(WHOLE_FILE_FRAMES, seed=5)
    alone = np.concatenate(list(engine.iter_frames(prepared, windows, blend="none")))
    assert rows == [BATCH, BATCH, BATCH, WHOLE_FILE_FRAMES - 3 * BATCH]
    rows.clear()

    with gate.live_session():
        beside = np.concatenate(list(engine.iter_frames(prepared, windows, blend="none")))
    assert set(rows) == {BATCH_ROWS_BESIDE_LIVE} and sum(rows) == WHOLE_FILE_FRAMES
    assert gate.sessions.count == 0  # the session's end lowered the flag
    # the same frames, in the same order (the video's frames follow their windows); the
    # batch shape may change the last bit of a float sum
    assert beside.shape == alone.shape
    assert np.abs(beside.astype(int) - alone.astype(int)).max() <= 1


def test_peers_see_each_others_live_work_through_their_shared_flags(tmp_path) -> None:
    one, other = (
        InferenceGate(peers_dir=tmp_path),
        InferenceGate(peers_dir=tmp_path, max_wait_s=600),
    )
    try:
        assert not other.batches.raised() and not other.sessions.raised()
        with one.live_session():
            assert other.sessions.raised() and other.live_pending == 0
        assert not other.sessions.raised()

        one.live_begin()
        waited = threading.Thread(target=other.before_batch)
        waited.start()
        wait_until(lambda: other.yielding == 1, "the peer's whole-file batch waits")
        one.live_end()
        waited.join(600)
        assert not waited.is_alive() and other.yields == 1
    finally:
        one.close()
        other.close()


def test_a_killed_peers_flag_goes_down_with_it(tmp_path) -> None:
    """A worker killed in the middle of a live batch holds no whole-file work back."""
    holder = (
        "import sys, time; from pathlib import Path\n"
        "from lipsync.runtime.priority import SharedFlag\n"
        "flag = SharedFlag('live batches', Path(sys.argv[1]))\n"
        "flag.raise_flag(); print('raised', flush=True); time.sleep(600)\n"
    )
    path = tmp_path / "live-batches.lock"
    peer = subprocess.Popen(
        [sys.executable, "-c", holder, str(path)], stdout=subprocess.PIPE, text=True
    )
    seen = SharedFlag("live batches", path)
    try:
        assert peer.stdout is not None and peer.stdout.readline() == "raised\n"
        assert seen.raised() and seen.count == 0
        peer.send_signal(signal.SIGKILL)
        peer.wait(60)
        assert not seen.raised()
    finally:
        peer.kill()
        peer.wait(60)
        assert peer.stdout is not None
        peer.stdout.close()
        seen.close()


def test_a_flag_without_a_file_is_this_processes_only(tmp_path: Path) -> None:
    local, shared = SharedFlag("local"), SharedFlag("shared", tmp_path / "flag.lock")
    try:
        shared.raise_flag()
        peer = SharedFlag("a peer's", tmp_path / "flag.lock")
        assert peer.raised() and not SharedFlag("local too").raised()  # the file's, or none
        peer.close()
        shared.lower_flag()
        local.raise_flag()
        assert local.raised() and not shared.raised()
        local.lower_flag()
        assert not local.raised()
        with pytest.raises(RuntimeError, match="local: lowered more often than raised"):
            local.lower_flag()
    finally:
        shared.close()


def test_a_missing_peers_dir_leaves_the_priority_within_the_process(tmp_path, caplog) -> None:
    """A stale LIPSYNC_PEERS_DIR (its master gone) costs priority across workers, nothing else."""
    gate = InferenceGate(peers_dir=tmp_path / "gone")
    try:
        with gate.live_session():
            assert gate.sessions.raised() and gate.batch_rows(16) == BATCH_ROWS_BESIDE_LIVE
        assert gate.batch_rows(16) == 16
        assert "within this process only" in caplog.text
    finally:
        gate.close()


def test_a_peers_open_session_cuts_this_workers_batches(engine, face_image, started, tmp_path):
    prepared = engine.prepare_face(face_image, OPTIONS)
    peer, default = InferenceGate(peers_dir=tmp_path), engine.inference_gate
    engine.inference_gate = InferenceGate(peers_dir=tmp_path)
    try:
        with peer.live_session():
            frames = list(engine.iter_frames(prepared, mels(5, seed=6), blend="none"))
        assert started == [BATCH_ROWS_BESIDE_LIVE] * 5 and len(frames) == 5
        started.clear()
        list(engine.iter_frames(prepared, mels(5, seed=6), blend="none"))
        assert started == [BATCH, 1]  # the session closed: whole batches again
    finally:
        engine.inference_gate.close()
        engine.inference_gate = default
        peer.close()


def test_a_generation_stopped_early_beside_a_session_starts_nothing_more(
    engine, face_image, gate, started
) -> None:
    """A client that hangs up beside a live session: the batch already running finishes,
    no further one starts (each one-frame batch is a point where the caller can stop)."""
    prepared = engine.prepare_face(face_image, OPTIONS)
    with gate.live_session():
        frames = engine.iter_frames(prepared, mels(WHOLE_FILE_FRAMES, seed=7), blend="none")
        assert len(next(frames)) == BATCH_ROWS_BESIDE_LIVE
        frames.close()
    assert started == [BATCH_ROWS_BESIDE_LIVE] * 2  # the first, and the one running ahead


def test_a_session_opening_mid_generation_cuts_the_batches_not_yet_started(
    engine, face_image, gate, started
) -> None:
    """Batch sizes are decided as each batch is reached, not when the generation begins."""
    prepared = engine.prepare_face(face_image, OPTIONS)
    frames = engine.iter_frames(prepared, mels(WHOLE_FILE_FRAMES, seed=8), blend="none")
    made = len(next(frames))  # batch 0 done, batch 1 started ahead
    with gate.live_session():
        made += sum(len(batch) for batch in frames)
    assert made == WHOLE_FILE_FRAMES
    assert started == [BATCH, BATCH] + [1] * (WHOLE_FILE_FRAMES - 2 * BATCH)


def test_a_file_without_ofd_locks_leaves_a_working_flag_of_this_process(
    tmp_path, monkeypatch, caplog
) -> None:
    """Where the kernel refuses the lock (EINVAL), the flag says so once and keeps counting."""

    def refused(fd, command, arg):
        raise OSError(errno.EINVAL, "Invalid argument")

    flag = SharedFlag("live sessions", tmp_path / "flag.lock")
    monkeypatch.setattr(priority.fcntl, "fcntl", refused)
    flag.raise_flag()
    assert flag.raised() and flag.count == 1
    flag.lower_flag()
    assert not flag.raised() and flag.count == 0
    flag.raise_flag()
    flag.lower_flag()
    assert caplog.text.count("within this process only") == 1
