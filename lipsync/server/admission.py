"""Admission control and cooperative cancellation for expensive requests.

A worker runs at most `max_concurrent` generations; up to `max_queue` more wait at most
`max_wait_s` for a slot; anything beyond is refused at once with 503 + Retry-After, and
the connection is closed after that answer (`end_connection`): admission is per worker and
a keep-alive connection stays with the worker that accepted it, so a client retrying on it
would only ever ask the busy worker; its retry opens a new connection, which any worker
may accept.
A running generation checks its `Deadline` between frame batches and stops when the time
limit passes (504) or the client has hung up.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

from lipsync.errors import ErrorCode, LipSyncError


class OverloadedError(LipSyncError):
    """No generation slot: refused, to be retried after `retry_after` seconds."""

    default_code = ErrorCode.OVERLOADED

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(LipSyncError):
    default_code = ErrorCode.TIMEOUT


class ClientDisconnectedError(LipSyncError):
    """The client closed the connection; nobody is left to answer (logged as 499)."""

    default_code = ErrorCode.CLIENT_DISCONNECTED


class AdmissionController:
    """Per-process limit on concurrent generations with a bounded, time-limited queue."""

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int,
        max_wait_s: float,
        retry_after_s: int,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_concurrent < 1 or max_queue < 0 or max_wait_s < 0:
            raise ValueError(
                f"invalid admission limits: max_concurrent={max_concurrent}, "
                f"max_queue={max_queue}, max_wait_s={max_wait_s}"
            )
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self._slots = threading.Semaphore(max_concurrent)
        self._lock = threading.Lock()
        self.waiting = 0
        self.active = 0
        self._on_change = on_change

    def _changed(self) -> None:
        """Report (active, waiting); called with the lock held."""
        if self._on_change is not None:
            self._on_change(self.active, self.waiting)

    @property
    def saturated(self) -> bool:
        return self.active >= self.max_concurrent and self.waiting >= self.max_queue

    def refuse_if_saturated(self) -> None:
        """Cheap early refusal (before a request body is parsed) when no place is left."""
        if self.saturated:
            raise OverloadedError(
                f"server busy: {self.active} running, {self.waiting} queued", self.retry_after_s
            )

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a generation slot for the block; OverloadedError when none comes in time."""
        if not self._slots.acquire(blocking=False):
            with self._lock:
                if self.waiting >= self.max_queue:
                    raise OverloadedError(
                        f"server busy: {self.active} running, {self.waiting} queued",
                        self.retry_after_s,
                    )
                self.waiting += 1
                self._changed()
            try:
                acquired = self._slots.acquire(timeout=self.max_wait_s)
            finally:
                with self._lock:
                    self.waiting -= 1
                    self._changed()
            if not acquired:
                raise OverloadedError(
                    f"server busy: no generation slot within {self.max_wait_s:g} s",
                    self.retry_after_s,
                )
        with self._lock:
            self.active += 1
            self._changed()
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
                self._changed()
            self._slots.release()


def end_connection(sock: socket.socket | None) -> None:
    """Close a keep-alive connection once its answer is sent: shut its reading side, so the
    server reads end-of-file where the next request would be and closes the connection
    (no WSGI means to ask the server for `Connection: close`). None (no server socket, e.g.
    Flask's test client): nothing to do."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RD)


def peer_closed(sock: socket.socket | None) -> bool:
    """True when the client has closed its side of `sock` (EOF waiting to be read)."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):  # reset, or already closed on our side
        return True


class Deadline:
    """A request's time limit and its client's connection, checked between batches.

    `check` may run on another thread than the one owning the socket (a gevent worker
    generates on a native thread): then the owner sets `watched` and calls `poll_peer`,
    and `check` only reads the flags it sets.
    """

    def __init__(self, seconds: float, sock: socket.socket | None = None) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.sock = sock
        self.watched = False
        self.hung_up = False
        self.cancelled = False

    def poll_peer(self) -> bool:
        """On the socket's owner: whether the client has hung up (remembered once seen)."""
        if not self.hung_up and peer_closed(self.sock):
            self.hung_up = True
        return self.hung_up

    def cancel(self) -> None:
        """Make the next `check` stop the generation (the request itself was abandoned)."""
        self.cancelled = True

    def check(self) -> None:
        if time.monotonic() > self.expires:
            raise DeadlineExceededError(f"generation exceeded the {self.seconds:g} s time limit")
        if self.cancelled:
            raise DeadlineExceededError("generation cancelled: the request was abandoned")
        if self.hung_up if self.watched else self.poll_peer():
            raise ClientDisconnectedError("client disconnected")
