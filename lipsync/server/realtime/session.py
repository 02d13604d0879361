"""One /api/stream session: audio in, frames out, controls, limits and backpressure.

Three loops, each on its own greenlet under gevent (threads elsewhere):
- `run` (the connection's): reads messages, answers controls, enforces the idle and
  session time limits and watches the writer for a stalled reader;
- the renderer: takes the queued audio (all of it at once when behind), pushes it to the
  utterance's LiveLipSync and JPEG-encodes the frames, on a native thread (run_in_thread);
- the writer: the only one sending; frames wait in a bounded queue; when it is full and
  the reader is behind (a send blocked for DROP_AFTER_S) the oldest frame is dropped
  (counted, and reported in a `dropped` message), and a reader that takes nothing for
  `realtime_stall_timeout_s` gets its connection closed.

`interrupt` bumps the utterance epoch: queued audio and frames are dropped at once and a
render in flight is discarded when it returns, so no frame of the old speech follows the
`interrupted` message.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pydantic
from wsproto.events import Message, TextMessage

from inference_engine import Wav2LipInferenceEngine
from lipsync.errors import LipSyncError
from lipsync.faces import PreparedFace
from lipsync.live import LiveLipSync
from lipsync.options import RenderOptions
from lipsync.server import observability as obs
from lipsync.server.offload import run_in_thread
from lipsync.server.realtime import protocol as p
from lipsync.settings import Settings

logger = logging.getLogger(__name__)

# How often the reading loop wakes to check its time limits.
TICK_S = 0.5
# Audio waiting to be rendered beyond this many seconds: the client sends faster than real
# time can be rendered for too long, and the session is closed.
MAX_PENDING_AUDIO_S = 30.0
# With the frame queue full, a send blocked this long means the reader is behind: the
# oldest waiting frame is dropped for the new one (else the renderer waits for room).
DROP_AFTER_S = 0.2
ROOM_POLL_S = 0.02


class SessionClosed(Exception):
    """Close the session with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class _Rendered:
    epoch: int
    jpegs: list[bytes]
    first_index: int
    received: float  # when the audio completing these frames arrived (perf_counter)
    flushed: int | None = None  # frames of the utterance, when this ended it
    error: LipSyncError | None = None


def decode_pcm(data: bytes, fmt: p.AudioFormat) -> np.ndarray:
    """Raw interleaved PCM -> (n,) float32 mono; SessionClosed 1007 if not whole samples."""
    frame_bytes = p.SAMPLE_BYTES[fmt.encoding] * fmt.channels
    if len(data) % frame_bytes:
        raise SessionClosed(
            p.CLOSE_INVALID_PAYLOAD,
            f"audio of {len(data)} bytes is not a whole number of {frame_bytes}-byte samples",
        )
    if fmt.encoding == "pcm_s16le":
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    else:
        samples = np.frombuffer(data, "<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise SessionClosed(p.CLOSE_INVALID_PAYLOAD, "audio has NaN or infinite samples")
    return samples.reshape(-1, fmt.channels).mean(axis=1, dtype=np.float32)


def parse_text(text: str) -> p.Start | p.Audio | p.Flush | p.Interrupt | p.Ping | p.End:
    """A client's JSON message; SessionClosed 1007 (bad JSON/fields) or 1003 (unknown type)."""
    try:
        return p.CLIENT_MESSAGE.validate_json(text)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] in ("union_tag_invalid", "union_tag_not_found"):
            raise SessionClosed(p.CLOSE_UNSUPPORTED_DATA, "unknown message type") from None
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise SessionClosed(p.CLOSE_INVALID_PAYLOAD, f"{where}: {first['msg']}"[:120]) from None


