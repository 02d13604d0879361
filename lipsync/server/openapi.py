"""The HTTP API as an OpenAPI 3.1 document, served at `GET /openapi.json`.

`build_spec()` builds the document on each call (nothing happens at import time). The
limits quoted in descriptions come from the given `Settings` (the app passes its own),
else from the defaults. Schemas describe
what the service enforces: unknown fields are ignored (`additionalProperties` is open),
`null` for an optional JSON field means "not given". tests/test_openapi.py keeps this
document in sync with the app's routes, its error codes and its real responses.
"""

from __future__ import annotations

from typing import Any

from lipsync.options import DEFAULT_PADS, GENERATOR_NAMES, MAX_FPS
from lipsync.settings import FORMATS, Settings

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
AVATAR_ID_REGEX = r"^[0-9a-f]{32}$"
INT_LIST_TEXT = r"^\s*\[?\s*-?\d+\s*(,\s*-?\d+\s*){3}\]?\s*$"
NON_NEGATIVE_INT_LIST_TEXT = r"^\s*\[?\s*\d+\s*(,\s*\d+\s*){3}\]?\s*$"
# Padded base64 of at least one byte, optionally as a data: URL (the server also skips
# whitespace inside it).
_B64_TAIL = r"[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}="
BASE64_PATTERN = (
    r"^(data:[^,]*;base64,)?(([A-Za-z0-9+/]{4})+(" + _B64_TAIL + r")?|" + _B64_TAIL + r")$"
)

# Error codes by HTTP status: what `error.code` can be in an error answer of that status.
# Werkzeug's own errors (unknown route, wrong method, body too large) are named after their
# status text, e.g. "not_found", "method_not_allowed".
ERROR_CODES: dict[int, dict[str, str]] = {
    400: {
        "invalid_json": "the body is not a JSON object (nor a multipart or urlencoded form)",
        "missing_field": "a required field is missing (`field` names it)",
        "invalid_field": "a field has the wrong type or is out of range (`field` names it)",
        "invalid_base64": "a media field is not base64 (or a data: URL that is not base64)",
        "invalid_avatar_id": "an avatar id that is not 32 lowercase hex digits",
        "bad_request": "a request the server cannot parse",
    },
    401: {
        "unauthorized": "an API key is configured and the request has none or a wrong one",
    },
    404: {
        "avatar_not_found": "no avatar with this id",
        "not_found": "no such route",
    },
    405: {
        "method_not_allowed": "the route exists but not with this method",
    },
    413: {
        "payload_too_large": "the body is over the configured limit",
        "image_too_large": "the image has more pixels than allowed (read from its header)",
        "video_too_large": "the video's frames have more pixels than allowed",
        "video_too_long": "the video has more frames or seconds than allowed",
        "media_too_large": "an uploaded medium is over a limit",
    },
    415: {
        "unsupported_media": "the image/video cannot be decoded (unknown, truncated, corrupt)",
        "unsupported_audio": "the audio cannot be decoded, or has NaN/inf samples",
        "invalid_media": "an uploaded medium was rejected",
    },
    422: {
        "face_not_detected": "no face in the image (or in frame N of a video)",
        "audio_too_long": "the speech is longer than allowed",
        "audio_too_short": "the speech is shorter than one video frame",
        "unsupported_sample_rate": "the audio's sample rate is outside the accepted range",
        "invalid_audio": "the audio cannot be used",
        "invalid_input": "valid fields that do not fit together, e.g. a box outside the image",
        "invalid_video": "e.g. a face video whose frame rate is outside 1..60 fps",
    },
    500: {
        "internal_error": "a bug: the server log has the traceback",
    },
    503: {
        "overloaded": "every generation slot is busy and the queue is full: retry after "
        "`Retry-After` seconds",
        "model_unavailable": "the requested model is not installed (the message says how)",
    },
    504: {
        "timeout": "the generation ran over the configured time limit",
    },
}
# Never seen by a client (it has gone), only in logs and metrics: status 499.
UNSENT_ERROR_CODES = {"client_disconnected": "the client closed the connection mid-generation"}
# `error.code` of the `/health` answer when models are missing.
HEALTH_ERROR_CODES = {"models_missing": "a required model is not installed (`error.fix` says how)"}

STATUS_TEXT = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media",
    422: "Unprocessable input",
    500: "Internal error",
    503: "Service unavailable",
    504: "Generation timed out",
}


