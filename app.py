"""Flask application: POST /api/generate, GET /health.

`create_app()` builds the app and does no heavy work: the engine (and OpenVINO) is created
per worker process on first use or by `warm_up()` (called by gunicorn after fork).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import threading
from collections.abc import Mapping
from typing import Any

import openvino as ov
from flask import Flask, Request, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

import generation
import video_io
from avatars import Avatar, AvatarStore, check_avatar_id
from config import FORMATS, Settings
from errors import InvalidFieldError, ServiceError
from face_detection import FaceNotDetectedError
from inference_engine import (
    DETECTOR_NAME,
    ModelNotFoundError,
    RenderOptions,
    Wav2LipInferenceEngine,
)
from wav2lip_model import GENERATOR_NAMES

logger = logging.getLogger(__name__)

REQUIRED_MODELS = (DETECTOR_NAME, "wav2lip")
SETUP_COMMAND = "python convert_to_openvino.py --wav2lip CKPT --s3fd CKPT --output-dir MODELS_DIR"
EXTENSION = "lipsync"
VIDEO_MIME_TYPES = {"video/webm": "webm", "video/mp4": "mp4"}


class EngineHolder:
    """The per-process engine, created once on first use."""

    def __init__(self, settings: Settings, engine: Wav2LipInferenceEngine | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._store: AvatarStore | None = None
        self._lock = threading.RLock()

    @property
    def created(self) -> bool:
        return self._engine is not None

    @property
    def store(self) -> AvatarStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    s = self.settings
                    self._store = AvatarStore(
                        s.avatar_dir,
                        int(s.avatar_cache_mb * 1024 * 1024),
                        decode=lambda data: generation.decode_face(data, s),
                        prepare=lambda frames, options, timings: self.get().prepare_face(
                            frames, options, timings=timings
                        ),
                    )
        return self._store

    def get(self) -> Wav2LipInferenceEngine:
        if self._engine is None:
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
    app.json.sort_keys = False
    app.extensions[EXTENSION] = EngineHolder(settings, engine)
    register_error_handlers(app)
    app.add_url_rule("/", view_func=index)
    app.add_url_rule("/health", view_func=health)
    app.add_url_rule("/api/generate", view_func=generate_video, methods=["POST"])
    app.add_url_rule("/api/avatars", view_func=register_avatar, methods=["POST"])
    app.add_url_rule("/api/avatars", view_func=list_avatars, methods=["GET"])
    app.add_url_rule("/api/avatars/<avatar_id>", view_func=get_avatar, methods=["GET"])
    app.add_url_rule("/api/avatars/<avatar_id>", view_func=delete_avatar, methods=["DELETE"])
    return app


def holder() -> EngineHolder:
    return current_app.extensions[EXTENSION]


def warm_up(app: Flask) -> None:
    """Create the engine and compile the installed models (gunicorn calls this per worker)."""
    engine_holder = app.extensions[EXTENSION]
    if engine_holder.settings.compile_on_start:
        engine_holder.get().compile()


# -- error mapping: the one place where exceptions become HTTP answers ---------------------


def error_response(status: int, code: str, message: str, field: str | None = None):
    body: dict[str, Any] = {"success": False, "error": {"code": code, "message": message}}
    if field:
        body["error"]["field"] = field
    return jsonify(body), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service(exc: ServiceError):
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.errorhandler(video_io.MediaError)
    def _media(exc: video_io.MediaError):
        status = 413 if isinstance(exc, video_io.MediaTooLargeError) else 415
        return error_response(status, exc.code, str(exc))

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
            exc.code, (exc.name or "error").lower().replace(" ", "_")
        )
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the server log")


# -- request parsing -----------------------------------------------------------------------


def decode_base64(field: str, value: Any) -> bytes:
    """Base64 (optionally a data: URL) -> bytes; InvalidFieldError naming the field otherwise."""
    if not isinstance(value, str):
        raise InvalidFieldError(field, "must be a base64 string")
    text = value.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidFieldError(field, "data URL must be base64-encoded", code="invalid_base64")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidFieldError(field, "is not valid base64", code="invalid_base64") from None
    if not data:
        raise InvalidFieldError(field, "is empty")
    return data


def _number(field: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidFieldError(field, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidFieldError(field, f"must be a finite number, got {value!r}")
    return float(value)


def _int_list(field: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [int(v) for v in text.split(",")]
        except ValueError:
            raise InvalidFieldError(field, f"must be 4 integers, got {text!r}") from None
    if not isinstance(value, list) or len(value) != 4:
        raise InvalidFieldError(field, f"must be a list of 4 integers, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise InvalidFieldError(field, f"must be a list of 4 integers, got {value!r}")
    return tuple(value)


def _bool(field: str, value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise InvalidFieldError(field, f"must be true or false, got {value!r}")
    return value


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidFieldError(field, f"must be one of {list(choices)}, got {value!r}")
    return value


def read_fields(req: Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Scalar fields and raw media of a JSON or multipart request."""
    if req.mimetype == "multipart/form-data" or req.mimetype == "application/x-www-form-urlencoded":
        media = {name: f.read() for name, f in req.files.items()}
        fields = {k: v for k, v in req.form.items() if k not in media}
        for name in ("image", "video", "audio"):
            if name in fields and name not in media:
                media[name] = decode_base64(name, fields.pop(name))
        return fields, media
    body = req.get_json(silent=True)
    if body is None:
        raise ServiceError(
            "body must be a JSON object (Content-Type: application/json) or multipart/form-data",
            code="invalid_json",
        )
    if not isinstance(body, dict):
        raise ServiceError(
            f"JSON body must be an object, got {type(body).__name__}", code="invalid_json"
        )
    media = {
        name: decode_base64(name, body[name])
        for name in ("image", "video", "audio")
        if body.get(name)
    }
    return {k: v for k, v in body.items() if k not in media}, media


