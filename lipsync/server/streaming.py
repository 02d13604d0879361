"""Streamed replies of `POST /api/generate` with `"stream": true`: the video is sent while
it is generated.

Everything a client can get wrong is checked before the first byte (fields, decoding, the
face, limits, admission) and answered as usual with a JSON error. Then the answer is 200
with the metadata known at the start in headers, and a body of live WebM or fragmented MP4
chunks, one per frame batch, produced on a native thread (`offload.ThreadedStream`: a
bounded buffer, so a slow reader holds at most `stream_buffer_chunks` chunks, and a reader
that takes nothing for `stream_reader_timeout_s` gets its generation stopped and its slot
freed). A failure after the first byte cannot become a JSON error: the body raises, so the
server closes the connection without the chunked terminator, and the client sees a
truncated transfer (and fewer frames than `X-Num-Frames`). It is logged with the request id
and counted in `lipsync_streams_total{outcome="failed"}`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Iterator

from flask import Response, g

from lipsync.generation import GenerationStream
from lipsync.server import observability as obs
from lipsync.server.admission import Deadline
from lipsync.server.offload import ThreadedStream, run_in_thread
from lipsync.server.responses import meta_headers
from lipsync.server.service import Service
from lipsync.serving.faces import Face
from lipsync.serving.producing import video_meta

logger = logging.getLogger(__name__)

# Caching and proxy headers of a streamed reply (no Content-Length: chunked).
UNBUFFERED_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
# Outcomes counted in lipsync_streams_total.
COMPLETED, CLIENT_GONE, FAILED = "completed", "client_gone", "failed"

OpenStream = Callable[[], tuple[Face, GenerationStream]]


def streamed_reply(svc: Service, open_stream: OpenStream, deadline: Deadline) -> Response:
    """Take a generation slot, prepare the avatar, open the stream and wait for its first
    chunk: every error up to there is a JSON answer as usual. Then answer with the video as
    it is made. The slot is held by the generation and freed when it stops, however it
    stops (completed, failed, client gone, reader too slow, body never sent)."""
    slot = contextlib.ExitStack()
    slot.enter_context(svc.admission.slot())
    try:
        deadline.check()
        face, stream = run_in_thread(open_stream, watch=deadline)
    except BaseException:
        slot.close()
        raise
    slot.callback(stream.close)  # also when the body is never iterated
    chunks = ThreadedStream(
        lambda: stream,
        max_buffered=svc.settings.stream_buffer_chunks,
        reader_timeout_s=svc.settings.stream_reader_timeout_s,
        on_finish=slot.close,
    )
    rest = iter(chunks)
    try:
        first = next(rest)  # the header and the first frames, or the error before any byte
    except BaseException:
        rest.close()
        raise
    avatar_id = face.avatar.avatar_id
    body = StreamBody(first, rest, chunks, stream, g.get("request_id", ""), avatar_id)
    headers = {
        "X-Codecs": stream.codecs,
        **meta_headers(video_meta(stream, avatar_id)),
        **UNBUFFERED_HEADERS,
    }
    return Response(body, mimetype=stream.mime_type, headers=headers, direct_passthrough=True)


class StreamBody:
    """The response body: the first chunk, then the rest as they come. `close()` (the server
    calls it when the client has gone, or whenever it is done) always stops the generation.
    At the end, one log line and the outcome counted."""

    def __init__(
        self,
        first: bytes,
        rest: Generator[bytes, None, None],
        chunks: ThreadedStream[bytes],
        stream: GenerationStream,
        request_id: str,
        avatar_id: str,
    ) -> None:
        self._first, self._rest, self._chunks = first, rest, chunks
        self._stream, self._request_id, self._avatar_id = stream, request_id, avatar_id
        self._sent = 0
        self._outcome: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            self._sent += len(self._first)
            yield self._first
            for chunk in self._rest:
                self._sent += len(chunk)
                yield chunk
        except Exception:
            logger.exception("stream of request %s failed after the first byte", self._request_id)
            self._end(FAILED)
            raise  # never end normally: the truncated transfer is how the client learns of it
        self._end(COMPLETED)

    def close(self) -> None:
        self._rest.close()
        self._chunks.close()
        self._end(CLIENT_GONE)  # nothing when the stream already ended

    def _end(self, outcome: str) -> None:
        if self._outcome is None:
            self._outcome = outcome
            _finished(outcome, self._stream, self._request_id, self._avatar_id, self._sent)


def _finished(
    outcome: str, stream: GenerationStream, request_id: str, avatar_id: str, sent: int
) -> None:
    obs.STREAMS.labels(outcome).inc()
    record: dict = {
        "request_id": request_id,
        "event": "stream_end",
        "outcome": outcome,
        "avatar_id": avatar_id,
        "num_frames": stream.num_frames,
        "response_bytes": sent,
    }
    if stream.result is not None:
        obs.observe_generation(stream.result.timings_ms, stream.num_frames)
        record["timings_ms"] = stream.result.timings_ms
    obs.log_request(record)
