"""Per-process state of the service and the request lifecycle around every route.

`Service` holds the settings and admission control; the engine and the avatar store are
made on first use. The lifecycle hooks give each request its id, check the API key,
answer CORS preflights, count metrics and write one access-log line.
"""

from __future__ import annotations

import hmac
import time

from flask import Response, current_app, g, request

from lipsync.avatars import AvatarStore
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.errors import ErrorCode, UnauthorizedError
from lipsync.server import observability as obs
from lipsync.server.admission import AdmissionController
from lipsync.server.realtime.protocol import KEY_SUBPROTOCOL_PREFIX
from lipsync.server.responses import VIDEO_HEADER_NAMES
from lipsync.serving.engine import build_engine, build_store
from lipsync.settings import Settings
from lipsync.util import native_rlock

EXTENSION = "lipsync"
PUBLIC_PATHS = frozenset({"/health/live", "/web/"})
PUBLIC_PREFIX = "/web/static/"  # the page's files: nothing secret (its API calls need the key)
CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-API-Key, X-Request-ID, Accept"
CORS_EXPOSE_HEADERS = ", ".join([obs.REQUEST_ID_HEADER, *VIDEO_HEADER_NAMES, "Retry-After"])


class Service:
    """Per-process state: settings, admission; engine and avatar store made on first use."""

    def __init__(self, settings: Settings, engine: Wav2LipInferenceEngine | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._store: AvatarStore | None = None
        self._lock = native_rlock()  # also taken on the native threads that generate
        self.admission = AdmissionController(
            settings.max_concurrent,
            settings.max_queue,
            settings.max_queue_wait_s,
            settings.retry_after_s,
            on_change=obs.observe_admission,
        )

    @property
    def store(self) -> AvatarStore:
        with self._lock:
            if self._store is None:
                self._store = build_store(
                    self.settings, lambda: self.engine, observe=obs.observe_avatar_temporaries
                )
            return self._store

    @property
    def engine(self) -> Wav2LipInferenceEngine:
        with self._lock:
            if self._engine is None:
                self._engine = build_engine(self.settings)
            return self._engine


def service() -> Service:
    """The current app's Service."""
    return current_app.extensions[EXTENSION]


def begin_request() -> Response | None:
    g.request_id = obs.request_id(request.headers.get(obs.REQUEST_ID_HEADER))
    g.started = time.perf_counter()
    settings = service().settings
    if request.method == "OPTIONS" and request.headers.get("Origin"):
        return Response(status=204)  # CORS preflight; headers added in finish_request
    public = request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIX)
    if settings.api_key and not public and not authorized(settings.api_key):
        obs.REJECTED.labels(ErrorCode.UNAUTHORIZED.code).inc()
        raise UnauthorizedError("missing or wrong API key")
    return None


def authorized(api_key: str) -> bool:
    """Constant-time check of `Authorization: Bearer <key>` or `X-API-Key: <key>`, or on a
    WebSocket upgrade (browsers cannot set its headers) the subprotocol
    `lipsync-key.<key>` offered in `Sec-WebSocket-Protocol`."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    offered = token.strip() if scheme.lower() == "bearer" else request.headers.get("X-API-Key", "")
    if not offered:
        offered = subprotocol_key(request.headers.get("Sec-WebSocket-Protocol", ""))
    return hmac.compare_digest(offered.encode(), api_key.encode())


def subprotocol_key(header: str) -> str:
    """The key of a `lipsync-key.<key>` subprotocol in a Sec-WebSocket-Protocol list, or ""."""
    for protocol in header.split(","):
        name = protocol.strip()
        if name.startswith(KEY_SUBPROTOCOL_PREFIX):
            return name[len(KEY_SUBPROTOCOL_PREFIX) :]
    return ""


def finish_request(response: Response) -> Response:
    response.headers[obs.REQUEST_ID_HEADER] = g.get("request_id", "")
    add_cors_headers(response)
    route = request.url_rule.rule if request.url_rule else "unmatched"
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    obs.REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    obs.REQUEST_SECONDS.labels(route).observe(elapsed)
    record = {
        "request_id": g.get("request_id"),
        "method": request.method,
        "route": route,
        "path": request.path,
        "status": response.status_code,
        "duration_ms": round(elapsed * 1000, 1),
        "request_bytes": request.content_length or 0,
        "response_bytes": response.calculate_content_length() or 0,
        "remote": request.remote_addr,
    }
    record.update(g.get("log_extra", {}))
    obs.log_request(record)
    return response


def add_cors_headers(response: Response) -> None:
    origin = request.headers.get("Origin")
    allowed = service().settings.allowed_origins
    if not origin or not (origin in allowed or "*" in allowed):
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
