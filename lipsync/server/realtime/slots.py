"""A worker's live connections: sessions, and connections that have not started one yet.

A connection counts as a session (at most `sessions` per worker, the costly part: a face,
an encoder, renders) only once its `start` is valid. Until then it is unstarted, and
unstarted connections are bounded on their own, in all and per client address, and last
at most the start timeout: sockets that upgrade and never send `start` cannot take the
places real sessions need.
"""

from __future__ import annotations

import collections
import threading

from lipsync.server import observability as obs


class LiveSlots:
    """Counts of one worker (thread-safe)."""

    def __init__(self, sessions: int, unstarted: int, unstarted_per_client: int) -> None:
        self.sessions = sessions
        self.unstarted = unstarted
        self.unstarted_per_client = unstarted_per_client
        self.open = 0  # sessions
        self._waiting: collections.Counter[str] = collections.Counter()  # client -> unstarted
        self._lock = threading.Lock()

    def full(self) -> bool:
        return self.open >= self.sessions

    def refusal(self, client: str) -> str | None:
        """Why a new connection from `client` cannot be taken now, or None."""
        if self.full():
            return f"{self.open} live sessions open (limit {self.sessions})"
        waiting = self._waiting[client]
        if waiting >= self.unstarted_per_client:
            return (
                f"{waiting} connections from {client} have not started a session "
                f"(limit {self.unstarted_per_client})"
            )
        total = sum(self._waiting.values())
        if total >= self.unstarted:
            return f"{total} connections have not started a session (limit {self.unstarted})"
        return None

    def connect(self, client: str) -> LiveSlot | None:
        """A new unstarted connection of `client`, or None over a limit."""
        with self._lock:
            if self.refusal(client) is not None:
                return None
            self._waiting[client] += 1
        return LiveSlot(self, client)

    def _start(self, client: str) -> bool:
        with self._lock:
            if self.full():
                return False
            self.open += 1
            self._forget(client)
        obs.REALTIME_SESSIONS.inc()
        return True

    def _end(self, client: str, started: bool) -> None:
        with self._lock:
            if started:
                self.open -= 1
            else:
                self._forget(client)
        if started:
            obs.REALTIME_SESSIONS.dec()

    def _forget(self, client: str) -> None:
        self._waiting[client] -= 1
        if not self._waiting[client]:
            del self._waiting[client]


class LiveSlot:
    """One connection's place: unstarted, then (`start()`) a session; `end()` once."""

    def __init__(self, slots: LiveSlots, client: str) -> None:
        self._slots = slots
        self._client = client
        self.started = False
        self._ended = False

    def start(self) -> bool:
        """Count the connection as a session; False when every session place is taken."""
        if not self.started:
            self.started = self._slots._start(self._client)
        return self.started

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._slots._end(self._client, self.started)
