"""One live session (/api/stream): audio in, frames out, controls and limits, over any
`LiveTransport` (transport.py: receive, send, close).

Loops, each on its own greenlet under gevent (native threads under gthread):
- `run` (the connection's): reads messages, answers controls, enforces the idle and
  session time limits and watches the writer for a stalled reader;
- the renderer: takes the queued audio (all of it at once when behind), pushes it to the
  utterance's LiveLipSync (inference through the worker's shared batcher, `batcher.py`)
  and encodes the frames (`outputs.py`: JPEG, or the session's WebM stream), on a native
  thread (run_in_thread);
- the writer (`writer.py`): the only one sending, a bounded frame queue, backpressure,
  and the pace of speech frames (`pacing.py`: with pace "realtime" a reply rendered ahead
  waits in that queue until lead_ms before each frame's time);
- in idle mode, the idle loop (`idle.py`): the avatar's own frames while no speech flows.

`interrupt` bumps the utterance epoch: queued audio and frames are dropped at once and a
render in flight is discarded when it returns, so no frame of the old speech follows the
`interrupted` message (and, paced, at most the lead's worth went before it).

State shared by the loops (the epoch, the audio queue and its length, how the session
ends) is read and written under the session's lock, the writer's queue under its own, the
encoder and the idle timeline under `_producing`; so a session is correct whether its
loops are greenlets or threads. Any loop's unexpected exception is logged and ends the
session with close 1011; a peer that goes away just ends it.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lipsync.engine import BatchStart, Wav2LipInferenceEngine
from lipsync.errors import InvalidInputError, LipSyncError
from lipsync.faces import PreparedFace, frame_order
from lipsync.live import LiveLipSync
from lipsync.options import RenderOptions
from lipsync.server import observability as obs
from lipsync.server.offload import run_in_thread
from lipsync.server.realtime import protocol as p
from lipsync.server.realtime.idle import IdleLoop, Timeline
from lipsync.server.realtime.inbound import decode_pcm, parse_text
from lipsync.server.realtime.outputs import LiveOutput, Outgoing, WebmOutput
from lipsync.server.realtime.pacing import Pacer
from lipsync.server.realtime.transport import LiveTransport, TransportClosed
from lipsync.server.realtime.writer import ROOM_POLL_S, SessionClosed, Writer
from lipsync.serving.payloads import decode_base64
from lipsync.settings import Settings

__all__ = ["Session", "SessionClosed", "SessionFace"]

logger = logging.getLogger(__name__)

# How often the reading loop wakes to check its time limits.
TICK_S = 0.5
# Audio waiting to be rendered beyond this many seconds: the client sends faster than real
# time can be rendered (or, paced, played) for too long, and the session is closed. A TTS
# reply sent at once waits here while its frames are paced: a minute of it is allowed.
MAX_PENDING_AUDIO_S = 60.0
# Audio rendered at most in one go (when behind, or fed faster than real time): its frames
# are sent before the next part is taken, so the first ones never wait for a long render.
MAX_RENDER_S = 0.64
# How long a closing session waits for each of its loops to end (a render in flight).
JOIN_S = 30.0
# How a session ends when the peer has gone (nothing is sent: the transport is closed).
PEER_GONE = SessionClosed(p.CLOSE_NORMAL, "the client went away")
SERVER_ERROR = SessionClosed(p.CLOSE_INTERNAL, "server error")


@dataclass(frozen=True)
class SessionFace:
    """The session's face, ready: an utterance's LiveLipSync is `new_live()`; `starter`
    runs its batches on the worker's batcher (an image's features computed once)."""

    engine: Wav2LipInferenceEngine
    prepared: PreparedFace
    options: RenderOptions
    sample_rate: int
    starter: BatchStart

    def new_live(self) -> LiveLipSync:
        return LiveLipSync(self.engine, self.prepared, self.options, self.sample_rate, self.starter)


@dataclass
class _Rendered:
    epoch: int
    utterance: int
    items: list[Outgoing]
    frames: int
    received: float  # when the audio completing these frames arrived (perf_counter)
    anchor: float  # when the audio completing the utterance's first frame arrived
    flushed: int | None = None  # frames of the utterance, when this ended it
    error: LipSyncError | None = None


class Session:
    """One connection's lip-sync over `transport`. `run()` returns when the session is
    over (the transport closed with the session's code), and never raises."""

    def __init__(
        self,
        transport: LiveTransport,
        start: p.Start,
        face: SessionFace,
        output: LiveOutput,
        settings: Settings,
    ) -> None:
        self.start = start
        self.session_id = uuid.uuid4().hex
        self.settings = settings
        self.transport = transport
        self._face = face
        self._output = output
        self._fps = face.options.fps
        self._lock = threading.Lock()  # _epoch, _audio, _pending_samples, _closing
        self._epoch = 0
        self._utterance = 0  # counts the session's utterances (the pacing clock's key)
        self._anchor = 0.0  # the utterance's `_Rendered.anchor` (set by its first frames)
        # (samples or None for a flush, perf_counter when received): the current epoch's
        self._audio: collections.deque[tuple[np.ndarray | None, float]] = collections.deque()
        self._pending_samples = 0
        self._audio_ready = threading.Event()
        self._producing = threading.Lock()  # held while frames are encoded and queued
        self._timeline = Timeline()
        lead_s = start.lead_ms / 1000 if start.pace == "realtime" else None
        pacer = Pacer(lead_s, 1.0 / self._fps)
        self.writer = Writer(transport, settings.realtime_send_buffer_frames, pacer)
        self._closing: SessionClosed | None = None
        self._done = False

    # -- the reading loop --------------------------------------------------------------

    def run(self) -> None:
        height, width = self._face.prepared.frames.shape[1:3]
        self.writer.json(
            p.Ready(
                session_id=self.session_id,
                width=width,
                height=height,
                fps=self._fps,
                protocol=self.start.protocol,
                mime_type=self._output.mime_type,
            )
        )
        self.writer.frames(run_in_thread(self._output.opening), time.perf_counter())
        loops = [self._render_loop, self.writer.loop]
        if self.start.idle:
            idle = IdleLoop(
                self._face.prepared.frames,
                self._fps,
                self._output,
                self.writer,
                self._timeline,
                self._producing,
                lambda: self._done,
            )
            loops.append(idle.run)
        threads = [threading.Thread(target=self._guard(loop), daemon=True) for loop in loops]
        for thread in threads:
            thread.start()
        self._guard(self._read)()
        self._done = True
        self._audio_ready.set()
        self.writer.stop()
        closing = self._closing or SessionClosed(p.CLOSE_NORMAL, "")
        self.transport.close(closing.code, closing.reason)
        for thread in threads:
            thread.join(JOIN_S)
        with self._producing:  # never while a render or an idle frame uses the encoder
            self._guard(lambda: run_in_thread(self._output.close))()

    def _read(self) -> None:
        started = time.monotonic()
        last_heard = started
        while self._closing is None:
            message = self.transport.receive(TICK_S)
            now = time.monotonic()
            if message is not None:
                self._handle(message)
            busy = self._audio or self._producing.locked() or self.writer.pending_frames
            if message is not None or busy:
                last_heard = now  # a client waiting for its frames is not idle
            self._check_limits(now, started, last_heard)

    def _end_with(self, closed: SessionClosed) -> None:
        """The session ends with `closed` (the first reason given wins)."""
        with self._lock:
            self._closing = self._closing or closed

    def _check_limits(self, now: float, started: float, last_heard: float) -> None:
        s = self.settings
        if now - started > s.realtime_max_session_s:
            limit = s.realtime_max_session_s
            raise SessionClosed(p.CLOSE_POLICY, f"session longer than {limit:g} s")
        if now - last_heard > s.realtime_idle_timeout_s:
            raise SessionClosed(p.CLOSE_POLICY, f"no message for {s.realtime_idle_timeout_s:g} s")
        if self.writer.stalled_for(now) > s.realtime_stall_timeout_s:
            raise SessionClosed(
                p.CLOSE_POLICY, f"the client read nothing for {s.realtime_stall_timeout_s:g} s"
            )

    def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._queue_audio(decode_pcm(message, self.start.audio))
            return
        parsed = parse_text(message)
        if isinstance(parsed, p.Audio):
            try:
                data = decode_base64(parsed.data)
            except InvalidInputError:
                raise SessionClosed(p.CLOSE_INVALID_PAYLOAD, "audio.data is not base64") from None
            self._queue_audio(decode_pcm(data, self.start.audio))
        elif isinstance(parsed, p.Flush):
            with self._lock:
                self._audio.append((None, time.perf_counter()))
            self._audio_ready.set()
        elif isinstance(parsed, p.Interrupt):
            self._interrupt()
        elif isinstance(parsed, p.Ping):
            self.writer.json(p.Pong(id=parsed.id))
        elif isinstance(parsed, p.End):
            self._end()
        else:
            raise SessionClosed(p.CLOSE_POLICY, "start sent twice")

    def _end(self) -> None:
        """`end`: close 1000 at once; with webm output, after the stream's tail (the muxer
        finished: what it held goes out) has been sent."""
        if isinstance(self._output, WebmOutput):
            self._drop_audio()  # no more rendering
            self.writer.unpace()  # what waits goes at once
            with self._producing:
                items = run_in_thread(self._output.finish)
                self.writer.frames(items, time.perf_counter())
            deadline = time.monotonic() + self.settings.realtime_stall_timeout_s
            while self.writer.pending_frames and time.monotonic() < deadline:
                time.sleep(ROOM_POLL_S)
        raise SessionClosed(p.CLOSE_NORMAL, "end")

    def _queue_audio(self, samples: np.ndarray) -> None:
        with self._lock:
            self._pending_samples += len(samples)
            if self._pending_samples > MAX_PENDING_AUDIO_S * self.start.audio.sample_rate:
                raise SessionClosed(
                    p.CLOSE_POLICY, f"more than {MAX_PENDING_AUDIO_S:g} s of audio waiting"
                )
            self._audio.append((samples, time.perf_counter()))
        self._audio_ready.set()

    def _drop_audio(self) -> None:
        """A new epoch: the audio queued so far is never rendered."""
        with self._lock:
            self._epoch += 1
            self._audio.clear()
            self._pending_samples = 0

    def _interrupt(self) -> None:
        self._drop_audio()
        dropped = self.writer.drop_frames(lambda n: p.Interrupted(dropped_frames=n))
        obs.REALTIME_FRAMES_DROPPED.inc(dropped)

    # -- rendering ---------------------------------------------------------------------

    def _new_live(self) -> LiveLipSync:
        self._utterance += 1
        return self._face.new_live()

    def _render_loop(self) -> None:
        live, epoch = self._new_live(), self._epoch
        while not self._done:
            if self._epoch != epoch:  # interrupted: a fresh utterance
                self._end_utterance(live)
                live, epoch = self._new_live(), self._epoch
            taken = self._take_audio(epoch)
            if taken is None:
                self._audio_ready.wait(TICK_S)
                self._audio_ready.clear()
                continue
            chunks, flush, received = taken
            with self._producing:
                rendered = run_in_thread(self._render, live, chunks, flush, epoch, received)
                self._deliver(rendered)
            if flush:
                self._end_utterance(live)
                live = self._new_live()

    def _end_utterance(self, live: LiveLipSync) -> None:
        """The next frames continue a video avatar's loop (idle mode) after this one."""
        with self._producing:
            if self.start.idle and live.num_frames:
                self._timeline.position = live.first_frame + live.num_frames
            self._output.utterance_end()

    def _take_audio(self, epoch: int) -> tuple[list[np.ndarray], bool, float] | None:
        """The queued audio of `epoch` up to and including the first flush (if any), at
        most MAX_RENDER_S of it (a longer message is split); None when there is none."""
        chunks: list[np.ndarray] = []
        received, room = 0.0, round(MAX_RENDER_S * self.start.audio.sample_rate)
        with self._lock:
            if not self._audio or self._epoch != epoch:
                return None
            while self._audio and room > 0:
                samples, received = self._audio.popleft()
                if samples is None:
                    return chunks, True, received
                if len(samples) > room:  # the rest waits for the next render
                    self._audio.appendleft((samples[room:], received))
                    samples = samples[:room]
                chunks.append(samples)
                room -= len(samples)
                self._pending_samples -= len(samples)
        return chunks, False, received

    def _render(
        self, live: LiveLipSync, chunks: list[np.ndarray], flush: bool, epoch: int, received: float
    ) -> _Rendered:
        """On a native thread: the frames of `chunks` (and the tail when flushing), encoded."""
        if self.start.idle and live.num_frames == 0:
            live.first_frame = self._timeline.position  # continue the avatar's loop
        first = live.num_frames
        frames = []
        if chunks:
            samples = np.concatenate(chunks)
            self._output.audio(samples)
            frames.append(live.push(samples))
        error = None
        if flush:
            try:
                frames.append(live.finish())
            except LipSyncError as exc:  # shorter than one mel window
                error = exc
        made = np.concatenate(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
        items = []
        if len(made):
            if first == 0:
                self._anchor = received
            shown = live.first_frame + live.num_frames
            sources = frame_order(shown, self._face.prepared.num_frames)[shown - len(made) :]
            items = self._output.speech(made, first, received, sources)
        flushed = live.num_frames if flush else None
        utterance = self._utterance
        return _Rendered(epoch, utterance, items, len(made), received, self._anchor, flushed, error)

    def _deliver(self, rendered: _Rendered) -> None:
        if self._done:
            return
        if rendered.frames:
            self._timeline.last_speech_at = time.perf_counter()
        # Interrupted meanwhile: its JPEGs are of dropped speech (WebM bytes still go).
        current = functools.partial(self._current, rendered)
        self.writer.frames(
            rendered.items, rendered.received, current, rendered.utterance, rendered.anchor
        )
        if rendered.error is not None:
            code = rendered.error.code.code
            self.writer.json(p.ErrorMessage(code=code, message=str(rendered.error)), current)
        if rendered.flushed is not None:
            self.writer.json(p.Flushed(frames=rendered.flushed), current)

    def _current(self, rendered: _Rendered) -> bool:
        return rendered.epoch == self._epoch and not self._done

    def _guard(self, loop: Callable[[], object]) -> Callable[[], None]:
        """Run `loop`; its end ends the session: with its own close code, quietly when the
        peer has gone, with 1011 (logged) on any other exception."""

        def guarded() -> None:
            try:
                loop()
            except SessionClosed as closed:
                self._end_with(closed)
            except TransportClosed:
                self._end_with(PEER_GONE)
            except Exception:
                if not self._done:
                    logger.exception("live session %s failed", self.session_id)
                self._end_with(SERVER_ERROR)

        return guarded
