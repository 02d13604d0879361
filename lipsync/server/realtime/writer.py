"""A session's sending side: the only one writing to the transport, a bounded frame queue
and the backpressure policy.

Frames wait in a queue of at most `buffer_frames`; when it is full and the reader is
behind (a send blocked for DROP_AFTER_S) the oldest droppable frame (a JPEG) is dropped,
counted and reported in a `dropped` message; WebM chunks are never dropped (a gap would
break the stream): their producer waits for room instead. `stalled_for` lets the session
close a reader that takes nothing for too long.

Speech frames are paced (`pacing.Pacer`): the loop holds a frame at the head of the queue
until its send time (woken early by anything queued or dropped meanwhile), so with pace
"realtime" the queue is where a reply fed faster than real time waits, and `interrupt`
drops it there; what an interrupt cannot drop (WebM bytes) then leaves unpaced, so the
`interrupted` behind it is not held. A slow reader only costs frames whose send time has
passed: a frame waiting for its time is not dropped. A `pong` goes ahead of waiting frames
(it measures the round trip, not the pacing); every other message keeps its place.

The queue has its own lock: the renderer and the idle loop add frames, the reading loop
adds controls and drops frames (interrupt), the writer's loop takes them, each possibly
on its own thread (gthread worker). `frames` and `json` take a `valid` check that runs
under that lock, so a frame of interrupted speech is either queued before the interrupt
drops it or not at all.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pydantic

from lipsync.server import observability as obs
from lipsync.server.realtime import protocol as p
from lipsync.server.realtime.outputs import Outgoing
from lipsync.server.realtime.pacing import Pacer
from lipsync.server.realtime.transport import LiveTransport

# How long the writer's loop sleeps when there is nothing to send.
TICK_S = 0.5
# With the frame queue full, a send blocked this long means the reader is behind: the
# oldest waiting frame is dropped for the new one (else the producer waits for room).
DROP_AFTER_S = 0.2
ROOM_POLL_S = 0.02


def always() -> bool:
    return True


class SessionClosed(Exception):
    """Close the session with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class _Item:
    message: str | bytes
    frame: bool  # a frame or WebM chunk (counted, bounded); else a control or base frame
    droppable: bool
    received: float  # perf_counter when the audio completing it arrived
    utterance: int = 0
    pts_s: float | None = None  # presentation time in the utterance: a paced frame
    anchor: float = 0.0  # when the audio of the utterance's first frame arrived
    made: float = 0.0  # perf_counter when handed to the writer
    due: float = -math.inf  # perf_counter when it may be sent


