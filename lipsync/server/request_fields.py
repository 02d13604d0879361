"""Request fields of the API: JSON or multipart, validated, with errors naming the field."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

from flask import Request

from lipsync.errors import InvalidFieldError, ServiceError
from lipsync.options import GENERATOR_NAMES, RenderOptions
from lipsync.settings import FORMATS, Settings

MEDIA_FIELDS = ("image", "video", "audio")
VIDEO_MIME_TYPES = {"video/webm": "webm", "video/mp4": "mp4"}


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
        for name in MEDIA_FIELDS:
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
    media = {name: decode_base64(name, body[name]) for name in MEDIA_FIELDS if body.get(name)}
    return {k: v for k, v in body.items() if k not in media}, media


def parse_options(fields: Mapping[str, Any], settings: Settings) -> tuple[RenderOptions, str]:
    """Validated render options (server-side face policy included) and output format."""
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
    requested = fields.get("format")
    fmt = _choice("format", settings.default_format if requested is None else requested, FORMATS)
    kwargs["fill_missing_faces"] = settings.fill_missing_faces
    try:
        return RenderOptions(**kwargs), fmt
    except ValueError as exc:
        field = next((name for name in kwargs if str(exc).startswith(name)), "options")
        raise InvalidFieldError(field, str(exc)) from None


def face_media(media: Mapping[str, bytes]) -> bytes:
    """The uploaded face (image or video) or a 400 naming the missing field."""
    face = media.get("image") or media.get("video")
    if face is None:
        raise InvalidFieldError(
            "image",
            "is required (base64 image/video, a file upload, or avatar_id)",
            code="missing_field",
        )
    return face


def response_mode(fields: Mapping[str, Any], req: Request) -> tuple[bool, str | None]:
    """(binary response?, container implied by Accept) from `response` and Accept."""
    if fields.get("response") not in (None, "json", "binary"):
        raise InvalidFieldError(
            "response", f"must be 'json' or 'binary', got {fields['response']!r}"
        )
    best = req.accept_mimetypes.best_match(["application/json", *VIDEO_MIME_TYPES])
    container = VIDEO_MIME_TYPES.get(best) if best else None
    return fields.get("response") == "binary" or container is not None, container
