"""GET /api/stream (the live session's WebSocket upgrade) and GET /api/stream/protocol.json.

Before the upgrade (plain HTTP answers, JSON errors): the API key (the app's
before_request, as for every route), the Origin (a browser page from another host than
this one and not in LIPSYNC_CORS_ORIGINS gets 403: no cross-site WebSocket hijacking;
clients that send no Origin are not browsers), the upgrade's own headers (400, or 426 for
another WebSocket version: sock_transport.py) and capacity (503 + Retry-After: every
session place taken, or too many connections that have not started one: slots.py).
After it, `serve`: the `start` message, then the session (session.py), over the transport
(transport.py) that sock_transport.py adapts; whatever happens there ends in a close
frame, never in an HTTP answer.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from flask import Response, current_app, jsonify, request
from flask_openapi3 import APIBlueprint, OpenAPI

from lipsync.errors import ForbiddenOriginError, InvalidInputError, LipSyncError
from lipsync.faces import PreparedFace
from lipsync.generation import check_sample_rate
from lipsync.options import RenderOptions
from lipsync.server import observability as obs
from lipsync.server.admission import OverloadedError
from lipsync.server.error_mapping import domain_error
from lipsync.server.offload import run_in_thread
from lipsync.server.openapi import errors, operation
from lipsync.server.realtime import protocol as p
from lipsync.server.realtime import sock_transport
from lipsync.server.realtime.batcher import FrameBatcher
from lipsync.server.realtime.inbound import parse_text
from lipsync.server.realtime.outputs import LiveOutput, make_output
from lipsync.server.realtime.protocol_doc import protocol_document
from lipsync.server.realtime.session import (
    PEER_GONE,
    SERVER_ERROR,
    Session,
    SessionClosed,
    SessionFace,
)
from lipsync.server.realtime.slots import LiveSlot, LiveSlots
from lipsync.server.realtime.transport import LiveTransport, TransportClosed
from lipsync.server.service import Service, service
from lipsync.serving.faces import resolve_face
from lipsync.serving.options import render_options
from lipsync.serving.payloads import decode_base64

logger = logging.getLogger(__name__)

LIVE_PATH = "/api/stream"  # the public path keeps its first name
SLOTS = "lipsync.realtime"
BATCHER = "lipsync.realtime.batcher"

realtime = APIBlueprint("realtime", __name__)


def register(app: OpenAPI) -> None:
    """Add the WebSocket route and its protocol document to `app`."""
    settings = app.extensions["lipsync"].settings
    app.extensions[SLOTS] = LiveSlots(
        settings.realtime_max_sessions,
        settings.realtime_max_unstarted,
        settings.realtime_max_unstarted_per_client,
    )
    # Real-time batches are a frame or two per session; a session fed faster than real time
    # brings batch_size at once, and the others' may still join it.
    sessions = max(settings.realtime_max_sessions, 2)
    app.extensions[BATCHER] = FrameBatcher(sessions * settings.batch_size)
    app.register_api(realtime)


def slots() -> LiveSlots:
    return current_app.extensions[SLOTS]


@realtime.get(
    LIVE_PATH + "/protocol.json",
    **operation("stream_protocol", "The /api/stream message formats", "realtime"),
    responses={
        "200": {
            "description": "JSON Schemas of the messages, the binary frame header, the close codes"
        }
    },
)
def protocol_json():
    return jsonify(protocol_document())


@realtime.before_request
def refuse_before_upgrade() -> Response | None:
    if request.path != LIVE_PATH:
        return None
    origin = request.headers.get("Origin")
    if origin and not origin_allowed(origin, request.host, service().settings.allowed_origins):
        obs.REJECTED.labels("forbidden_origin").inc()
        raise ForbiddenOriginError(f"Origin {origin!r} is not allowed to open {LIVE_PATH}")
    try:
        sock_transport.check_upgrade(request.method, request.headers)
    except sock_transport.HandshakeError as exc:
        return handshake_refusal(exc)
    refusal = slots().refusal(client_address())
    if refusal is not None:
        raise OverloadedError(refusal, service().settings.retry_after_s)
    return None


def handshake_refusal(exc: sock_transport.HandshakeError) -> Response:
    response, status = domain_error(exc)
    response.status_code = status
    response.headers.update(exc.headers)
    return response


def client_address() -> str:
    return request.remote_addr or "unknown"


def origin_allowed(origin: str, host: str, allowed: frozenset[str]) -> bool:
    """A page of this server itself (same host), or one LIPSYNC_CORS_ORIGINS allows."""
    return urlsplit(origin).netloc == host or origin in allowed or "*" in allowed


@realtime.get(
    LIVE_PATH,
    **operation("stream", "Real-time lip-sync session (WebSocket upgrade)", "realtime"),
    description="Upgrade to a WebSocket lip-sync session; the messages are described "
    "by GET /api/stream/protocol.json. Refused before the upgrade: a request that is "
    "not a WebSocket upgrade or a malformed one (400), an API key missing or wrong (401; a "
    "browser offers it as the subprotocol `lipsync-key.<key>` next to `lipsync`), a browser "
    "Origin not allowed (403), a WebSocket version other than 13 (426), no session left or "
    "too many connections that have not sent `start` (503 + Retry-After).",
    responses={
        "101": {"description": "Switching protocols: the session begins"},
        **errors(400, 401, 403, 426, 503),
    },
    websocket=True,  # the rule of upgrade requests (werkzeug tells them apart)
)
def live_session():
    svc = service()
    slot = slots().connect(client_address())
    if slot is None:  # another connection took the last place since the check
        raise OverloadedError(slots().refusal(client_address()) or "", svc.settings.retry_after_s)
    try:
        transport = sock_transport.accept(
            request.environ,
            subprotocols=[p.SUBPROTOCOL],  # answered when offered (and the key is right)
            max_message_size=svc.settings.realtime_max_message_bytes,
        )
    except sock_transport.HandshakeError as exc:
        slot.end()
        return handshake_refusal(exc)
    serve(transport, svc, current_app.extensions[BATCHER], slot)
    return sock_transport.upgraded_response(transport)


# A GET that is not an upgrade reaches the checks too, to be told why (400).
realtime.add_url_rule(LIVE_PATH, "live_session_http", live_session, methods=["GET"])


def serve(transport: LiveTransport, svc: Service, batcher: FrameBatcher, slot: LiveSlot) -> None:
    """One live connection from its first message to its close, over any transport; ends
    `slot`. Never raises: a bug is logged and closes 1011, a client that goes just ends it."""
    try:
        session = _start(transport, svc, batcher, slot)
        if session is not None:
            started = time.perf_counter()
            with svc.engine.inference_gate.live_session():  # whole-file work in slices
                session.run()
            logger.info(
                "live session %s: %d frames sent, %d dropped, %.1f s",
                session.session_id,
                session.writer.sent,
                session.writer.dropped,
                time.perf_counter() - started,
            )
    except Exception:
        logger.exception("live session failed")
        transport.close(SERVER_ERROR.code, SERVER_ERROR.reason)
    finally:
        slot.end()


def _start(
    transport: LiveTransport, svc: Service, batcher: FrameBatcher, slot: LiveSlot
) -> Session | None:
    """The session `start` opens, or None once the transport is closed with the reason."""
    closing = SERVER_ERROR
    try:
        return _open(transport, svc, batcher, slot)
    except SessionClosed as closed:
        closing = closed
    except TransportClosed:
        closing = PEER_GONE
    except Exception:
        logger.exception("live session failed to start")
    transport.close(closing.code, closing.reason)
    return None


def _open(ws: LiveTransport, svc: Service, batcher: FrameBatcher, slot: LiveSlot) -> Session:
    """Read and validate `start`, count the session, get the face ready; SessionClosed
    when it cannot be."""
    start_timeout = svc.settings.realtime_start_timeout_s
    message = ws.receive(timeout=start_timeout)
    if message is None:
        raise SessionClosed(p.CLOSE_POLICY, f"no start message within {start_timeout:g} s")
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
    if not slot.start():
        raise SessionClosed(p.CLOSE_TRY_AGAIN, "every live session is taken: retry later")
    try:
        face, output = run_in_thread(_ready, svc, start, batcher)
    except LipSyncError as exc:
        ws.send(p.ErrorMessage(code=exc.code.code, message=str(exc)).model_dump_json())
        raise SessionClosed(p.CLOSE_POLICY, f"{exc.code.code}: {exc}"[:120]) from None
    return Session(ws, start, face, output, settings)


def _ready(svc: Service, start: p.Start, batcher: FrameBatcher) -> tuple[SessionFace, LiveOutput]:
    """The session's face (features encoded once) and output encoder (native thread)."""
    prepared, options = _face(svc, start)
    starter = batcher.starter(svc.engine, prepared, options.model)
    face = SessionFace(svc.engine, prepared, options, start.audio.sample_rate, starter)
    return face, make_output(start, options.fps, prepared, options.blend)


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
