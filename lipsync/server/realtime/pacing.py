"""When a live session's speech frames may leave the server (`Start.pace`).

Each speech frame has a presentation time within its utterance (`pts_s`). With a lead
(pace "realtime"), a frame leaves no earlier than `lead_s` before its presentation time on
the utterance's clock; so a reply fed faster than real time (a TTS) waits in the server,
where an `interrupt` can still drop it, and only the lead's worth is ever in the network.

The clock of an utterance starts when the audio completing its first frame arrived (or
when the previous utterance's frames end their presentation, if that is later: replies
play back to back) and runs at real time. Anchored to the audio, not to when frames are
made, a session fed in real time (a microphone) never has a frame held, whatever a render
took, while a reply fed faster than real time leaves at the pace it will be played. A frame
made after its send time (the renderer fell behind) leaves at once; the clock does not move
for it, so the frames after it catch up. Without a lead (pace "asap") frames leave as soon
as they are made. Times are seconds of one monotonic clock (`time.perf_counter`), passed
in: the class is pure bookkeeping.
"""

from __future__ import annotations

import math


class Pacer:
    """The send times of one session's speech frames; used by its writer's loop alone."""

    def __init__(self, lead_s: float | None, period_s: float) -> None:
        self.lead_s = lead_s
        self._period_s = period_s
        self._utterance: int | None = None
        self._start = 0.0  # the clock: when the utterance's frame 0 is presented
        self.presented_until = -math.inf  # the end of the last sent frame's presentation

    def due(self, utterance: int, pts_s: float, received: float) -> float:
        """When the frame at `pts_s` of `utterance` may leave; `received`: when the audio
        completing it arrived (the clock's anchor for the utterance's first frame)."""
        if self.lead_s is None:
            return -math.inf
        if utterance != self._utterance:
            self._utterance = utterance
            self._start = max(received, self.presented_until)
        return self._start + pts_s - self.lead_s

    def sent(self, pts_s: float) -> None:
        """The frame at `pts_s` of the current utterance left."""
        if self.lead_s is not None:
            self.presented_until = self._start + pts_s + self._period_s

    def interrupted(self) -> None:
        """The client dropped what it had of the reply: the next one starts at once."""
        self._utterance = None
        self.presented_until = -math.inf