def parse_options(fields: Mapping[str, Any], settings: Settings) -> tuple[RenderOptions, str]:
    """Validated render options and output format from request fields."""
    kwargs: dict[str, Any] = {}
    if fields.get("fps") is not None:
        kwargs["fps"] = _number("fps", fields["fps"])
    if fields.get("pads") is not None:
        kwargs["pads"] = _int_list("pads", fields["pads"])
    if fields.get("box") not in (None, "", "null"):
        kwargs["box"] = _int_list("box", fields["box"])
    if fields.get("smooth") is not None:
        kwargs["smooth"] = _bool("smooth", fields["smooth"])
    if fields.get("model") is not None:
        kwargs["model"] = _choice("model", fields["model"], GENERATOR_NAMES)
    fmt = _choice("format", fields.get("format") or settings.default_format, FORMATS)
    try:
        return RenderOptions(**kwargs), fmt
    except ValueError as exc:
        field = next((name for name in kwargs if str(exc).startswith(name)), "options")
        raise InvalidFieldError(field, str(exc)) from None


# -- views ---------------------------------------------------------------------------------


def index():
    return jsonify(
        {
            "service": "wav2lip-openvino",
            "endpoints": {
                "POST /api/generate": "lip-sync a face to speech",
                "GET /health": "status",
            },
        }
    )


def health():
    h = holder()
    status = h.get().model_status()
    can_generate = all(status[name]["present"] for name in REQUIRED_MODELS)
    engine = h.get()
    body: dict[str, Any] = {
        "status": "ok" if can_generate else "degraded",
        "openvino_version": ov.get_version(),
        "device": engine.device,
        "precision": engine.precision,
        "models": {
            name: {"present": s["present"], "compiled": s["compiled"]} for name, s in status.items()
        },
        "capabilities": {
            "formats": list(FORMATS),
            "models": [name for name in GENERATOR_NAMES if status[name]["present"]],
            "max_audio_seconds": h.settings.max_audio_seconds,
            "max_body_mb": h.settings.max_body_mb,
        },
    }
    if not can_generate:
        missing = [name for name in REQUIRED_MODELS if not status[name]["present"]]
        body["error"] = {
            "code": "models_missing",
            "message": f"models not installed in {h.settings.models_dir}: {', '.join(missing)}",
            "fix": SETUP_COMMAND.replace("MODELS_DIR", str(h.settings.models_dir)),
        }
    return jsonify(body), 200 if can_generate else 503


def lookup_avatar(avatar_id: Any) -> Avatar:
    """The stored avatar or a 400 (malformed id) / 404 (unknown id)."""
    try:
        avatar = holder().store.get(check_avatar_id(avatar_id))
    except ValueError as exc:
        raise InvalidFieldError("avatar_id", str(exc), code="invalid_avatar_id") from None
    if avatar is None:
        raise ServiceError(f"avatar {avatar_id} not found", code="avatar_not_found", status=404)
    return avatar


def face_media(media: Mapping[str, bytes]) -> bytes:
    face = media.get("image") or media.get("video")
    if face is None:
        raise InvalidFieldError(
            "image",
            "is required (base64 image/video, a file upload, or avatar_id)",
            code="missing_field",
        )
    return face


def register_avatar():
    fields, media = read_fields(request)
    options, _ = parse_options(fields, holder().settings)
    avatar, created = holder().store.get_or_create(face_media(media), options, persist=True)
    return jsonify({**avatar.meta(), "created": created}), 201 if created else 200


def list_avatars():
    return jsonify({"avatars": holder().store.list()})


def get_avatar(avatar_id: str):
    return jsonify(lookup_avatar(avatar_id).meta())


def delete_avatar(avatar_id: str):
    try:
        deleted = holder().store.delete(check_avatar_id(avatar_id))
    except ValueError as exc:
        raise InvalidFieldError("avatar_id", str(exc), code="invalid_avatar_id") from None
    if not deleted:
        raise ServiceError(f"avatar {avatar_id} not found", code="avatar_not_found", status=404)
    return jsonify({"success": True, "avatar_id": avatar_id, "deleted": True})


def response_mode(fields: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(binary?, container implied by Accept) from `response` and the Accept header."""
    if fields.get("response") not in (None, "json", "binary"):
        raise InvalidFieldError(
            "response", f"must be 'json' or 'binary', got {fields['response']!r}"
        )
    best = request.accept_mimetypes.best_match(["application/json", *VIDEO_MIME_TYPES])
    container = VIDEO_MIME_TYPES.get(best)
    return fields.get("response") == "binary" or container is not None, container


def generate_video():
    settings = holder().settings
    fields, media = read_fields(request)
    binary, accepted_container = response_mode(fields)
    options, fmt = parse_options({"format": accepted_container, **fields}, settings)
    options = dataclasses.replace(options, fill_missing_faces=settings.fill_missing_faces)
    avatar_id = fields.get("avatar_id")
    face = None if avatar_id is not None else face_media(media)
    if "audio" not in media:
        raise InvalidFieldError(
            "audio", "is required (base64 WAV, or a file upload)", code="missing_field"
        )
    speech = generation.decode_speech(media["audio"], settings)
    timings: dict[str, float] = {}
    if avatar_id is not None:
        avatar = lookup_avatar(avatar_id)
    else:
        avatar, _ = holder().store.get_or_create(face, options, persist=False, timings=timings)
    if avatar.fps is not None:
        options = dataclasses.replace(options, fps=avatar.fps)
    result = generation.generate(
        holder().get(),
        avatar.prepared,
        speech,
        options,
        video_io.EncodeOptions(container=fmt),
        timings,
    )
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
