"""When a live session's speech frames may leave the server (`Start.pace`).

Each speech frame has a presentation time within its utterance (`pts_s`). With a lead
(pace "realtime"), a frame leaves no earlier than `lead_s` before its presentation time on
the utterance's clock; so a reply fed faster than real time (a TTS) waits in the server,
where an `interrupt` can still drop it, and only the lead's worth is ever in the network.

The clock of an utterance starts when the audio completing its first frame arrived (or
when the previous utterance's frames end their presentation, if that is later: replies
play back to back) and runs at real time. Anchored to the audio, not to the renderer, a
session fed in real time (a microphone) never has a frame held, however long a render
took; a frame made late leaves at once and the clock does not move for it, so the frames
after it catch up. The clock is the utterance's: a client that feeds replies with pauses
between them flushes each (a new utterance, a new clock), else the frames after a pause
are late on the old clock and leave as fast as they are made. Without a lead (pace
"asap", or once the session is ending) frames leave as soon as they are made. Times are
seconds of one monotonic clock (`time.perf_counter`), passed in: the class is pure
bookkeeping, used under its writer's lock.
"""

from __future__ import annotations

import math


class Pacer:
    """The send times of one session's speech frames."""

    def __init__(self, lead_s: float | None, period_s: float) -> None:
        self.lead_s = lead_s
        self._period_s = period_s
        self._utterance: int | None = None
        self._start = 0.0  # the clock: when the utterance's frame 0 is presented
        self.presented_until = -math.inf  # the end of the last sent frame's presentation

    def due(self, utterance: int, pts_s: float, anchor: float) -> float:
        """When the frame at `pts_s` of `utterance` may leave (-inf: at once); `anchor`:
        when the audio completing the utterance's first frame arrived. Called for the
        frame at the head of the queue, it starts the utterance's clock."""
        if self.lead_s is not None and utterance != self._utterance:
            self._utterance = utterance
            self._start = max(anchor, self.presented_until)
        return self.send_time(utterance, pts_s, anchor)

    def send_time(self, utterance: int, pts_s: float | None, anchor: float) -> float:
        """When a frame may leave, without starting a clock (that of an utterance not yet
        started is where `due` would start it); -inf for a frame not paced."""
        if self.lead_s is None or pts_s is None:
            return -math.inf
        start = self._start if utterance == self._utterance else max(anchor, self.presented_until)
        return start + pts_s - self.lead_s

    def sent(self, utterance: int, pts_s: float) -> None:
        """The frame at `pts_s` of `utterance` left (ignored if interrupted meanwhile)."""
        if self.lead_s is not None and utterance == self._utterance:
            self.presented_until = self._start + pts_s + self._period_s

    def interrupted(self) -> None:
        """The client dropped what it had of the reply: the next one starts at once."""
        self._utterance = None
        self.presented_until = -math.inf

    def unpace(self) -> None:
        """Every frame from now on leaves at once (the session is ending)."""
        self.lead_s = None
