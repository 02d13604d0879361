"""Live inference first: the gate between live batches and whole-file batches.

A live frame that is late is worthless; a whole-file reply that takes a little longer is
not. So while a live batch is pending (submitted and not yet run to its end), a whole-file
or streamed generation does not start its next batch: it waits between batches, never in
the middle of an inference, and fills the time the live sessions leave. While a live
session is open, whole-file batches are cut into slices of BATCH_ROWS_BESIDE_LIVE rows,
each started behind the gate, so a live batch waits at most for one slice (a whole batch
of a slow CPU takes longer than a live frame may wait). A whole-file slice waits at most
`max_wait_s`, so it always completes (a live load that never pauses slows it, it cannot
stop it).

The workers of one server share a CPU: given `peers_dir` (the gunicorn master's, in
LIPSYNC_PEERS_DIR), a worker's live batches and sessions hold back the whole-file work of
every worker. Each is a `SharedFlag` there, a shared flock the kernel drops when its
process dies.

Native locks only: both sides run on native threads, also in a gevent worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lipsync.util import native_lock

if TYPE_CHECKING:  # the gunicorn master imports this module: no OpenVINO there
    from lipsync.runtime.wav2lip import Pending

logger = logging.getLogger(__name__)

# Longest a whole-file batch waits for pending live batches before it starts anyway.
MAX_YIELD_S = 2.0
# How often a waiting whole-file batch looks whether the live batches have run.
POLL_S = 0.005
# Rows of a whole-file slice while a live session is open: a live batch waits for at most
# one frame of whole-file inference (~10 ms with AMX, ~80 ms on 2 AVX2 cores). Measured by
# bench.soak on 2 AVX2 cores (1 live session at 6 fps beside whole-file and streamed
# clients): lag p50/p95 692/1479 ms with slices of 2 rows, 444/1106 ms with 1.
BATCH_ROWS_BESIDE_LIVE = 1
# The environment variable naming the directory the workers of one server share.
PEERS_DIR_ENV = "LIPSYNC_PEERS_DIR"
# Raising a flag while a peer probes it: tries, each after giving up the CPU (no sleep: a
# greenlet must not switch while it holds the flag's native lock).
RAISE_TRIES = 1000


class SharedFlag:
    """A flag that any process can raise (counted within it) and every process can see
    through one file, where a process that raised it holds a shared flock; without a
    path, a flag of this process only."""

    def __init__(self, name: str, path: Path | None = None) -> None:
        self.name = name
        self._files = None
        if path is not None:
            self._files = tuple(os.open(path, os.O_RDWR | os.O_CREAT, 0o600) for _ in "hp")
        self._mutex = native_lock()
        self.count = 0

    def raise_flag(self) -> None:
        with self._mutex:
            self.count += 1
            if self.count == 1 and self._files is not None:
                self._hold(self._files[0])

    def lower_flag(self) -> None:
        with self._mutex:
            if self.count < 1:
                raise RuntimeError(f"{self.name}: lowered more often than raised")
            self.count -= 1
            if self.count == 0 and self._files is not None:
                fcntl.flock(self._files[0], fcntl.LOCK_UN)

    def raised(self) -> bool:
        """Whether any process (this one included) has the flag raised."""
        if self.count or self._files is None:
            return self.count > 0
        probe = self._files[1]
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        for fd in self._files or ():
            os.close(fd)
        self._files = None

    def _hold(self, holder: int) -> None:
        """Never blocks: a peer's probe holds the file for microseconds (stopped right then,
        longer: the flag stays down, which costs priority, nothing else)."""
        for _ in range(RAISE_TRIES):
            try:
                fcntl.flock(holder, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                os.sched_yield()
        logger.warning("%s: a peer holds the flag's file; not raised", self.name)


class InferenceGate:
    """Pending live batches and open live sessions (this process's, and with `peers_dir`
    its peers'); whole-file batches wait while a live batch is pending and start as
    slices while a live session is open.

    Nothing is held across threads (a live batch is counted on its session's thread and
    uncounted on whichever thread ran it): a waiting whole-file batch looks again every
    POLL_S."""

    def __init__(self, max_wait_s: float = MAX_YIELD_S, peers_dir: Path | None = None) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_wait_s = max_wait_s
        shared = (lambda name: peers_dir / name) if peers_dir else (lambda name: None)
        self.batches = SharedFlag("live batches", shared("live-batches.lock"))
        self.sessions = SharedFlag("live sessions", shared("live-sessions.lock"))
        self._mutex = native_lock()
        self._tick = native_lock()  # always held: acquiring it with a timeout is a sleep
        self._tick.acquire()
        self.yielding = 0  # whole-file batches waiting at the gate now
        self.yields = 0  # whole-file batches that had to wait, since the start

    @property
    def live_pending(self) -> int:
        """This process's pending live batches."""
        return self.batches.count

    def live_begin(self) -> None:
        """A live batch is pending: whole-file batches hold back until `live_end`."""
        self.batches.raise_flag()

    def live_end(self) -> None:
        """That live batch has run (or failed)."""
        self.batches.lower_flag()

    @contextlib.contextmanager
    def live_session(self) -> Iterator[None]:
        """While it lasts, whole-file batches start as slices."""
        self.sessions.raise_flag()
        try:
            yield
        finally:
            self.sessions.lower_flag()

    def start_batch(self, start_rows: Callable[[slice], Pending], rows: int) -> Pending:
        """Start a whole-file batch of `rows` (`start_rows(rows_slice)` starts a part of
        it) behind the gate: whole, or beside a live session as slices."""
        self.before_batch()
        if rows <= BATCH_ROWS_BESIDE_LIVE or not self.sessions.raised():
            return start_rows(slice(0, rows))
        return _Slices(self, start_rows, rows)

    def before_batch(self) -> None:
        """Called before a whole-file batch starts: waits while live batches are pending
        (at most `max_wait_s`)."""
        if not self.batches.raised():  # a racing live_begin only means one batch goes first
            return
        with self._mutex:
            self.yielding += 1
            self.yields += 1
        limit = time.monotonic() + self.max_wait_s
        try:
            while self.batches.raised() and (left := limit - time.monotonic()) > 0:
                self._tick.acquire(timeout=min(left, POLL_S))
            if self.batches.raised():
                logger.info("a whole-file batch waited %.1f s for live ones", self.max_wait_s)
        finally:
            with self._mutex:
                self.yielding -= 1

    def close(self) -> None:
        """Let go of the peers' files (a closed gate counts for this process only)."""
        self.batches.close()
        self.sessions.close()


class _Slices:
    """A whole-file batch beside live sessions: its first slice starts now, the others in
    `wait()`, each behind the gate. `wait()` -> the batch's mouths (B, 96, 96, 3) uint8."""

    def __init__(self, gate: InferenceGate, start_rows: Callable[[slice], Pending], rows: int):
        self._gate, self._start_rows = gate, start_rows
        step = BATCH_ROWS_BESIDE_LIVE
        self._parts = [slice(a, min(a + step, rows)) for a in range(0, rows, step)]
        self._first = start_rows(self._parts[0])

    def wait(self) -> np.ndarray:
        mouths = [self._first.wait()]
        for part in self._parts[1:]:
            self._gate.before_batch()
            mouths.append(self._start_rows(part).wait())
        return np.concatenate(mouths)
