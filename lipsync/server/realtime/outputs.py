"""What a session sends for its frames: a JPEG message per frame, one live WebM stream, or
patches over base frames the client keeps.

All run on the session's native threads (encoding holds a core) and return the messages
to queue (`Outgoing`): JPEG frames and patches may be dropped for a slow reader, WebM
bytes and base frames never (a gap would break the stream; a patch needs its base). A
speech message carries its presentation time in the utterance, by which it is paced.

Patch: the client gets each frame of the avatar once (an image's right after `ready`, a
video's as the loop first reaches it) and then, per frame, a JPEG of the rectangle that
pasting the mouth may change (`compositing.pasted_region`: the lower face), which it draws
over that base frame; a frame equal to its base there (the silence gate, idle frames) is
a patch without a JPEG.

WebM: one continuous timeline per session. Every frame written carries its 1/fps of audio:
a speech frame the utterance's speech under it (frame i: samples [i / fps, (i + 1) / fps)
of the utterance, the flushed tail padded with silence), an idle frame silence. Utterances
follow each other on the timeline without gaps; `interrupt` drops what was not encoded
yet (the audio of unmade frames too) and the next utterance or idle frame continues the
timeline; without idle mode the media time only advances while speech frames are made
(a player waits at the end of its buffer meanwhile).
"""

from __future__ import annotations

import base64
import time
from typing import NamedTuple

import cv2
import numpy as np

from lipsync.compositing import pasted_region
from lipsync.faces import PreparedFace
from lipsync.media.encode import VideoEncoder
from lipsync.media.encode_options import EncodeOptions
from lipsync.server.realtime import protocol as p


class Outgoing(NamedTuple):
    message: str | bytes
    droppable: bool
    pts_s: float | None = None  # a speech frame's presentation time in its utterance
    counted: bool = True  # a frame (sent, bounded, measured), not a base frame


def jpeg(image: np.ndarray, params: list[int]) -> bytes:
    return cv2.imencode(".jpg", image, params)[1].tobytes()


class _PerFrame:
    """A JPEG message (or patch) per frame: no sound, no stream to finish."""

    def __init__(self, start: p.Start, fps: float) -> None:
        self._params = [cv2.IMWRITE_JPEG_QUALITY, start.output.jpeg_quality]
        self._binary = start.protocol == "binary"
        self._fps = fps
        self.mime_type: str | None = None

    def opening(self) -> list[Outgoing]:
        """What follows `ready` before any frame (nothing)."""
        return []

    def audio(self, samples: np.ndarray) -> None:
        """Speech of the current utterance (unused: frames carry no sound)."""

    def utterance_end(self) -> None:
        """The utterance ended (flush, interrupt)."""

    def finish(self) -> list[Outgoing]:
        """The end of the session's output (nothing: every frame went already)."""
        return []

    def close(self) -> None:
        pass

    def speech(
        self, frames: np.ndarray, first_index: int, received: float, sources: np.ndarray
    ) -> list[Outgoing]:
        """Messages of speech frames `first_index`... of the utterance, (k, H, W, 3) uint8,
        each paced by its pts; `sources`: (k,) the avatar frame each shows."""
        out = []
        for index, (frame, source) in enumerate(zip(frames, sources, strict=True), first_index):
            out += self._before(int(source))
            pts_ms = round(index * 1000 / self._fps)
            message = self._speech_message(frame, int(source), index, pts_ms, received)
            out.append(Outgoing(message, True, index / self._fps))
        return out

    def _before(self, source: int) -> list[Outgoing]:
        """What must reach the client before a frame showing avatar frame `source`."""
        return []

    def _speech_message(
        self, frame: np.ndarray, source: int, index: int, pts_ms: int, received: float
    ) -> str | bytes:
        raise NotImplementedError


class JpegOutput(_PerFrame):
    """A message per frame: binary (header type 1 speech, 2 idle) or a JSON `frame`."""

    def __init__(self, start: p.Start, fps: float) -> None:
        super().__init__(start, fps)
        self._idle_jpegs: dict[int, bytes] = {}  # avatar frame -> its JPEG (made once)

    def _speech_message(
        self, frame: np.ndarray, source: int, index: int, pts_ms: int, received: float
    ) -> str | bytes:
        return self._message(jpeg(frame, self._params), index, pts_ms, received, idle=False)

    def idle(self, frame: np.ndarray, source: int, index: int, pts_ms: int) -> list[Outgoing]:
        data = self._idle_jpegs.get(source)
        if data is None:
            data = self._idle_jpegs[source] = jpeg(frame, self._params)
        return [Outgoing(self._message(data, index, pts_ms, time.perf_counter(), idle=True), True)]

    def _message(
        self, data: bytes, index: int, pts_ms: int, received: float, *, idle: bool
    ) -> str | bytes:
        if self._binary:
            kind = p.FRAME_TYPE_IDLE_JPEG if idle else p.FRAME_TYPE_JPEG
            return p.pack_frame(index, pts_ms, data, kind)
        frame = p.Frame(
            index=index,
            pts_ms=pts_ms,
            processing_ms=processing_ms(received),
            data=base64.b64encode(data).decode("ascii"),
            idle=idle,
        )
        return frame.model_dump_json()


def processing_ms(received: float) -> float:
    return round((time.perf_counter() - received) * 1000, 1)


