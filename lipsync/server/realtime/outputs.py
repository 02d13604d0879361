"""What a session sends for its frames: a JPEG message per frame, or one live WebM stream.

Both run on the session's native threads (encoding holds a core) and return the messages
to queue, `(message, droppable)`: JPEG frames may be dropped for a slow reader, WebM bytes
never (a gap would break the stream).

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

import cv2
import numpy as np

from lipsync.media.encode import VideoEncoder
from lipsync.media.encode_options import EncodeOptions
from lipsync.server.realtime import protocol as p

Outgoing = tuple[str | bytes, bool]


class JpegOutput:
    """A message per frame: binary (header type 1 speech, 2 idle) or a JSON `frame`."""

    def __init__(self, start: p.Start, fps: float) -> None:
        self._params = [cv2.IMWRITE_JPEG_QUALITY, start.output.jpeg_quality]
        self._binary = start.protocol == "binary"
        self._fps = fps
        self._idle_jpegs: dict[int, bytes] = {}  # avatar frame -> its JPEG (made once)
        self.mime_type: str | None = None

    def audio(self, samples: np.ndarray) -> None:
        """Speech of the current utterance (unused: JPEG frames carry no sound)."""

    def utterance_end(self) -> None:
        """The utterance ended (flush, interrupt)."""

    def speech(self, frames: np.ndarray, first_index: int, received: float) -> list[Outgoing]:
        jpegs = [cv2.imencode(".jpg", frame, self._params)[1].tobytes() for frame in frames]
        return [
            self._message(
                jpeg,
                first_index + k,
                round((first_index + k) * 1000 / self._fps),
                received,
                idle=False,
            )
            for k, jpeg in enumerate(jpegs)
        ]

    def idle(self, frame: np.ndarray, source: int, index: int, pts_ms: int) -> list[Outgoing]:
        jpeg = self._idle_jpegs.get(source)
        if jpeg is None:
            jpeg = self._idle_jpegs[source] = cv2.imencode(".jpg", frame, self._params)[1].tobytes()
        return [self._message(jpeg, index, pts_ms, time.perf_counter(), idle=True)]

    def _message(
        self, jpeg: bytes, index: int, pts_ms: int, received: float, *, idle: bool
    ) -> Outgoing:
        if self._binary:
            kind = p.FRAME_TYPE_IDLE_JPEG if idle else p.FRAME_TYPE_JPEG
            return p.pack_frame(index, pts_ms, jpeg, kind), True
        frame = p.Frame(
            index=index,
            pts_ms=pts_ms,
            processing_ms=round((time.perf_counter() - received) * 1000, 1),
            data=base64.b64encode(jpeg).decode("ascii"),
            idle=idle,
        )
        return frame.model_dump_json(), True

    def finish(self) -> list[Outgoing]:
        """The end of the session's output (nothing: every frame went already)."""
        return []

    def close(self) -> None:
        pass


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

    def audio(self, samples: np.ndarray) -> None:
        self._speech = np.concatenate([self._speech, samples])

    def utterance_end(self) -> None:
        self._speech = np.zeros(0, np.float32)
        self._frame = 0

    def speech(self, frames: np.ndarray, first_index: int, received: float) -> list[Outgoing]:
        for frame in frames:
            stop = round((self._frame + 1) * self._rate / self._fps)
            start = round(self._frame * self._rate / self._fps)
            chunk = self._speech[: stop - start]
            self._speech = self._speech[stop - start :]
            self._frame += 1
            self._encoder.write(frame, np.pad(chunk, (0, stop - start - len(chunk))))
        return self._chunk()

    def idle(self, frame: np.ndarray, source: int, index: int, pts_ms: int) -> list[Outgoing]:
        self._encoder.write(frame, np.zeros(round(self._rate / self._fps), np.float32))
        return self._chunk()

    def _chunk(self) -> list[Outgoing]:
        data = self._header + self._encoder.drain()
        self._header = b""
        if not data:
            return []
        frames = self._encoder.num_frames
        pts_ms = round(frames * 1000 / self._fps)
        if self._binary:
            return [(p.pack_frame(frames, pts_ms, data, p.FRAME_TYPE_WEBM), False)]
        chunk = p.WebmChunk(frames=frames, pts_ms=pts_ms, data=base64.b64encode(data).decode())
        return [(chunk.model_dump_json(), False)]

    def finish(self) -> list[Outgoing]:
        """Finish the stream: its tail (the frames the muxer still held); nothing when no
        frame was made (`end` before any)."""
        if not self._encoder.num_frames:
            return []
        self._encoder.finish()
        return self._chunk()

    def close(self) -> None:
        self._encoder.close()


def make_output(start: p.Start, fps: float, width: int, height: int) -> JpegOutput | WebmOutput:
    if start.output.format == "webm":
        return WebmOutput(start, fps, width, height)
    return JpegOutput(start, fps)
