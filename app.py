"""Flask application: /api/generate, /api/avatars, /health (+ live, ready), /metrics, /openapi.json.

`create_app()` builds the app and does no heavy work: the engine (and OpenVINO) is created
per worker process on first use or by `warm_up()` (called by gunicorn after fork).
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import openvino as ov
from flask import Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from face_detection import FaceNotDetectedError
from inference_engine import DETECTOR_NAME, ModelNotFoundError, Wav2LipInferenceEngine
from lipsync import generation
from lipsync.avatars import Avatar, AvatarStore, check_avatar_id
from lipsync.errors import InvalidFieldError, ServiceError
from lipsync.media import video_io
from lipsync.options import GENERATOR_NAMES
from lipsync.server import observability as obs
from lipsync.server import openapi
from lipsync.server.admission import AdmissionController, Deadline, OverloadedError
from lipsync.server.request_fields import face_media, parse_options, read_fields, response_mode
from lipsync.settings import FORMATS, Settings

logger = logging.getLogger(__name__)

REQUIRED_MODELS = (DETECTOR_NAME, "wav2lip")
SETUP_COMMAND = "python convert_to_openvino.py --wav2lip CKPT --s3fd CKPT --output-dir MODELS_DIR"
EXTENSION = "lipsync"
PUBLIC_PATHS = frozenset({"/health/live"})
CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-API-Key, X-Request-ID, Accept"
CORS_EXPOSE_HEADERS = (
    "X-Request-ID, X-Num-Frames, X-Duration, X-Fps, X-Width, X-Height, X-Avatar-Id, X-Mime-Type, "
    "X-Timings-Ms, Retry-After"
)


class Service:
    """Per-process state: settings, admission; engine and avatar store made on first use."""

    def __init__(self, settings: Settings, engine: Wav2LipInferenceEngine | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._store: AvatarStore | None = None
        self._lock = threading.RLock()
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
                s = self.settings
                self._store = AvatarStore(
                    s.avatar_dir,
                    int(s.avatar_cache_mb * 1024 * 1024),
                    decode=lambda data: generation.decode_face(data, s),
                    prepare=lambda frames, options, timings: self.engine.prepare_face(
                        frames, options, timings=timings
                    ),
                )
            return self._store

    @property
    def engine(self) -> Wav2LipInferenceEngine:
        with self._lock:
            if self._engine is None:
                s = self.settings
                self._engine = Wav2LipInferenceEngine(
                    s.models_dir,
                    s.device,
                    s.precision,
                    cache_dir=s.cache_dir,
                    batch_size=s.batch_size,
                )
            return self._engine


def create_app(
    overrides: Mapping[str, Any] | None = None, *, engine: Wav2LipInferenceEngine | None = None
) -> Flask:
    """Application factory. Settings: defaults, then LIPSYNC_* env vars, then `overrides`."""
    settings = Settings.load(overrides)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes  # base64 media in form fields
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False
    app.extensions[EXTENSION] = Service(settings, engine)
    register_error_handlers(app)
    app.before_request(begin_request)
    app.after_request(finish_request)
    routes: list[tuple[str, Callable[..., Any], list[str]]] = [
        ("/", index, ["GET"]),
        ("/health", health, ["GET"]),
        ("/health/live", live, ["GET"]),
        ("/health/ready", ready, ["GET"]),
        ("/metrics", metrics, ["GET"]),
        ("/openapi.json", openapi_spec, ["GET"]),
        ("/api/generate", generate_video, ["POST"]),
        ("/api/avatars", register_avatar, ["POST"]),
        ("/api/avatars", list_avatars, ["GET"]),
        ("/api/avatars/<avatar_id>", get_avatar, ["GET"]),
        ("/api/avatars/<avatar_id>", delete_avatar, ["DELETE"]),
    ]
    for rule, view, methods in routes:
        app.add_url_rule(rule, endpoint=f"{view.__name__}", view_func=view, methods=methods)
    return app


def service() -> Service:
    return current_app.extensions[EXTENSION]


def warm_up(app: Flask) -> None:
    """Create the engine and compile the installed models (gunicorn calls this per worker)."""
    svc: Service = app.extensions[EXTENSION]
    if svc.settings.compile_on_start:
        svc.engine.compile()
        obs.observe_compile(svc.engine.model_status())


# -- request lifecycle: id, access control, CORS, metrics, one log line --------------------


def begin_request() -> Response | None:
    g.request_id = obs.request_id(request.headers.get(obs.REQUEST_ID_HEADER))
    g.started = time.perf_counter()
    settings = service().settings
    if request.method == "OPTIONS" and request.headers.get("Origin"):
        return Response(status=204)  # CORS preflight; headers added in finish_request
    if settings.api_key and request.path not in PUBLIC_PATHS and not authorized(settings.api_key):
        obs.REJECTED.labels("unauthorized").inc()
        raise ServiceError("missing or wrong API key", code="unauthorized", status=401)
    return None


def authorized(api_key: str) -> bool:
    """Constant-time check of `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    offered = token.strip() if scheme.lower() == "bearer" else request.headers.get("X-API-Key", "")
    return hmac.compare_digest(offered.encode(), api_key.encode())


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


# -- error mapping: the one place where exceptions become HTTP answers ---------------------


def error_response(
    status: int, code: str, message: str, field: str | None = None
) -> tuple[Response, int]:
    body: dict[str, Any] = {"success": False, "error": {"code": code, "message": message}}
    if field:
        body["error"]["field"] = field
    g.log_extra = {**g.get("log_extra", {}), "error_code": code}
    return jsonify(body), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service(exc: ServiceError):
        response, status = error_response(exc.status, exc.code, exc.message, exc.field)
        if isinstance(exc, OverloadedError):
            response.headers["Retry-After"] = str(exc.retry_after)
        if status in (499, 503, 504) and exc.code != "model_unavailable":
            obs.REJECTED.labels(exc.code).inc()
        return response, status

    @app.errorhandler(video_io.MediaError)
    def _media(exc: video_io.MediaError):
        return error_response(
            413 if isinstance(exc, video_io.MediaTooLargeError) else 415, exc.code, str(exc)
        )

    @app.errorhandler(FaceNotDetectedError)
    def _no_face(exc: FaceNotDetectedError):
        hint = "; send a clear, frontal face or an explicit box [top, bottom, left, right]"
        return error_response(422, "face_not_detected", f"{exc}{hint}")

    @app.errorhandler(ModelNotFoundError)
    def _no_model(exc: ModelNotFoundError):
        return error_response(503, "model_unavailable", f"{exc}; install it with: {SETUP_COMMAND}")

    @app.errorhandler(ValueError)
    def _invalid(exc: ValueError):  # library code names the bad value
        return error_response(422, "invalid_input", str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = {413: "payload_too_large"}.get(
            exc.code or 500, (exc.name or "error").lower().replace(" ", "_")
        )
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the server log")


# -- health, metrics, spec -----------------------------------------------------------------


def index():
    return jsonify(
        {
            "service": "wav2lip-openvino",
            "endpoints": {
                "POST /api/generate": "lip-sync a face (image, video or avatar_id) to speech",
                "POST /api/avatars": "register a face once; reuse it by avatar_id",
                "GET /api/avatars": "list avatars",
                "GET|DELETE /api/avatars/<avatar_id>": "one avatar",
                "GET /health": "status; /health/live and /health/ready for orchestrators",
                "GET /metrics": "Prometheus metrics",
                "GET /openapi.json": "OpenAPI description of this API",
            },
        }
    )


def health():
    svc = service()
    status = svc.engine.model_status()
    can_generate = all(status[name]["present"] for name in REQUIRED_MODELS)
    body: dict[str, Any] = {
        "status": "ok" if can_generate else "degraded",
        "openvino_version": ov.get_version(),
        "device": svc.engine.device,
        "precision": svc.engine.precision,
        "models": {
            name: {"present": s["present"], "compiled": s["compiled"]} for name, s in status.items()
        },
        "capabilities": {
            "formats": list(FORMATS),
            "models": [name for name in GENERATOR_NAMES if status[name]["present"]],
            "max_audio_seconds": svc.settings.max_audio_seconds,
            "max_body_mb": svc.settings.max_body_mb,
        },
    }
    if not can_generate:
        missing = [name for name in REQUIRED_MODELS if not status[name]["present"]]
        body["error"] = {
            "code": "models_missing",
            "message": f"models not installed in {svc.settings.models_dir}: {', '.join(missing)}",
            "fix": SETUP_COMMAND.replace("MODELS_DIR", str(svc.settings.models_dir)),
        }
    return jsonify(body), 200 if can_generate else 503


def live():
    return jsonify({"status": "alive"})


def ready():
    """Ready when the required models are compiled and the generation queue has room."""
    svc = service()
    status = svc.engine.model_status()
    reasons = [
        f"model {name} not compiled" for name in REQUIRED_MODELS if not status[name]["compiled"]
    ]
    if svc.admission.saturated:
        reasons.append("generation queue is full")
    if reasons:
        return jsonify({"status": "not_ready", "reasons": reasons}), 503
    return jsonify({"status": "ready"})


def metrics():
    payload, content_type = obs.metrics_payload()
    return Response(payload, content_type=content_type)


def openapi_spec():
    return jsonify(openapi.build_spec(service().settings))


# -- avatars and generation ----------------------------------------------------------------


def lookup_avatar(avatar_id: Any) -> Avatar:
    """The stored avatar or a 400 (malformed id) / 404 (unknown id)."""
    avatar = service().store.get(valid_avatar_id(avatar_id))
    if avatar is None:
        raise avatar_not_found(avatar_id)
    return avatar


def avatar_not_found(avatar_id: str) -> ServiceError:
    return ServiceError(f"avatar {avatar_id} not found", code="avatar_not_found", status=404)


def valid_avatar_id(avatar_id: Any) -> str:
    try:
        return check_avatar_id(avatar_id)
    except ValueError as exc:
        raise InvalidFieldError("avatar_id", str(exc), code="invalid_avatar_id") from None


def register_avatar():
    svc = service()
    svc.admission.refuse_if_saturated()
    fields, media = read_fields(request)
    options, _ = parse_options(fields, svc.settings)
    face = face_media(media)
    with svc.admission.slot():  # detection on a video is as costly as a generation
        avatar, created = svc.store.get_or_create(face, options, persist=True)
    g.log_extra = {"avatar_id": avatar.avatar_id}
    return jsonify({**avatar.meta(), "created": created}), 201 if created else 200


def list_avatars():
    return jsonify({"avatars": service().store.list()})


def get_avatar(avatar_id: str):
    return jsonify(lookup_avatar(avatar_id).meta())


def delete_avatar(avatar_id: str):
    if not service().store.delete(valid_avatar_id(avatar_id)):
        raise avatar_not_found(avatar_id)
    return jsonify({"success": True, "avatar_id": avatar_id, "deleted": True})


def generate_video():
    svc = service()
    settings = svc.settings
    svc.admission.refuse_if_saturated()  # before spending time on a body we would refuse
    deadline = Deadline(settings.request_timeout_s, request.environ.get("gunicorn.socket"))
    fields, media = read_fields(request)
    binary, accepted_container = response_mode(fields, request)
    options, fmt = parse_options({"format": accepted_container, **fields}, settings)
    avatar_id = fields.get("avatar_id")
    face = None if avatar_id is not None else face_media(media)
    if "audio" not in media:
        raise InvalidFieldError(
            "audio", "is required (base64 WAV, or a file upload)", code="missing_field"
        )
    speech = generation.decode_speech(media["audio"], settings)
    timings: dict[str, float] = {}
    with svc.admission.slot():
        deadline.check()
        if avatar_id is not None:
            avatar = lookup_avatar(avatar_id)
        else:
            avatar, _ = svc.store.get_or_create(face, options, persist=False, timings=timings)
        if avatar.fps is not None:
            options = dataclasses.replace(options, fps=avatar.fps)
        result = generation.generate(
            svc.engine,
            avatar.prepared,
            speech,
            options,
            video_io.EncodeOptions(container=fmt),
            timings,
            check=deadline.check,
        )
    obs.observe_generation(result.timings_ms, result.video.num_frames)
    meta = {
        "mime_type": result.video.mime_type,
        "num_frames": result.video.num_frames,
        "duration": round(result.video.duration, 3),
        "fps": result.fps,
        "width": result.video.width,
        "height": result.video.height,
        "avatar_id": avatar.avatar_id,
        "timings_ms": result.timings_ms,
    }
    g.log_extra = {
        "avatar_id": avatar.avatar_id,
        "num_frames": meta["num_frames"],
        "timings_ms": result.timings_ms,
    }
    if binary:
        headers = {
            f"X-{key.title().replace('_', '-')}": _header(value) for key, value in meta.items()
        }
        return Response(result.video.data, mimetype=result.video.mime_type, headers=headers)
    return jsonify(
        {"success": True, "video": base64.b64encode(result.video.data).decode("ascii"), **meta}
    )


def _header(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else str(value)
