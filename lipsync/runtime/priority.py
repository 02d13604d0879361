"""Live inference first: the gate between live batches and whole-file batches.

A live frame that is late is worthless; a whole-file reply that takes a little longer is
not. So while a live batch is pending (submitted and not yet run to its end), a whole-file
or streamed generation does not start its next batch: it waits between batches, never in
the middle of an inference, and fills the time the live sessions leave. While a live
session is open, whole-file batches are BATCH_ROWS_BESIDE_LIVE rows each (`batch_rows`),
so a live batch waits for little more than one such batch per running generation (a
whole batch of a slow CPU takes longer than a live frame may wait). A whole-file batch
waits at most `max_wait_s`, so it always completes (a live load that never pauses slows
it, it cannot stop it).

The workers of one server share a CPU: given `peers_dir` (the gunicorn master's, in
LIPSYNC_PEERS_DIR), a worker's live batches and sessions hold back the whole-file work of
every worker. Each is a `SharedFlag` there: a read lock on one file (an open file
description lock, which the kernel drops when its process dies) that peers test for
without taking a lock themselves, so raising a flag never waits for anyone.

Native locks only: both sides run on native threads, also in a gevent worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from lipsync.util import native_lock

logger = logging.getLogger(__name__)

# Longest a whole-file batch waits for pending live batches before it starts anyway.
MAX_YIELD_S = 2.0
# How often a waiting whole-file batch looks whether the live batches have run.
POLL_S = 0.005
# Rows of a whole-file batch while a live session is open: a live batch waits for one frame
# of whole-file inference per running generation (~10 ms with AMX, ~80 ms on 2 AVX2 cores).
# Measured by bench.soak on 2 AVX2 cores (1 live session at 6 fps beside whole-file and
# streamed clients): lag p50/p95 692/1479 ms with 2 rows, 444/1106 ms with 1.
BATCH_ROWS_BESIDE_LIVE = 1
# The environment variable naming the directory the workers of one server share.
PEERS_DIR_ENV = "LIPSYNC_PEERS_DIR"
# struct flock (Linux): l_type, l_whence, l_start, l_len, l_pid, padding.
FLOCK_STRUCT = "hhqqi4x"


def _lock_request(kind: int) -> bytes:
    """A whole-file lock of `kind` (F_RDLCK, F_WRLCK, F_UNLCK) for F_OFD_* commands."""
    return struct.pack(FLOCK_STRUCT, kind, os.SEEK_SET, 0, 0, 0)


class SharedFlag:
    """A flag that any process can raise (counted within it) and every process can see
    through one file; without a path (or where the file or OFD locks are unavailable),
    a flag of this process only. Errors of the file never raise: a flag that cannot use
    its file becomes a flag of this process (said once), which costs priority, never a
    request."""

    def __init__(self, name: str, path: Path | None = None) -> None:
        self.name = name
        self._mutex = native_lock()
        self.count = 0
        self._file: int | None = None
        if path is not None and hasattr(fcntl, "F_OFD_GETLK"):
            try:
                self._file = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                logger.warning("%s: %s; live priority within this process only", name, exc)

    def raise_flag(self) -> None:
        with self._mutex:
            if self.count == 0:
                self._set(fcntl.F_RDLCK)
            self.count += 1

    def lower_flag(self) -> None:
        with self._mutex:
            if self.count < 1:
                raise RuntimeError(f"{self.name}: lowered more often than raised")
            self.count -= 1
            if self.count == 0:
                self._set(fcntl.F_UNLCK)

    def raised(self) -> bool:
        """Whether any process (this one included) has the flag raised."""
        if self.count:
            return True
        with self._mutex:
            if self._file is None:
                return False
            try:
                found = fcntl.fcntl(self._file, fcntl.F_OFD_GETLK, _lock_request(fcntl.F_WRLCK))
            except OSError as exc:
                self._give_up(exc)
                return False
        return struct.unpack(FLOCK_STRUCT, found)[0] != fcntl.F_UNLCK

    def close(self) -> None:
        """Let go of the file (and of a raised flag's lock); a flag of this process then."""
        with self._mutex:
            if self._file is not None:
                os.close(self._file)
                self._file = None

    def _set(self, kind: int) -> None:
        """Take or drop this process's read lock: never waits (nobody takes a write lock)."""
        if self._file is None:
            return
        try:
            fcntl.fcntl(self._file, fcntl.F_OFD_SETLK, _lock_request(kind))
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        """The file cannot serve (no OFD locks here?): a flag of this process from now on."""
        logger.warning("%s: %s; live priority within this process only", self.name, exc)
        assert self._file is not None
        os.close(self._file)  # a raised flag's lock goes with it
        self._file = None


class InferenceGate:
    """Pending live batches and open live sessions (this process's, and with `peers_dir`
    its peers'); whole-file batches wait while a live batch is pending and are cut to
    BATCH_ROWS_BESIDE_LIVE rows while a live session is open.

    Nothing is held across threads (a live batch is counted on its session's thread and
    uncounted on whichever thread ran it): a waiting whole-file batch looks again every
    POLL_S."""

    def __init__(self, max_wait_s: float = MAX_YIELD_S, peers_dir: Path | None = None) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_wait_s = max_wait_s
        in_peers = (lambda name: peers_dir / name) if peers_dir else (lambda name: None)
        self.batches = SharedFlag("live batches", in_peers("live-batches.lock"))
        self.sessions = SharedFlag("live sessions", in_peers("live-sessions.lock"))
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
        """While it lasts, whole-file batches are BATCH_ROWS_BESIDE_LIVE rows each."""
        self.sessions.raise_flag()
        try:
            yield
        finally:
            self.sessions.lower_flag()

    def batch_rows(self, rows: int) -> int:
        """The rows of the next whole-file batch, when `rows` are wanted."""
        return min(rows, BATCH_ROWS_BESIDE_LIVE) if self.sessions.raised() else rows

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
