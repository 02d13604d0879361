"""Idle mode: while no speech frame is being made, the avatar's own frames at fps.

An idle frame is sent when nothing else is: no render in flight or frames waiting, no
speech frame queued for IDLE_AFTER_FRAMES frame intervals, and none of any kind for one.
A video avatar plays forward then backward (`lipsync.faces.frame_order`) from where it is;
the session's speech frames continue that loop (LiveLipSync's `first_frame`) and the idle
frames pick it up where the speech left it, so the avatar never jumps or freezes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lipsync.faces import frame_order
from lipsync.server.offload import run_in_thread
from lipsync.server.realtime.outputs import LiveOutput
from lipsync.server.realtime.writer import Writer

# Speech frames come at fps while the speech flows; a gap of this many frame intervals
# without one means it has stopped (or fell behind) and the idle frames take over.
IDLE_AFTER_FRAMES = 2


@dataclass
class Timeline:
    """Shared by the session's renderer and its idle loop."""

    position: int = 0  # the avatar frame (loop position) the next frame shows
    last_speech_at: float = 0.0  # time.perf_counter() when speech frames were last queued
    idle_frames: int = 0


def loop_frame(position: int, num_frames: int) -> int:
    """The source frame at `position` of a forward/backward loop over `num_frames`."""
    period = max(2 * num_frames - 2, 1)
    return int(frame_order(position % period + 1, num_frames)[-1])


class IdleLoop:
    """Runs on its own greenlet (`run`) until `stopped()`; `producing` is held by whoever
    encodes and queues frames (the renderer while it renders), so the output's frames stay
    in order."""

    def __init__(
        self,
        frames: np.ndarray,
        fps: float,
        output: LiveOutput,
        writer: Writer,
        timeline: Timeline,
        producing: threading.Lock,
        stopped: Callable[[], bool],
    ) -> None:
        self._frames = frames
        self._period = 1.0 / fps
        self._output = output
        self._writer = writer
        self._timeline = timeline
        self._producing = producing
        self._stopped = stopped
        self._started = time.perf_counter()

    def run(self) -> None:
        while not self._stopped():
            wait = self._due() - time.perf_counter()
            if wait > 0:
                time.sleep(min(wait, self._period))
                continue
            if self._writer.pending_frames or not self._producing.acquire(blocking=False):
                time.sleep(self._period / 4)
                continue
            try:
                self._send_one()
            finally:
                self._producing.release()

    def _due(self) -> float:
        """When the next idle frame may go: a frame period after the last frame sent (for
        paced speech, where its presentation ends less the lead, like the next speech frame
        would), and IDLE_AFTER_FRAMES periods after speech was last made."""
        timeline = self._timeline
        return max(
            self._writer.last_frame_at + self._period,
            timeline.last_speech_at + IDLE_AFTER_FRAMES * self._period,
        )

    def _send_one(self) -> None:
        timeline = self._timeline
        source = loop_frame(timeline.position, len(self._frames))
        index, timeline.idle_frames = timeline.idle_frames, timeline.idle_frames + 1
        timeline.position += 1
        pts_ms = round((time.perf_counter() - self._started) * 1000)
        items = run_in_thread(self._output.idle, self._frames[source], source, index, pts_ms)
        self._writer.frames(items, time.perf_counter(), lambda: True)
