"""GET /api/stream (WebSocket upgrade) and GET /api/stream/protocol.json.

Before the upgrade (plain HTTP answers, JSON errors): the API key (the app's
before_request, as for every route), the Origin (a browser page from another host than
this one and not in LIPSYNC_CORS_ORIGINS gets 403: no cross-site WebSocket hijacking;
clients that send no Origin are not browsers) and capacity (503 + Retry-After). After
it: the `start` message, then the session (lipsync/server/realtime/session.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, jsonify, request
from flask_openapi3 import APIBlueprint, OpenAPI
from flask_sock import Sock

from lipsync.errors import ForbiddenOriginError, InvalidInputError, LipSyncError
from lipsync.faces import PreparedFace
from lipsync.generation import check_sample_rate
from lipsync.options import RenderOptions
from lipsync.server import observability as obs
from lipsync.server.admission import OverloadedError
from lipsync.server.offload import run_in_thread
from lipsync.server.openapi import errors, operation
from lipsync.server.realtime import protocol as p
from lipsync.server.realtime.batcher import FrameBatcher
from lipsync.server.realtime.outputs import JpegOutput, WebmOutput, make_output
from lipsync.server.realtime.session import Session, SessionClosed, SessionFace, parse_text
from lipsync.server.service import Service, service
from lipsync.serving.faces import resolve_face
from lipsync.serving.options import render_options
from lipsync.serving.payloads import decode_base64

logger = logging.getLogger(__name__)

STREAM_PATH = "/api/stream"
EXTENSION = "lipsync.realtime"
BATCHER = "lipsync.realtime.batcher"
# How long a new connection may take to send its `start` message.
START_TIMEOUT_S = 10.0

realtime = APIBlueprint("realtime", __name__)
sock = Sock()


class _Documented:
    """What flask-sock registers its route on: `realtime.get`, so the upgrade is in the
    OpenAPI document like every other route."""

    def route(self, path: str, **options: Any) -> Callable:
        return realtime.get(
            path,
            **operation("stream", "Real-time lip-sync session (WebSocket upgrade)", "realtime"),
            description="Upgrade to a WebSocket lip-sync session; the messages are described "
            "by GET /api/stream/protocol.json. Refused before the upgrade: a request that is "
            "not a WebSocket upgrade (400), an API key missing or wrong (401; a browser offers "
            "it as the subprotocol `lipsync-key.<key>` next to `lipsync`), a browser "
            "Origin not allowed (403), no session left (503 + Retry-After).",
            responses={
                "101": {"description": "Switching protocols: the session begins"},
                **errors(400, 401, 403, 503),
            },
            **options,
        )


class SessionCount:
    """Open sessions of this worker, at most `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    def full(self) -> bool:
        return self.open >= self.limit

    def enter(self) -> bool:
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
        obs.REALTIME_SESSIONS.inc()
        return True

    def leave(self) -> None:
        with self._lock:
            self.open -= 1
        obs.REALTIME_SESSIONS.dec()


def register(app: OpenAPI) -> None:
    """Add the WebSocket route and its protocol document to `app`."""
    settings = app.extensions["lipsync"].settings
    app.extensions[EXTENSION] = SessionCount(settings.realtime_max_sessions)
    # Real-time batches are a frame or two per session; a session fed faster than real time
    # brings batch_size at once, and the others' may still join it.
    sessions = max(settings.realtime_max_sessions, 2)
    app.extensions[BATCHER] = FrameBatcher(sessions * settings.batch_size)
    app.config["SOCK_SERVER_OPTIONS"] = {
        "max_message_size": settings.realtime_max_message_bytes,
        "subprotocols": [p.SUBPROTOCOL],  # answered when offered (and the key is right)
    }
    app.register_api(realtime)


def sessions() -> SessionCount:
    return current_app.extensions[EXTENSION]


@realtime.get(
    STREAM_PATH + "/protocol.json",
    **operation("stream_protocol", "The /api/stream message formats", "realtime"),
    responses={
        "200": {
            "description": "JSON Schemas of the messages, the binary frame header, the close codes"
        }
    },
)
def protocol_json():
    return jsonify(p.protocol_document())


@realtime.before_request
def refuse_before_upgrade() -> None:
    if request.path != STREAM_PATH:
        return
    origin = request.headers.get("Origin")
    if origin and not origin_allowed(origin, request.host, service().settings.allowed_origins):
        obs.REJECTED.labels("forbidden_origin").inc()
        raise ForbiddenOriginError(f"Origin {origin!r} is not allowed to open {STREAM_PATH}")
    count = sessions()
    if count.full():
        raise OverloadedError(
            f"{count.open} real-time sessions open (limit {count.limit})",
            service().settings.retry_after_s,
        )


def origin_allowed(origin: str, host: str, allowed: frozenset[str]) -> bool:
    """A page of this server itself (same host), or one LIPSYNC_CORS_ORIGINS allows."""
    return urlsplit(origin).netloc == host or origin in allowed or "*" in allowed


@sock.route(STREAM_PATH, bp=_Documented())
def stream(ws) -> None:
    count = sessions()
    if not count.enter():  # another upgrade took the last place meanwhile
        ws.close(reason=p.CLOSE_TRY_AGAIN, message="over capacity, retry later")
        return
    try:
        _serve(ws, service())
    finally:
        count.leave()


def _serve(ws, svc: Service) -> None:
    try:
        session = _open(ws, svc)
    except SessionClosed as closed:
        ws.close(reason=closed.code, message=closed.reason)
        return
    started = time.perf_counter()
    session.run()
    logger.info(
        "realtime session %s: %d frames sent, %d dropped, %.1f s",
        session.session_id,
        session.writer.sent,
        session.writer.dropped,
        time.perf_counter() - started,
    )


def _open(ws, svc: Service) -> Session:
    """Read and validate `start`, get the face ready; SessionClosed when it cannot be."""
    message = ws.receive(timeout=START_TIMEOUT_S)
    if message is None:
        raise SessionClosed(p.CLOSE_POLICY, f"no start message within {START_TIMEOUT_S:g} s")
    if isinstance(message, bytes):
        raise SessionClosed(p.CLOSE_UNSUPPORTED_DATA, "the first message must be a JSON start")
    start = parse_text(message)
    if not isinstance(start, p.Start):
        raise SessionClosed(p.CLOSE_UNSUPPORTED_DATA, "the first message must be a JSON start")
    settings = svc.settings
    try:
        check_sample_rate(start.audio.sample_rate, settings, field="audio.sample_rate")
    except LipSyncError as exc:
        raise SessionClosed(p.CLOSE_INVALID_PAYLOAD, exc.message[:120]) from None
    batcher: FrameBatcher = current_app.extensions[BATCHER]
    try:
        face, output = run_in_thread(_ready, svc, start, batcher)
    except LipSyncError as exc:
        ws.send(p.ErrorMessage(code=exc.code.code, message=str(exc)).model_dump_json())
        raise SessionClosed(p.CLOSE_POLICY, f"{exc.code.code}: {exc}"[:120]) from None
    return Session(ws, start, face, output, settings)


def _ready(
    svc: Service, start: p.Start, batcher: FrameBatcher
) -> tuple[SessionFace, JpegOutput | WebmOutput]:
    """The session's face (features encoded once) and output encoder (native thread)."""
    prepared, options = _face(svc, start)
    starter = batcher.starter(svc.engine, prepared, options.model)
    face = SessionFace(svc.engine, prepared, options, start.audio.sample_rate, starter)
    height, width = prepared.frames.shape[1:3]
    return face, make_output(start, options.fps, width, height)


def _face(svc: Service, start: p.Start) -> tuple[PreparedFace, RenderOptions]:
    """(prepared face, render options) of the start's avatar or image (native thread)."""
    given = {"box", "fps", "model", "silence_gate", "silence_threshold_db"}
    options = render_options(svc.settings, **start.model_dump(include=given))
    image = None
    if start.image is not None:
        try:
            image = decode_base64(start.image)
        except InvalidInputError as exc:
            raise SessionClosed(p.CLOSE_INVALID_PAYLOAD, f"image: {exc.message}") from None
    face = resolve_face(svc.store, options, avatar_id=start.avatar_id, face=image)
    return face.avatar.prepared, face.options
