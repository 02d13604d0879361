"""The HTTP API as an OpenAPI 3.1 document, served at `GET /openapi.json` and `/docs/`.

flask-openapi3 collects the operations from the routes (lipsync/server/routes/: paths,
summaries, tags, path parameters, responses). `finish()` adds what the routes share: the
schemas of the request and response models (lipsync/server/schemas.py, responses.py; their
JSON Schema from pydantic), the defaults that are settings, the request bodies (JSON,
multipart and urlencoded, from the same model),
one error response per status listing the `ErrorCode`s of that status, the request-id
header and parameter, security, and the limits of the running server's `Settings`.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Flask
from flask_openapi3 import OpenAPI, Tag
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from lipsync.errors import ErrorCode
from lipsync.server import responses, schemas
from lipsync.server.fields import BASE64_PATTERN, Form
from lipsync.serving.options import server_defaults
from lipsync.settings import Settings

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
TITLE = "Wav2Lip lip-sync service"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
REF = "#/components/{kind}/{name}"
LIMITS = "{limits}"  # replaced by the server's limits in operation descriptions
BODY_KEY = "x-request-model"
PUBLIC_KEY = "x-public"
DOCUMENT = "lipsync.openapi"

TAGS = {
    "generate": "lip-sync",
    "avatars": "faces registered once, reused by id",
    "realtime": "WebSocket lip-sync sessions: speech in, frames out as they are made",
    "health": "probes and status",
    "meta": "service description, metrics and this document",
}
STATUS_TEXT = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media",
    422: "Unprocessable input",
    426: "Upgrade required",
    500: "Internal error",
    503: "Service unavailable",
    504: "Generation timed out",
    507: "Insufficient storage",
}


def ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": REF.format(kind=kind, name=name)}


# -- what routes declare -------------------------------------------------------------------


def ok(
    description: str,
    model: type[BaseModel] | None = None,
    *,
    content: dict[str, Any] | None = None,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A documented answer: JSON of `model`, or `content`, with the request-id header."""
    out: dict[str, Any] = {
        "description": description,
        "headers": {name: ref(name, "headers") for name in ("X-Request-ID", *headers)},
    }
    if model is not None:
        out["content"] = {"application/json": {"schema": ref(model.__name__)}}
    if content is not None:
        out["content"] = content
    return out


def errors(*statuses: int) -> dict[str | int, dict[str, Any]]:
    """The shared error answers of these statuses (keyed as flask-openapi3's `responses`)."""
    return {str(status): ref(f"Error{status}", "responses") for status in statuses}


def operation(
    op_id: str, summary: str, tag: str, *, body: type[BaseModel] | None = None, public=False
) -> dict[str, Any]:
    """Keyword arguments of a flask-openapi3 route decorator."""
    extensions: dict[str, Any] = {PUBLIC_KEY: public}
    if body is not None:
        extensions[BODY_KEY] = body.__name__
    return {
        "operation_id": op_id,
        "summary": summary,
        "tags": [Tag(name=tag, description=TAGS[tag])],
        "openapi_extensions": extensions,
    }


# -- the document --------------------------------------------------------------------------


def document(app: Flask) -> dict[str, Any]:
    """The app's finished document (built once per app)."""
    if not isinstance(app, OpenAPI):
        raise TypeError(f"app {app.name!r} is not a flask-openapi3 app: it has no document")
    if DOCUMENT not in app.extensions:
        app.extensions[DOCUMENT] = finish(
            copy.deepcopy(app.api_doc), app.extensions["lipsync"].settings
        )
    return app.extensions[DOCUMENT]


def build_spec(settings: Settings | None = None) -> dict[str, Any]:
    """The document of an app with these settings (default: the defaults), made here."""
    from lipsync.server.app import create_app  # the app imports this module

    return document(create_app(settings=settings or Settings()))


class _Untitled(GenerateJsonSchema):
    """JSON Schema without pydantic's generated titles."""

    def field_title_should_be_set(self, schema) -> bool:
        return False


