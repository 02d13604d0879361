"""Many sessions, one model: the frames several sessions need at the same moment run as one
inference batch.

Each session renders on its own native thread and submits its batches (mel windows plus
the face: an image's encoded features, or a video's face inputs) with `start`, as the
engine's `iter_frames` does; waiting for one takes the batcher's turn, and whoever holds
it runs everything submitted so far (every session's) as one batch per network, then
hands each session its rows. While a batch runs, the next sessions' windows gather, so
the batch grows with the load. When another session rendered recently but has nothing
pending yet (it is pasting and encoding its last frames), the turn waits up to LINGER_S
for it, so sessions that take turns do not each run alone. Pasting and JPEG/WebM encoding
stay on each session's thread.

An image's features are computed once per session (`starter`), not per push. From its
submission until its inference has run, a session's batch holds the engine's
`inference_gate`: whole-file and streamed generations of every worker of the server start
no new batch meanwhile (live first, lipsync/runtime/priority.py).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from lipsync.engine import BatchStart, Wav2LipInferenceEngine
from lipsync.faces import PreparedFace
from lipsync.runtime.priority import InferenceGate
from lipsync.runtime.wav2lip import FaceFeatures, Wav2LipGenerator
from lipsync.server import observability as obs
from lipsync.server.offload import NativeEvent
from lipsync.util import native_lock

logger = logging.getLogger(__name__)

# A waiting session re-checks its job this often even if nobody wakes it (a safety net).
WAKE_POLL_S = 0.05
# How long a batch waits for the windows of another session that is rendering too (one
# that submitted within RECENT_S) before it runs without them.
LINGER_S = 0.01
RECENT_S = 0.25


@dataclass(eq=False)
class _Job:
    """One session's batch: mel windows (n, 80, 16) with the image's features (each
    (1, C, H, W)) or a face input per window (n, 96, 96, 6)."""

    generator: Wav2LipGenerator
    owner: int
    gate: InferenceGate
    mels: np.ndarray
    features: FaceFeatures | None = None
    faces: np.ndarray | None = None
    mouths: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False
    wake: NativeEvent = field(default_factory=NativeEvent)


class _Ticket:
    """What `start` returns (a `Pending`): `wait()` -> the job's mouths (n, 96, 96, 3)."""

    def __init__(self, batcher: FrameBatcher, job: _Job) -> None:
        self._batcher, self._job = batcher, job

    def wait(self) -> np.ndarray:
        return self._batcher.wait(self._job)


class FrameBatcher:
    """The batcher of one worker's sessions (thread-safe; native locks only)."""

    def __init__(self, max_frames: int) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = max_frames
        self._mutex = native_lock()
        self._turn = native_lock()  # held while a batch runs
        self._pending: list[_Job] = []
        self._owners = itertools.count()
        self._last_seen: dict[int, float] = {}  # owner -> time.monotonic() of its last job
        self._arrived = NativeEvent()

    def starter(
        self, engine: Wav2LipInferenceEngine, prepared: PreparedFace, model: str
    ) -> BatchStart:
        """A session's `start(mels, idx)` for `iter_frames`: an image's face is encoded
        here, once (counted in lipsync_realtime_face_encodes_total)."""
        generator = engine.generator(model)
        owner, gate = next(self._owners), engine.inference_gate
        if prepared.num_frames == 1:
            features = generator.encode_face(prepared.inputs)
            obs.REALTIME_FACE_ENCODES.inc()

            def start(mels: np.ndarray, idx: np.ndarray) -> _Ticket:
                return self.submit(_Job(generator, owner, gate, mels, features=features))
        else:

            def start(mels: np.ndarray, idx: np.ndarray) -> _Ticket:
                return self.submit(_Job(generator, owner, gate, mels, faces=prepared.inputs[idx]))

        return start

    def submit(self, job: _Job) -> _Ticket:
        job.gate.live_begin()
        with self._mutex:
            self._pending.append(job)
            self._last_seen[job.owner] = time.monotonic()
        self._arrived.set()
        return _Ticket(self, job)

    def wait(self, job: _Job) -> np.ndarray:
        """Block until `job` has run (taking the turn to run the pending batch if free)."""
        while not job.done:
            if self._turn.acquire(blocking=False):
                try:
                    if not job.done:
                        self._linger()
                        self._run(self._take())
                finally:
                    self._turn.release()
                    self._wake_waiting()
            else:
                job.wake.wait(WAKE_POLL_S)
        if job.error is not None:
            raise job.error
        assert job.mouths is not None
        return job.mouths

    def _linger(self) -> None:
        """Wait (up to LINGER_S) while a recently rendering session has no job pending."""
        deadline = time.monotonic() + LINGER_S
        while (left := deadline - time.monotonic()) > 0:
            with self._mutex:
                now = time.monotonic()
                recent = {o for o, seen in self._last_seen.items() if now - seen < RECENT_S}
                missing = recent - {job.owner for job in self._pending}
                for owner in [o for o, seen in self._last_seen.items() if now - seen > RECENT_S]:
                    del self._last_seen[owner]
            if not missing:
                return
            self._arrived.wait(left)

    def _take(self) -> list[_Job]:
        """The oldest pending jobs, up to max_frames windows (at least one job)."""
        with self._mutex:
            taken: list[_Job] = []
            rows = 0
            while self._pending and (
                not taken or rows + len(self._pending[0].mels) <= self.max_frames
            ):
                job = self._pending.pop(0)
                taken.append(job)
                rows += len(job.mels)
            return taken

    def _wake_waiting(self) -> None:
        with self._mutex:
            waiting = list(self._pending)
        for job in waiting:
            job.wake.set()

    def _run(self, jobs: list[_Job]) -> None:
        groups: dict[tuple[int, bool], list[_Job]] = {}
        for job in jobs:
            groups.setdefault((id(job.generator), job.faces is None), []).append(job)
        for group in groups.values():
            try:
                mouths = _infer(group)
                offsets = np.cumsum([0, *(len(job.mels) for job in group)])
                for job, start, stop in zip(group, offsets[:-1], offsets[1:], strict=True):
                    job.mouths = mouths[start:stop]
                logger.debug("batch of %d windows, %d jobs", offsets[-1], len(group))
                obs.REALTIME_BATCH_FRAMES.observe(int(offsets[-1]))
                obs.REALTIME_BATCH_SESSIONS.observe(len({job.owner for job in group}))
            except Exception as exc:  # the sessions' threads raise it
                for job in group:
                    job.error = exc
            finally:  # whatever happened, the gate is let go and every session woken
                for job in group:
                    job.gate.live_end()
                    job.done = True
                    job.wake.set()


def _infer(group: list[_Job]) -> np.ndarray:
    """One inference for jobs of one generator and kind -> mouths of all their windows."""
    generator = group[0].generator
    mels = np.concatenate([job.mels for job in group])
    if group[0].faces is not None:
        faces = np.concatenate([job.faces for job in group if job.faces is not None])
        return generator.start(mels, faces).wait()
    if len(group) == 1 and group[0].features is not None:
        return generator.start_with_face(mels, group[0].features).wait()
    features = {name: _rows(group, name) for name in group[0].features or {}}
    return generator.start_with_face(mels, features).wait()


def _rows(group: list[_Job], name: str) -> np.ndarray:
    """Feature `name` repeated for each job's windows: (B, C, H, W)."""
    parts: list[np.ndarray] = []
    for job in group:
        assert job.features is not None
        feature = job.features[name]
        parts.append(np.broadcast_to(feature, (len(job.mels), *feature.shape[1:])))
    return np.concatenate(parts)
