"""Live inference first: one engine's gate between live batches and whole-file batches.

A live frame that is late is worthless; a whole-file reply that takes a little longer is
not. So while a live batch is pending (submitted and not yet run to its end), a whole-file
or streamed generation does not start its next batch: it waits between batches, never in
the middle of an inference, and fills the time the live sessions leave. A live batch
therefore waits at most for the one whole-file batch already running (`batch_size`
frames). A whole-file batch waits at most `max_wait_s` per batch, so it always completes
(a live load that never pauses slows it, it cannot stop it).

Native locks only: both sides run on native threads, also in a gevent worker.
"""

from __future__ import annotations

import logging
import time

from lipsync.util import native_lock

logger = logging.getLogger(__name__)

# Longest a whole-file batch waits for pending live batches before it starts anyway.
MAX_YIELD_S = 2.0
# How often a waiting whole-file batch looks whether the live batches have run.
POLL_S = 0.005


class InferenceGate:
    """Counts pending live batches; whole-file batches wait while any is pending.

    Nothing is held across threads (a live batch is counted on its session's thread and
    uncounted on whichever thread ran it): a waiting whole-file batch looks again every
    POLL_S."""

    def __init__(self, max_wait_s: float = MAX_YIELD_S) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_wait_s = max_wait_s
        self._mutex = native_lock()
        self._tick = native_lock()  # always held: acquiring it with a timeout is a sleep
        self._tick.acquire()
        self.live_pending = 0
        self.yielding = 0  # whole-file batches waiting at the gate now
        self.yields = 0  # whole-file batches that had to wait, since the start

    def live_begin(self) -> None:
        """A live batch is pending: whole-file batches hold back until `live_end`."""
        with self._mutex:
            self.live_pending += 1

    def live_end(self) -> None:
        """That live batch has run (or failed)."""
        with self._mutex:
            if self.live_pending < 1:
                raise RuntimeError("live_end without live_begin")
            self.live_pending -= 1

    def before_batch(self) -> None:
        """Called before a whole-file batch starts: waits while live batches are pending
        (at most `max_wait_s`)."""
        if self.live_pending == 0:  # a racing live_begin only means one batch goes first
            return
        with self._mutex:
            self.yielding += 1
            self.yields += 1
        limit = time.monotonic() + self.max_wait_s
        try:
            while self.live_pending and (left := limit - time.monotonic()) > 0:
                self._tick.acquire(timeout=min(left, POLL_S))
            if self.live_pending:
                logger.info("a whole-file batch waited %.1f s for live ones", self.max_wait_s)
        finally:
            with self._mutex:
                self.yielding -= 1