class Writer:
    """Sends a transport's messages, in order, from its own loop (`loop`)."""

    def __init__(self, transport: LiveTransport, buffer_frames: int, pacer: Pacer) -> None:
        self.transport = transport
        self._buffer_frames = buffer_frames
        self._pacer = pacer
        self._out: collections.deque[_Item] = collections.deque()
        self._frames = 0  # frames in _out
        self._lock = threading.Lock()  # the queue and its counts
        self._ready = threading.Event()
        self._space = threading.Event()  # the writer took a frame
        self._dropped_unreported = 0
        self._sending_since: float | None = None
        self.dropped = 0
        self.sent = 0
        self.last_frame_at = 0.0  # time.perf_counter() when the last frame was sent
        self.stopped = False

    @property
    def pending_frames(self) -> int:
        return self._frames

    def stalled_for(self, now: float) -> float:
        """Seconds the send in progress has been blocked (0 when none is)."""
        since = self._sending_since
        return 0.0 if since is None else now - since

    def frames(
        self,
        items: list[Outgoing],
        received: float,
        valid: Callable[[], bool] = always,
        utterance: int = 0,
        anchor: float | None = None,
    ) -> None:
        """Queue frame messages (speech frames of `utterance` paced by their pts on the
        clock `anchor` starts, default `received`); the droppable ones only while
        `valid()` (checked under the queue's lock: false once interrupted; the others
        then go unpaced)."""
        made = time.perf_counter()
        for item in items:
            if item.counted:
                self._wait_for_room(item.droppable)
            with self._lock:
                current = valid()
                if self.stopped or (item.droppable and not current):
                    continue
                pts_s = item.pts_s if current else None
                queued = _Item(
                    item.message,
                    item.counted,
                    item.droppable,
                    received,
                    utterance,
                    pts_s,
                    received if anchor is None else anchor,
                    made,
                )
                self._out.append(queued)
                self._frames += item.counted
            self._ready.set()

    def json(self, message: pydantic.BaseModel, valid: Callable[[], bool] = always) -> None:
        """Queue a control message, if `valid()` (checked under the queue's lock); a
        `pong` before the frames waiting."""
        with self._lock:
            if not valid():
                return
            item = _Item(message.model_dump_json(), False, False, 0.0)
            if isinstance(message, p.Pong):
                first_frame = next((n for n, q in enumerate(self._out) if q.frame), len(self._out))
                self._out.insert(first_frame, item)
            else:
                self._out.append(item)
        self._ready.set()

    def drop_frames(self, then: Callable[[int], pydantic.BaseModel]) -> int:
        """Drop every droppable frame waiting (interrupt) and queue `then(dropped)` in
        their place, at once; -> how many were dropped."""
        with self._lock:
            kept = [item for item in self._out if not item.droppable]
            for item in kept:
                item.pts_s, item.due = None, -math.inf  # of the interrupted speech: not paced
            dropped = len(self._out) - len(kept)
            self._out.clear()
            self._out.extend(kept)
            self._frames = sum(item.frame for item in kept)
            self._out.append(_Item(then(dropped).model_dump_json(), False, False, 0.0))
            self._pacer.interrupted()
        self._ready.set()
        self._space.set()
        return dropped

    def _wait_for_room(self, droppable: bool) -> None:
        """Wait while the queue is full and the reader keeps up; once one send has been
        blocked for DROP_AFTER_S (the reader is behind), drop the oldest droppable frame."""
        while self._frames >= self._buffer_frames and not self.stopped:
            since = self._sending_since
            behind = since is not None and time.monotonic() - since > DROP_AFTER_S
            if droppable and behind and self._drop_oldest():
                return
            self._space.wait(ROOM_POLL_S)
            self._space.clear()

    def _drop_oldest(self) -> bool:
        """Drop the oldest droppable frame whose send time has passed, if any (send times
        never decrease along the queue: the first one still to come ends the search)."""
        now = time.perf_counter()
        with self._lock:
            for position, item in enumerate(self._out):
                if self._pacer.send_time(item.utterance, item.pts_s, item.anchor) > now:
                    return False
                if item.droppable:
                    del self._out[position]
                    self._frames -= 1
                    self._dropped_unreported += 1
                    self.dropped += 1
                    obs.REALTIME_FRAMES_DROPPED.inc()
                    return True
        return False

    def _next(self) -> tuple[_Item | None, float, int]:
        """The next message to send if it may go now, else how long to wait for it (at
        most TICK_S); and the drops not reported yet (taken)."""
        with self._lock:
            dropped, self._dropped_unreported = self._dropped_unreported, 0
            if not self._out:
                return None, TICK_S, dropped
            item = self._out[0]
            if item.pts_s is not None:
                now = time.perf_counter()
                item.due = self._pacer.due(item.utterance, item.pts_s, item.anchor)
                if item.due > now:
                    return None, min(item.due - now, TICK_S), dropped
            self._out.popleft()
            if item.frame:
                self._frames -= 1
        if item.frame:
            self._space.set()
        return item, 0.0, dropped

    def loop(self) -> None:
        """Send until `stop()`; TransportClosed when the peer goes."""
        while not self.stopped:
            item, wait, dropped = self._next()
            if dropped:
                self._send(p.Dropped(count=dropped, total=self.dropped).model_dump_json())
            if item is None:
                self._ready.wait(wait)
                self._ready.clear()
                continue
            self._send(item.message)
            if item.frame:
                self._frame_sent(item)

    def _frame_sent(self, item: _Item) -> None:
        """Count a frame sent; its latency leaves out the wait for its send time."""
        now = time.perf_counter()
        self.last_frame_at = now
        if item.pts_s is not None:
            with self._lock:
                self._pacer.sent(item.utterance, item.pts_s)
        self.sent += 1
        obs.REALTIME_FRAMES_SENT.inc()
        rendered = item.made - item.received
        obs.REALTIME_FRAME_SECONDS.observe(rendered + now - max(item.made, item.due))

    def unpace(self) -> None:
        """Send what waits at once (the session is ending)."""
        with self._lock:
            self._pacer.unpace()
        self._ready.set()

    def stop(self) -> None:
        self.stopped = True
        self._ready.set()
        self._space.set()

    def _send(self, message: str | bytes) -> None:
        self._sending_since = time.monotonic()
        try:
            self.transport.send(message)
        finally:
            self._sending_since = None