def all_error_codes() -> set[str]:
    """Every error code the API documents (for tests and clients)."""
    codes = {code for by_status in ERROR_CODES.values() for code in by_status}
    return codes | set(UNSENT_ERROR_CODES) | set(HEALTH_ERROR_CODES)


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _codes_table(codes: dict[str, str]) -> str:
    return "\n".join(f"- `{code}`: {meaning}" for code, meaning in codes.items())


def build_spec(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service (limits from `settings`), JSON-ready."""
    s = settings if settings is not None else Settings()
    max_fps = int(MAX_FPS) if float(MAX_FPS).is_integer() else MAX_FPS
    limits = (
        f"Limits of this server: body {s.max_body_mb:g} MB, speech "
        f"{s.max_audio_seconds:g} s, {s.max_image_pixels} pixels per image or video frame, "
        f"face videos of at most {s.max_video_frames} frames and {s.max_video_seconds:g} s."
    )

    headers = {
        "X-Request-ID": {
            "description": "The request's id: the client's `X-Request-ID` when it is a token "
            f"matching `{REQUEST_ID_PATTERN}`, else a fresh one. Also in the access log.",
            "required": True,
            "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
        },
        "Retry-After": {
            "description": "Seconds to wait before retrying (with `overloaded`).",
            "required": False,
            "schema": {"type": "integer", "minimum": 0},
        },
    }
    video_headers = {
        "X-Num-Frames": ("integer", "frames in the video"),
        "X-Duration": ("number", "seconds"),
        "X-Fps": ("number", "frame rate"),
        "X-Width": ("integer", "encoded width (even)"),
        "X-Height": ("integer", "encoded height (even)"),
        "X-Avatar-Id": ("string", "the avatar the video was made from"),
        "X-Mime-Type": ("string", "`video/webm` or `video/mp4`"),
        "X-Timings-Ms": ("string", "stage timings in milliseconds, as a JSON object"),
    }
    for name, (kind, meaning) in video_headers.items():
        headers[name] = {
            "description": f"Binary responses only: {meaning}.",
            "required": False,
            "schema": {"type": kind},
        }

    def response(
        description: str,
        content: dict[str, Any] | None = None,
        extra_headers: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "description": description,
            "headers": {name: _ref(name, "headers") for name in ("X-Request-ID", *extra_headers)},
        }
        if content is not None:
            out["content"] = content
        return out

    def error_schema(status: int) -> dict[str, Any]:
        codes = ERROR_CODES[status]
        return {
            "allOf": [
                _ref("Error"),
                {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"code": {"type": "string", "enum": list(codes)}},
                        }
                    },
                },
            ]
        }

    def error_response(status: int) -> dict[str, Any]:
        text = (
            f"{STATUS_TEXT[status]}. `error.code` is one of:\n\n{_codes_table(ERROR_CODES[status])}"
        )
        extra = ("Retry-After",) if status == 503 else ()
        return response(text, _json(error_schema(status)), extra)

    responses_components = {f"Error{status}": error_response(status) for status in ERROR_CODES}

    def errors(*statuses: int) -> dict[str, Any]:
        return {str(status): _ref(f"Error{status}", "responses") for status in statuses}

    # -- schemas -----------------------------------------------------------------------------

    media_base64: dict[str, Any] = {
        "type": "string",
        "minLength": 1,
        "pattern": BASE64_PATTERN,
        "contentEncoding": "base64",
        "description": "Base64 of the file's bytes; a `data:<type>;base64,<data>` URL is "
        "accepted too. `null` or an empty string means not given.",
    }
    box_value = {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 4,
        "maxItems": 4,
        "description": "[top, bottom, left, right] in pixels",
    }
    pads_value = {
        "type": "array",
        "items": {"type": "integer", "minimum": 0},
        "minItems": 4,
        "maxItems": 4,
        "description": "[top, bottom, left, right] extra pixels around the detected face",
    }
    default_pads = list(DEFAULT_PADS)

    def face_options_json() -> dict[str, Any]:
        return {
            "pads": {**pads_value, "type": ["array", "null"], "default": default_pads},
            "box": {
                **box_value,
                "type": ["array", "null"],
                "default": None,
                "description": "explicit face box [top, bottom, left, right]: skips "
                "detection; it must lie inside the image (else 422 `invalid_input`)",
            },
            "smooth": {
                "type": ["boolean", "null"],
                "default": True,
                "description": "average face boxes over 5 frames (videos)",
            },
        }

    def render_options_json() -> dict[str, Any]:
        return {
            "fps": {
                "type": ["number", "null"],
                "minimum": 1,
                "maximum": max_fps,
                "default": 25,
                "description": f"output frame rate for an image (1..{max_fps}); a video "
                "(or video avatar) keeps its own rate",
            },
            "format": {
                "type": ["string", "null"],
                "enum": [*FORMATS, None],
                "default": s.default_format,
                "description": "WebM = VP9 + Opus; MP4 = H.264 + AAC (faststart). Without "
                "it, a video `Accept` header chooses the container.",
            },
            "model": {
                "type": ["string", "null"],
                "enum": [*GENERATOR_NAMES, None],
                "default": GENERATOR_NAMES[0],
                "description": "generator weights",
            },
        }

    face_fields = {
        "image": {
            **media_base64,
            "type": ["string", "null"],
            "description": "JPEG/PNG/WebP/BMP/GIF face image, or an MP4/WebM/MOV face "
            "video. " + media_base64["description"],
        },
        "video": {
            **media_base64,
            "type": ["string", "null"],
            "description": "The same as `image` (either name works for either kind). "
            + media_base64["description"],
        },
    }
    one_of_face = [{"required": ["image"]}, {"required": ["video"]}]

    generate_json = {
        "type": "object",
        "description": "Only `audio` and one of `image` / `video` / `avatar_id` are required; "
        "unknown fields are ignored.",
        "required": ["audio"],
        "anyOf": [*one_of_face, {"required": ["avatar_id"]}],
        "properties": {
            **face_fields,
            "audio": {
                **media_base64,
                "description": "Speech: WAV of any layout (8/16/24/32-bit int, float; mono "
                "or multi-channel; 8..192 kHz), MP3, OGG, FLAC, WebM/Opus, M4A. "
                + media_base64["description"],
            },
            "avatar_id": {
                "type": "string",
                "pattern": AVATAR_ID_REGEX,
                "description": "a registered avatar (its own pads/box/smooth apply); "
                "400 `invalid_avatar_id` when malformed, 404 `avatar_not_found` when unknown",
            },
            **render_options_json(),
            **face_options_json(),
            "response": {
                "type": ["string", "null"],
                "enum": ["json", "binary", None],
                "default": "json",
                "description": "`binary`: the video itself (as with a video `Accept`)",
            },
        },
    }
    register_json = {
        "type": "object",
        "description": "An image or a short face video, and the face options. The render "
        "options (`fps`, `format`, `model`) are validated but not stored.",
        "anyOf": one_of_face,
        "properties": {**face_fields, **face_options_json(), **render_options_json()},
    }

    # Forms: every value is text; files or base64 text for the media.
    form_media = {
        "type": "string",
        "format": "binary",
        "contentMediaType": "application/octet-stream",
        "description": "a file upload (or its base64 as a text field)",
    }
    form_options = {
        "fps": {
            "type": "string",
            "pattern": r"^\s*[+]?\d+(\.\d+)?\s*$",
            "description": f"a number 1..{max_fps}",
        },
        "format": {"type": "string", "enum": list(FORMATS)},
        "model": {"type": "string", "enum": list(GENERATOR_NAMES)},
        "pads": {
            "type": "string",
            "pattern": NON_NEGATIVE_INT_LIST_TEXT,
            "description": "`0,10,0,0` or a JSON list `[0,10,0,0]`",
        },
        "box": {
            "type": "string",
            "pattern": r"^(|null|" + INT_LIST_TEXT[1:-1] + r")$",
            "description": "`top,bottom,left,right`, a JSON list, or empty / `null` for none",
        },
        "smooth": {"type": "string", "enum": ["true", "false", "1", "0"]},
    }

    def form_schema(media: dict[str, Any], *, generate: bool) -> dict[str, Any]:
        properties: dict[str, Any] = {"image": media, "video": media}
        if generate:
            properties["audio"] = media
            properties["avatar_id"] = {"type": "string", "pattern": AVATAR_ID_REGEX}
            properties["response"] = {"type": "string", "enum": ["json", "binary"]}
        properties.update(form_options)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if generate:
            schema["required"] = ["audio"]
            schema["anyOf"] = [*one_of_face, {"required": ["avatar_id"]}]
        else:
            schema["anyOf"] = one_of_face
        return schema

    text_media = {
        "type": "string",
        "minLength": 1,
        "pattern": BASE64_PATTERN,
        "description": "base64 of the file",
    }
    media_encoding = {
        name: {"contentType": "application/octet-stream, image/*, video/*, audio/*"}
        for name in ("image", "video", "audio")
    }

    def request_body(json_schema: str, *, generate: bool, description: str) -> dict[str, Any]:
        return {
            "required": True,
            "description": description,
            "content": {
                "application/json": {"schema": _ref(json_schema)},
                "multipart/form-data": {
                    "schema": form_schema(form_media, generate=generate),
                    "encoding": {
                        k: v for k, v in media_encoding.items() if generate or k != "audio"
                    },
                },
                "application/x-www-form-urlencoded": {
                    "schema": form_schema(text_media, generate=generate)
                },
            },
        }

    timings = {
        "type": "object",
        "additionalProperties": {"type": "number"},
        "description": "milliseconds per stage (decode_face, detect, mel, infer, paste, "
        "encode; absent stages were skipped, e.g. detect for a known avatar)",
    }
    video_meta = {
        "mime_type": {"type": "string", "enum": ["video/webm", "video/mp4"]},
        "num_frames": {
            "type": "integer",
            "minimum": 1,
            "description": "ceil(speech seconds × fps)",
        },
        "duration": {"type": "number", "minimum": 0, "description": "seconds"},
        "fps": {"type": "number", "minimum": 1, "maximum": max_fps},
        "width": {"type": "integer", "minimum": 1, "description": "encoded width (even)"},
        "height": {"type": "integer", "minimum": 1, "description": "encoded height (even)"},
        "avatar_id": {"type": "string", "pattern": AVATAR_ID_REGEX},
        "timings_ms": timings,
    }
    generate_result = {
        "type": "object",
        "required": ["success", "video", *video_meta],
        "properties": {
            "success": {"const": True},
            "video": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "base64 of the whole video file (`mime_type` says which)",
            },
            **video_meta,
        },
    }
    avatar_meta: dict[str, Any] = {
        "type": "object",
        "required": [
            "avatar_id",
            "kind",
            "width",
            "height",
            "num_frames",
            "fps",
            "boxes",
            "pads",
            "box",
            "smooth",
            "created_at",
        ],
        "properties": {
            "avatar_id": {"type": "string", "pattern": AVATAR_ID_REGEX},
            "kind": {"type": "string", "enum": ["image", "video"]},
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
            "num_frames": {"type": "integer", "minimum": 1},
            "fps": {
                "type": ["number", "null"],
                "description": "the clip's frame rate; null for an image",
            },
            "boxes": {
                "type": "array",
                "items": {**box_value, "description": "the face box of one frame"},
            },
            "pads": pads_value,
            "box": {**box_value, "type": ["array", "null"]},
            "smooth": {"type": "boolean"},
            "created_at": {"type": "number", "description": "Unix time of registration"},
        },
    }
    # The registration answer is the avatar's metadata plus whether this request registered it.
    registered = {
        **avatar_meta,
        "required": [*avatar_meta["required"], "created"],
        "properties": {
            **avatar_meta["properties"],
            "created": {
                "type": "boolean",
                "description": "true when this request registered the avatar (201), false when "
                "it was already known (200)",
            },
        },
    }
    error = {
        "type": "object",
        "required": ["success", "error"],
        "properties": {
            "success": {"const": False},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": _ref("ErrorCode"),
                    "message": {"type": "string", "minLength": 1},
                    "field": {
                        "type": "string",
                        "description": "the request field at fault, when there is one",
                    },
                },
            },
        },
    }
    all_codes = sorted(all_error_codes())
    error_code = {
        "type": "string",
        "pattern": "^[a-z][a-z0-9_]*$",
        "description": "Stable, machine-readable reason. Known codes: "
        + ", ".join(f"`{c}`" for c in all_codes)
        + ". `client_disconnected` (499) is only logged: the client has gone.",
        "examples": all_codes,
    }
    model_state = {
        "type": "object",
        "required": ["present", "compiled"],
        "properties": {"present": {"type": "boolean"}, "compiled": {"type": "boolean"}},
    }
    health = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "openvino_version": {"type": "string"},
            "device": {"type": "string"},
            "precision": {"type": "string"},
            "models": {"type": "object", "additionalProperties": model_state},
            "capabilities": {
                "type": "object",
                "properties": {
                    "formats": {"type": "array", "items": {"type": "string"}},
                    "models": {"type": "array", "items": {"type": "string"}},
                    "max_audio_seconds": {"type": "number"},
                    "max_body_mb": {"type": "number"},
                },
            },
            "error": {
                "type": "object",
                "description": "when degraded: what is missing and the command that fixes it",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": list(HEALTH_ERROR_CODES)},
                    "message": {"type": "string"},
                    "fix": {"type": "string"},
                },
            },
        },
    }
    schemas = {
        "Error": error,
        "ErrorCode": error_code,
        "GenerateRequest": generate_json,
        "GenerateResult": generate_result,
        "RegisterAvatarRequest": register_json,
        "Avatar": avatar_meta,
        "RegisteredAvatar": registered,
        "Health": health,
        "Liveness": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "alive"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "reasons": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "why the worker cannot take generations (when not_ready)",
                },
            },
        },
    }

    # -- operations --------------------------------------------------------------------------

    request_id_param = {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": f"Correlation id, echoed in the response when it matches "
        f"`{REQUEST_ID_PATTERN}` (anything else is replaced by a fresh id).",
        "schema": {"type": "string"},
    }
    avatar_id_param = {
        "name": "avatar_id",
        "in": "path",
        "required": True,
        "description": "32 lowercase hex digits (anything else: 400 `invalid_avatar_id`)",
        "schema": {"type": "string", "pattern": AVATAR_ID_REGEX},
    }
    secured: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}, {}]

    def operation(
        op_id: str,
        summary: str,
        responses: dict[str, Any],
        *,
        tag: str,
        description: str = "",
        parameters: tuple[dict[str, Any], ...] = (),
        body: dict[str, Any] | None = None,
        public: bool = False,
    ) -> dict[str, Any]:
        op: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "tags": [tag],
            "parameters": [*parameters, _ref("RequestId", "parameters")],
            "responses": responses if public else {**responses, **errors(401)},
            "security": [] if public else secured,
        }
        if description:
            op["description"] = description
        if body is not None:
            op["requestBody"] = body
        return op

    video_200 = response(
        "The lip-synced video. JSON by default; the video file itself when `Accept` "
        "prefers `video/webm` / `video/mp4` (the container follows unless `format` is "
        "given) or `response` is `binary`, with its metadata in `X-*` headers.",
        {
            "application/json": {"schema": _ref("GenerateResult")},
            "video/webm": {"schema": {"type": "string", "format": "binary"}},
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
        },
        tuple(video_headers),
    )
    avatar_200 = response("The avatar.", _json(_ref("Avatar")))

    paths = {
        "/": {
            "get": operation(
                "index",
                "What this service is and its main endpoints",
                {
                    "200": response(
                        "Service name and endpoints.",
                        _json(
                            {
                                "type": "object",
                                "required": ["service"],
                                "properties": {
                                    "service": {"type": "string"},
                                    "endpoints": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                },
                            }
                        ),
                    ),
                    **errors(500),
                },
                tag="meta",
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                {
                    "200": response(
                        "The OpenAPI 3.1 document.",
                        _json(
                            {
                                "type": "object",
                                "required": ["openapi", "info", "paths"],
                                "properties": {"openapi": {"type": "string"}},
                            }
                        ),
                    ),
                    **errors(500),
                },
                tag="meta",
            )
        },
        "/health": {
            "get": operation(
                "health",
                "Models, device and capabilities",
                {
                    "200": response("The service can generate.", _json(_ref("Health"))),
                    "503": response(
                        "`status` is `degraded`: the detector or the Wav2Lip model is missing; "
                        "`error.fix` is the command that installs them.",
                        _json(_ref("Health")),
                    ),
                    **errors(500),
                },
                tag="health",
            )
        },
        "/health/live": {
            "get": operation(
                "liveness",
                "Liveness probe: the process answers (never needs an API key)",
                {"200": response("Alive.", _json(_ref("Liveness")))},
                tag="health",
                public=True,
            )
        },
        "/health/ready": {
            "get": operation(
                "readiness",
                "Readiness probe: models installed and compiled, a generation slot free",
                {
                    "200": response("Ready for generations.", _json(_ref("Readiness"))),
                    "503": response(
                        "`status` is `not_ready`; `reasons` say why.",
                        _json(_ref("Readiness")),
                        ("Retry-After",),
                    ),
                    **errors(500),
                },
                tag="health",
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus metrics (all workers)",
                {
                    "200": response(
                        "Prometheus text exposition format 0.0.4.",
                        {"text/plain": {"schema": {"type": "string"}}},
                    ),
                    **errors(500),
                },
                tag="meta",
            )
        },
        "/api/generate": {
            "post": operation(
                "generate",
                "Lip-sync a face (image, video or avatar) to speech",
                {
                    "200": video_200,
                    **errors(400, 404, 413, 415, 422, 500, 503, 504),
                },
                tag="generate",
                description="The video has `ceil(speech_seconds × fps)` frames and the speech "
                "as its audio track. Odd image sizes lose their last row/column. Requests "
                "beyond the worker's generation slots and queue get 503 `overloaded` with "
                "`Retry-After`; a generation over the time limit gets 504 `timeout`. " + limits,
                body=request_body(
                    "GenerateRequest",
                    generate=True,
                    description="JSON (media as base64), or a multipart form (files `image` / "
                    "`video` and `audio`; `pads`/`box` as `0,10,0,0` or a JSON list).",
                ),
            )
        },
        "/api/avatars": {
            "post": operation(
                "registerAvatar",
                "Register a face once (detection runs now), reuse it by id",
                {
                    "200": response(
                        "Already registered (same bytes and options).",
                        _json(_ref("RegisteredAvatar")),
                    ),
                    "201": response("Registered.", _json(_ref("RegisteredAvatar"))),
                    **errors(400, 413, 415, 422, 500, 503, 504),
                },
                tag="avatars",
                description="The id is derived from the file's bytes and the face options, "
                "so registering the same file again returns the same id. " + limits,
                body=request_body(
                    "RegisterAvatarRequest",
                    generate=False,
                    description="JSON (base64) or a multipart form with the `image`/`video` file.",
                ),
            ),
            "get": operation(
                "listAvatars",
                "Every stored avatar, newest first",
                {
                    "200": response(
                        "The avatars.",
                        _json(
                            {
                                "type": "object",
                                "required": ["avatars"],
                                "properties": {
                                    "avatars": {"type": "array", "items": _ref("Avatar")}
                                },
                            }
                        ),
                    ),
                    **errors(500),
                },
                tag="avatars",
            ),
        },
        "/api/avatars/{avatar_id}": {
            "get": operation(
                "getAvatar",
                "One avatar's metadata",
                {"200": avatar_200, **errors(400, 404, 500)},
                tag="avatars",
                parameters=(avatar_id_param,),
            ),
            "delete": operation(
                "deleteAvatar",
                "Forget an avatar (memory and disk)",
                {
                    "200": response(
                        "Deleted.",
                        _json(
                            {
                                "type": "object",
                                "required": ["success", "avatar_id", "deleted"],
                                "properties": {
                                    "success": {"const": True},
                                    "avatar_id": {"type": "string", "pattern": AVATAR_ID_REGEX},
                                    "deleted": {"const": True},
                                },
                            }
                        ),
                    ),
                    **errors(400, 404, 500),
                },
                tag="avatars",
                parameters=(avatar_id_param,),
            ),
        },
    }

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Wav2Lip lip-sync service",
            "version": API_VERSION,
            "summary": "Talking-head videos from one face and a speech recording (CPU, OpenVINO)",
            "description": 'Every error is JSON `{"success": false, "error": {"code", '
            '"message", "field"?}}`. Every response carries `X-Request-ID`. When an API key '
            "is configured, every route but `/health/live` needs it (`Authorization: Bearer "
            "<key>` or `X-API-Key: <key>`), else 401 `unauthorized`. An unknown route is 404 "
            "`not_found`; a known route with another method is 405 `method_not_allowed`. " + limits,
        },
        "tags": [
            {"name": "generate", "description": "lip-sync"},
            {"name": "avatars", "description": "faces registered once, reused by id"},
            {"name": "health", "description": "probes and status"},
            {"name": "meta", "description": "service description and metrics"},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses_components,
            "parameters": {"RequestId": request_id_param},
            "headers": headers,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <key>` (only when the server has "
                    "an API key configured)",
                },
                "apiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "`X-API-Key: <key>` (only when the server has an API key "
                    "configured)",
                },
            },
        },
    }