def model_schemas() -> dict[str, Any]:
    """Component schemas of every request and response model (nested ones included)."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation") for m in (*schemas.REQUEST_MODELS, *responses.RESPONSE_MODELS)
    ]
    _, top = models_json_schema(
        models, ref_template=REF.format(kind="schemas", name="{model}"), schema_generator=_Untitled
    )
    out = top["$defs"]
    for item in out.values():
        item.pop("title", None)
        for prop in item.get("properties", {}).values():
            if prop.get("default", ...) is None and not _nullable(prop):
                del prop["default"]  # optional in a response: absent, never null
    return out


def _nullable(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    return (
        kinds == "null"
        or (isinstance(kinds, list) and "null" in kinds)
        or any(_nullable(s) for s in schema.get("anyOf", []))
    )


def form_schema(model: type[BaseModel], *, files: bool) -> dict[str, Any]:
    """A request model as a form: files (or base64 text) for media, text for the rest."""
    media = (
        {
            "type": "string",
            "format": "binary",
            "contentMediaType": "application/octet-stream",
            "description": "a file upload (or its base64 as a text field)",
        }
        if files
        else {
            "type": "string",
            "minLength": 1,
            "pattern": BASE64_PATTERN,
            "description": "base64 of the file",
        }
    )
    properties = {}
    for name, field in model.model_fields.items():
        form = next((m for m in field.metadata if isinstance(m, Form)), Form())
        properties[name] = media if form.media else form.schema
    extra = model.model_config.get("json_schema_extra") or {}
    if not isinstance(extra, dict):
        raise TypeError(f"{model.__name__}: json_schema_extra must be a dict")
    return {"type": "object", "properties": properties, **extra}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    media_fields = [
        name
        for name, field in model.model_fields.items()
        if any(isinstance(m, Form) and m.media for m in field.metadata)
    ]
    return {
        "required": True,
        "description": "JSON (media as base64), or a multipart form (files for the media; "
        "`pads`/`box` as `0,10,0,0` or a JSON list), or an urlencoded form (base64 media).",
        "content": {
            "application/json": {"schema": ref(model.__name__)},
            "multipart/form-data": {
                "schema": form_schema(model, files=True),
                "encoding": {
                    name: {"contentType": "application/octet-stream, image/*, video/*, audio/*"}
                    for name in media_fields
                },
            },
            "application/x-www-form-urlencoded": {"schema": form_schema(model, files=False)},
        },
    }


def error_responses() -> dict[str, Any]:
    out = {}
    for status, codes in ErrorCode.answered().items():
        table = "\n".join(f"- `{c.code}`: {c.description}" for c in codes)
        narrowed = {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {"code": {"type": "string", "enum": [c.code for c in codes]}},
                }
            },
        }
        out[f"Error{status}"] = {
            "description": f"{STATUS_TEXT[status]}. `error.code` is one of:\n\n{table}",
            "headers": {
                name: ref(name, "headers")
                for name in ("X-Request-ID", *(("Retry-After",) if status == 503 else ()))
            },
            "content": {"application/json": {"schema": {"allOf": [ref("Error"), narrowed]}}},
        }
    return out


def headers() -> dict[str, Any]:
    out = {
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
    return {**out, **video_headers()}


def video_headers() -> dict[str, Any]:
    """The binary answer's X-* headers: one per `VideoMeta` field, then the stream's own."""
    properties = responses.VideoMeta.model_json_schema()["properties"]
    out = {}
    for field, schema in properties.items():
        kind = schema.get("type") if schema.get("type") in ("integer", "number") else "string"
        out[responses.header_name(field)] = {
            "description": f"Binary responses only: {schema['description']}.",
            "required": False,
            "schema": {"type": kind},
        }
    for name, meaning in responses.STREAM_ONLY_HEADERS.items():
        out[name] = {
            "description": f"Streamed responses only: {meaning}.",
            "required": False,
            "schema": {"type": "string"},
        }
    return out


def components() -> dict[str, Any]:
    return {
        "schemas": model_schemas(),
        "responses": error_responses(),
        "parameters": {
            "RequestId": {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "description": f"Correlation id, echoed in the response when it matches "
                f"`{REQUEST_ID_PATTERN}` (anything else is replaced by a fresh id).",
                "schema": {"type": "string"},
            }
        },
        "headers": headers(),
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "`Authorization: Bearer <key>` (only when the server has an API "
                "key configured)",
            },
            "apiKeyAuth": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "`X-API-Key: <key>` (only when the server has an API key "
                "configured)",
            },
        },
    }


def limits_text(s: Settings) -> str:
    return (
        f"Limits of this server: body {s.max_body_mb:g} MB, speech "
        f"{s.max_audio_seconds:g} s, {s.max_image_pixels} pixels per image or video frame, "
        f"face videos of at most {s.max_video_frames} frames and {s.max_video_seconds:g} s."
    )


def finish_operation(op: dict[str, Any], settings: Settings) -> None:
    public = op.pop(PUBLIC_KEY, False)
    body = op.pop(BODY_KEY, None)
    if body is not None:
        model = next(m for m in schemas.REQUEST_MODELS if m.__name__ == body)
        op["requestBody"] = request_body(model)
    op["parameters"] = [*op.get("parameters", []), ref("RequestId", "parameters")]
    responses = op.setdefault("responses", {})
    for status, answer in list(responses.items()):  # flask-openapi3's validation answer
        if "ValidationErrorModel" in str(answer.get("content", "")):
            del responses[status]
    if not public:
        responses.update(errors(401))
    op["security"] = [] if public else [{"bearerAuth": []}, {"apiKeyAuth": []}, {}]
    if "description" in op:
        op["description"] = op["description"].replace(LIMITS, limits_text(settings))


def finish(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """flask-openapi3's document of the routes, completed (see the module docstring)."""
    methods = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
    for item in doc["paths"].values():
        for method, op in item.items():
            if method in methods:
                finish_operation(op, settings)
    doc["components"] = components()
    for model in schemas.REQUEST_MODELS:  # the defaults that are this server's settings
        properties = doc["components"]["schemas"][model.__name__]["properties"]
        for field, default in server_defaults(settings).items():
            properties[field]["default"] = default
    doc["info"] = {
        "title": TITLE,
        "version": API_VERSION,
        "summary": "Talking-head videos from one face and a speech recording (CPU, OpenVINO)",
        "description": 'Every error is JSON `{"success": false, "error": {"code", '
        '"message", "field"?}}`. Every response carries `X-Request-ID`. When an API key '
        "is configured, every route but `/health/live` needs it (`Authorization: Bearer "
        "<key>` or `X-API-Key: <key>`), else 401 `unauthorized`. An unknown route is 404 "
        "`not_found`; a known route with another method is 405 `method_not_allowed`. An "
        "unexpected failure is 500 `internal_error`, its message naming the request id. "
        + limits_text(settings),
    }
    doc["openapi"] = OPENAPI_VERSION
    return doc