class Session:
    """One connection's lip-sync. `run()` returns when the session is over; `ws` is a
    simple_websocket connection (send, receive(timeout), close(reason, message))."""

    def __init__(
        self,
        ws,
        start: p.Start,
        engine: Wav2LipInferenceEngine,
        prepared: PreparedFace,
        options: RenderOptions,
        settings: Settings,
    ) -> None:
        self.ws = ws
        self.start = start
        self.session_id = uuid.uuid4().hex
        self.settings = settings
        self._new_live: Callable[[], LiveLipSync] = lambda: LiveLipSync(
            engine, prepared, options, start.audio.sample_rate
        )
        self._fps = options.fps
        self._height, self._width = prepared.frames.shape[1:3]
        self._epoch = 0
        self._audio: collections.deque[tuple[int, np.ndarray | None, float]] = collections.deque()
        self._pending_samples = 0
        self._audio_ready = threading.Event()
        self._out: collections.deque[tuple[str | bytes, bool, float]] = collections.deque()
        self._out_frames = 0
        self._out_ready = threading.Event()
        self._space = threading.Event()  # the writer took a frame
        self._write_lock = threading.Lock()
        self._dropped_unreported = 0
        self.dropped = 0
        self.sent = 0
        self._sending_since: float | None = None
        self._closing: SessionClosed | None = None
        self._done = False

    # -- the reading loop --------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        last_heard = started
        self._send_json(
            p.Ready(
                session_id=self.session_id,
                width=self._width,
                height=self._height,
                fps=self._fps,
                protocol=self.start.protocol,
            )
        )
        workers = [
            threading.Thread(target=self._guard(self._render_loop), daemon=True),
            threading.Thread(target=self._guard(self._write_loop), daemon=True),
        ]
        for worker in workers:
            worker.start()
        try:
            while self._closing is None:
                message = self.ws.receive(timeout=TICK_S)
                now = time.monotonic()
                if message is not None:
                    last_heard = now
                    self._handle(message)
                self._check_limits(now, started, last_heard)
        except SessionClosed as closed:
            self._closing = self._closing or closed
        finally:
            self._done = True
            self._audio_ready.set()
            self._out_ready.set()
        self._close(self._closing)

    def _check_limits(self, now: float, started: float, last_heard: float) -> None:
        s = self.settings
        if now - started > s.realtime_max_session_s:
            limit = s.realtime_max_session_s
            raise SessionClosed(p.CLOSE_POLICY, f"session longer than {limit:g} s")
        if now - last_heard > s.realtime_idle_timeout_s:
            raise SessionClosed(p.CLOSE_POLICY, f"no message for {s.realtime_idle_timeout_s:g} s")
        since = self._sending_since
        if since is not None and now - since > s.realtime_stall_timeout_s:
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
                data = base64.b64decode(parsed.data, validate=True)
            except binascii.Error:
                raise SessionClosed(p.CLOSE_INVALID_PAYLOAD, "audio.data is not base64") from None
            self._queue_audio(decode_pcm(data, self.start.audio))
        elif isinstance(parsed, p.Flush):
            self._audio.append((self._epoch, None, time.perf_counter()))
            self._audio_ready.set()
        elif isinstance(parsed, p.Interrupt):
            self._interrupt()
        elif isinstance(parsed, p.Ping):
            self._send_json(p.Pong(id=parsed.id))
        elif isinstance(parsed, p.End):
            raise SessionClosed(p.CLOSE_NORMAL, "end")
        else:
            raise SessionClosed(p.CLOSE_POLICY, "start sent twice")

    def _queue_audio(self, samples: np.ndarray) -> None:
        self._pending_samples += len(samples)
        if self._pending_samples > MAX_PENDING_AUDIO_S * self.start.audio.sample_rate:
            raise SessionClosed(
                p.CLOSE_POLICY, f"more than {MAX_PENDING_AUDIO_S:g} s of audio waiting"
            )
        self._audio.append((self._epoch, samples, time.perf_counter()))
        self._audio_ready.set()

    def _interrupt(self) -> None:
        self._epoch += 1
        self._audio.clear()
        self._pending_samples = 0
        dropped = self._drop_frames()
        obs.REALTIME_FRAMES_DROPPED.inc(dropped)
        self._send_json(p.Interrupted(dropped_frames=dropped))

    # -- rendering ---------------------------------------------------------------------

    def _render_loop(self) -> None:
        live, epoch = self._new_live(), self._epoch
        while not self._done:
            if not self._audio:
                self._audio_ready.wait(TICK_S)
                self._audio_ready.clear()
                continue
            if self._audio[0][0] != epoch or epoch != self._epoch:  # interrupted
                live, epoch = self._new_live(), self._epoch
                while self._audio and self._audio[0][0] != epoch:
                    self._audio.popleft()
                continue
            chunks, flush, received = self._take_audio()
            rendered = run_in_thread(self._render, live, chunks, flush, epoch, received)
            self._deliver(rendered)
            if flush:
                live = self._new_live()

    def _take_audio(self) -> tuple[list[np.ndarray], bool, float]:
        """The queued audio up to and including the first flush (if any)."""
        chunks: list[np.ndarray] = []
        received = 0.0
        while self._audio:
            _, samples, received = self._audio.popleft()
            if samples is None:
                return chunks, True, received
            chunks.append(samples)
            self._pending_samples -= len(samples)
        return chunks, False, received

    def _render(
        self, live: LiveLipSync, chunks: list[np.ndarray], flush: bool, epoch: int, received: float
    ) -> _Rendered:
        """On a native thread: the frames of `chunks` (and the tail when flushing), as JPEG."""
        first = live.num_frames
        frames = [live.push(np.concatenate(chunks))] if chunks else []
        error = None
        if flush:
            try:
                frames.append(live.finish())
            except LipSyncError as exc:  # shorter than one mel window
                error = exc
        params = [cv2.IMWRITE_JPEG_QUALITY, self.start.output.quality]
        jpegs = [cv2.imencode(".jpg", f, params)[1].tobytes() for batch in frames for f in batch]
        return _Rendered(epoch, jpegs, first, received, live.num_frames if flush else None, error)

    def _deliver(self, rendered: _Rendered) -> None:
        if rendered.epoch != self._epoch or self._done:
            return  # interrupted meanwhile: its frames are of dropped speech
        for offset, jpeg in enumerate(rendered.jpegs):
            self._queue_frame(
                rendered.epoch, rendered.first_index + offset, jpeg, rendered.received
            )
        if rendered.epoch != self._epoch or self._done:
            return
        if rendered.error is not None:
            code = rendered.error.code.code
            self._send_json(p.ErrorMessage(code=code, message=str(rendered.error)))
        if rendered.flushed is not None:
            self._send_json(p.Flushed(frames=rendered.flushed))

    # -- writing -----------------------------------------------------------------------

    def _queue_frame(self, epoch: int, index: int, jpeg: bytes, received: float) -> None:
        pts_ms = round(index * 1000 / self._fps)
        message: str | bytes
        if self.start.protocol == "binary":
            message = p.pack_frame(index, pts_ms, jpeg)
        else:
            processing_ms = round((time.perf_counter() - received) * 1000, 1)
            frame = p.Frame(
                index=index,
                pts_ms=pts_ms,
                processing_ms=processing_ms,
                data=base64.b64encode(jpeg).decode("ascii"),
            )
            message = frame.model_dump_json()
        self._wait_for_room()
        if epoch != self._epoch or self._done:
            return  # interrupted while waiting for room
        self._out.append((message, True, received))
        self._out_frames += 1
        self._out_ready.set()

    def _wait_for_room(self) -> None:
        """Wait while the frame queue is full and the reader keeps up; once one send has
        been blocked for DROP_AFTER_S (the reader is behind), drop the oldest frame."""
        while self._out_frames >= self.settings.realtime_send_buffer_frames and not self._done:
            since = self._sending_since
            if since is not None and time.monotonic() - since > DROP_AFTER_S:
                self._drop_oldest_frame()
                return
            self._space.wait(ROOM_POLL_S)
            self._space.clear()

    def _drop_oldest_frame(self) -> None:
        for position, (_, is_frame, _) in enumerate(self._out):
            if is_frame:
                del self._out[position]
                self._out_frames -= 1
                self._dropped_unreported += 1
                self.dropped += 1
                obs.REALTIME_FRAMES_DROPPED.inc()
                return

    def _drop_frames(self) -> int:
        kept = [item for item in self._out if not item[1]]
        dropped = len(self._out) - len(kept)
        self._out.clear()
        self._out.extend(kept)
        self._out_frames = 0
        return dropped

    def _send_json(self, message: pydantic.BaseModel) -> None:
        self._out.append((message.model_dump_json(), False, 0.0))
        self._out_ready.set()

    def _write_loop(self) -> None:
        while not self._done:
            if self._dropped_unreported:
                count, self._dropped_unreported = self._dropped_unreported, 0
                self._send(p.Dropped(count=count, total=self.dropped).model_dump_json())
            if not self._out:
                self._out_ready.wait(TICK_S)
                self._out_ready.clear()
                continue
            message, is_frame, received = self._out.popleft()
            if is_frame:
                self._out_frames -= 1
                self._space.set()
            self._send(message)
            if is_frame:
                self.sent += 1
                obs.REALTIME_FRAMES_SENT.inc()
                obs.REALTIME_FRAME_SECONDS.observe(time.perf_counter() - received)

    def _send(self, message: str | bytes) -> None:
        """Send one whole message. simple-websocket's `send` makes one `socket.send` call,
        which on a gevent socket may write only part of a large frame; this writes it all
        (holding the write lock, so a close frame never lands inside it)."""
        event = Message(data=message) if isinstance(message, bytes) else TextMessage(data=message)
        with self._write_lock:
            if not self.ws.connected:
                raise SessionClosed(p.CLOSE_NORMAL, "")
            self._sending_since = time.monotonic()
            try:
                self.ws.sock.sendall(self.ws.ws.send(event))
            finally:
                self._sending_since = None

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        """Run `loop`; a failure ends the session (1011, or its own close code)."""

        def guarded() -> None:
            try:
                loop()
            except SessionClosed as closed:
                self._closing = self._closing or closed
            except Exception:
                if not self._done:
                    logger.exception("realtime session %s failed", self.session_id)
                    self._closing = self._closing or SessionClosed(p.CLOSE_INTERNAL, "server error")

        return guarded

    def _close(self, closed: SessionClosed | None) -> None:
        closed = closed or SessionClosed(p.CLOSE_NORMAL, "")
        if closed.code == p.CLOSE_POLICY and "read nothing" in closed.reason:
            self._abort()  # a close frame would wait behind the unread data
            return
        with self._write_lock, contextlib.suppress(Exception):  # already closed by the peer
            self.ws.close(reason=closed.code, message=closed.reason)

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self.ws.sock.close()
        self.ws.connected = False