class WebmOutput:
    """One live WebM (VP9 + Opus) per session; each frame written with its audio."""

    def __init__(self, start: p.Start, fps: float, width: int, height: int) -> None:
        self._binary = start.protocol == "binary"
        self._rate = start.audio.sample_rate
        self._fps = fps
        self._encoder = VideoEncoder(
            width=width,
            height=height,
            fps=fps,
            sample_rate=self._rate,
            options=EncodeOptions(container="webm"),
            live=True,
            audio_follows=True,
        )
        self.mime_type = f'{self._encoder.options.mime_type}; codecs="{self._encoder.codecs}"'
        self._speech = np.zeros(0, np.float32)  # the utterance's audio from frame _frame on
        self._frame = 0  # the utterance's next frame
        self._header = self._encoder.drain()  # goes out with the first frames

    def opening(self) -> list[Outgoing]:
        """What follows `ready` before any frame (nothing: the header goes with them)."""
        return []

    def audio(self, samples: np.ndarray) -> None:
        self._speech = np.concatenate([self._speech, samples])

    def utterance_end(self) -> None:
        self._speech = np.zeros(0, np.float32)
        self._frame = 0

    def speech(
        self, frames: np.ndarray, first_index: int, received: float, sources: np.ndarray
    ) -> list[Outgoing]:
        """The stream's bytes these frames complete, paced as the first of them."""
        for frame in frames:
            stop = round((self._frame + 1) * self._rate / self._fps)
            start = round(self._frame * self._rate / self._fps)
            chunk = self._speech[: stop - start]
            self._speech = self._speech[stop - start :]
            self._frame += 1
            self._encoder.write(frame, np.pad(chunk, (0, stop - start - len(chunk))))
        return self._chunk(first_index / self._fps)

    def idle(self, frame: np.ndarray, source: int, index: int, pts_ms: int) -> list[Outgoing]:
        self._encoder.write(frame, np.zeros(round(self._rate / self._fps), np.float32))
        return self._chunk()

    def _chunk(self, pts_s: float | None = None) -> list[Outgoing]:
        data = self._header + self._encoder.drain()
        self._header = b""
        if not data:
            return []
        frames = self._encoder.num_frames
        pts_ms = round(frames * 1000 / self._fps)
        if self._binary:
            return [Outgoing(p.pack_frame(frames, pts_ms, data, p.FRAME_TYPE_WEBM), False, pts_s)]
        chunk = p.WebmChunk(frames=frames, pts_ms=pts_ms, data=base64.b64encode(data).decode())
        return [Outgoing(chunk.model_dump_json(), False, pts_s)]

    def finish(self) -> list[Outgoing]:
        """Finish the stream: its tail (the frames the muxer still held); nothing when no
        frame was made (`end` before any)."""
        if not self._encoder.num_frames:
            return []
        self._encoder.finish()
        return self._chunk()

    def close(self) -> None:
        self._encoder.close()


class PatchOutput(_PerFrame):
    """Base frames once, then a patch per frame: binary types 4, 5 and 6, or JSON `base`
    and `patch`."""

    def __init__(self, start: p.Start, fps: float, prepared: PreparedFace, blend: str) -> None:
        super().__init__(start, fps)
        self._bases = prepared.frames
        self._regions = [pasted_region(box, blend) for box in prepared.boxes]
        self._sent: set[int] = set()  # base frames the client has

    def opening(self) -> list[Outgoing]:
        """An image's one frame, right after `ready`."""
        return self._base(0) if len(self._bases) == 1 else []

    def _before(self, source: int) -> list[Outgoing]:
        """Its base frame, the first time one is shown."""
        return self._base(source)

    def _speech_message(
        self, frame: np.ndarray, source: int, index: int, pts_ms: int, received: float
    ) -> str | bytes:
        return self._patch(frame, source, index, pts_ms, received, idle=False)

    def idle(self, frame: np.ndarray, source: int, index: int, pts_ms: int) -> list[Outgoing]:
        patch = self._patch(frame, source, index, pts_ms, time.perf_counter(), idle=True)
        return [*self._base(source), Outgoing(patch, True)]

    def _base(self, source: int) -> list[Outgoing]:
        if source in self._sent:
            return []
        self._sent.add(source)
        data = jpeg(self._bases[source], self._params)
        if self._binary:
            return [Outgoing(p.pack_frame(source, 0, data, p.FRAME_TYPE_BASE), False, None, False)]
        base = p.Base(index=source, data=base64.b64encode(data).decode("ascii"))
        return [Outgoing(base.model_dump_json(), False, None, False)]

    def _patch(
        self,
        frame: np.ndarray,
        source: int,
        index: int,
        pts_ms: int,
        received: float,
        *,
        idle: bool,
    ) -> str | bytes:
        """The region of `frame` that may differ from its base, as a JPEG (none if equal)."""
        top, bottom, left, right = self._regions[source]
        region = frame[top:bottom, left:right]
        rect, data = (left, top, 0, 0), b""
        if not np.array_equal(region, self._bases[source][top:bottom, left:right]):
            rect, data = (left, top, right - left, bottom - top), jpeg(region, self._params)
        if self._binary:
            kind = p.FRAME_TYPE_IDLE_PATCH if idle else p.FRAME_TYPE_PATCH
            return p.pack_frame(index, pts_ms, p.pack_patch(source, rect, data), kind)
        patch = p.Patch(
            index=index,
            pts_ms=pts_ms,
            processing_ms=processing_ms(received),
            base=source,
            x=rect[0],
            y=rect[1],
            width=rect[2],
            height=rect[3],
            data=base64.b64encode(data).decode("ascii"),
            idle=idle,
        )
        return patch.model_dump_json()


LiveOutput = JpegOutput | WebmOutput | PatchOutput


def make_output(start: p.Start, fps: float, prepared: PreparedFace, blend: str) -> LiveOutput:
    if start.output.format == "webm":
        height, width = prepared.frames.shape[1:3]
        return WebmOutput(start, fps, width, height)
    if start.output.format == "patch":
        return PatchOutput(start, fps, prepared, blend)
    return JpegOutput(start, fps)
