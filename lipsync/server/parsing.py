"""Reading a request into its model: JSON or a form, one validation, errors naming the field.

A JSON body must be an object; a multipart or urlencoded form gives its text fields and
its uploaded files (read to bytes). Either way the result is validated by the same model
(lipsync/server/schemas.py), and the first problem becomes an `InvalidFieldError` with
the error code its parser chose.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import Request
from pydantic import BaseModel, ValidationError

from lipsync.errors import ErrorCode, InvalidFieldError, InvalidInputError

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
VIDEO_MIME_TYPES = {"video/webm": "webm", "video/mp4": "mp4"}

Model = TypeVar("Model", bound=BaseModel)


class InvalidBodyError(InvalidInputError):
    """The body is neither a JSON object nor a form."""

    default_code = ErrorCode.INVALID_JSON


def read_json(req: Request) -> Any:
    """The parsed JSON body. Refuses bodies that are not JSON, not UTF-8/16/32, or nested
    deeper than the parser can go (which Werkzeug's silent get_json lets through as a
    RecursionError)."""
    if not req.is_json:
        raise InvalidBodyError(
            "body must be a JSON object (Content-Type: application/json) or multipart/form-data"
        )
    try:
        return json.loads(req.get_data(cache=True))
    except RecursionError:
        raise InvalidBodyError("JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise InvalidBodyError(f"body is not valid JSON: {exc}") from None


def request_data(req: Request) -> dict[str, Any]:
    """Fields of a JSON object body or of a form (uploaded files as bytes)."""
    if req.mimetype in FORM_TYPES:
        files = {name: upload.read() for name, upload in req.files.items()}
        return {**req.form.to_dict(), **files}
    body = read_json(req)
    if not isinstance(body, dict):
        raise InvalidBodyError(f"JSON body must be an object, got {type(body).__name__}")
    return body


def validate(model: type[Model], data: Any) -> Model:
    """`model` validated from `data`; InvalidFieldError for its first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise field_error(exc) from None


def parse_request(req: Request, model: type[Model]) -> Model:
    return validate(model, request_data(req))


def field_error(exc: ValidationError) -> InvalidFieldError:
    """The first error of a validation as the API reports it."""
    error = exc.errors(include_url=False, include_input=False)[0]
    reason = error.get("ctx", {}).get("reason") or error["msg"]
    field = str(error["loc"][0]) if error["loc"] else reason.partition(":")[0]
    kind = error["type"]
    if kind == "missing":
        code = ErrorCode.MISSING_FIELD
    else:
        try:
            code = ErrorCode.from_code(kind)
        except ValueError:  # a pydantic check (range, type): the field is wrong
            code = ErrorCode.INVALID_FIELD
    return InvalidFieldError(field, reason, code=code)


def response_mode(req: Request, response: str | None) -> tuple[bool, str | None]:
    """(binary response?, container implied by Accept) from the `response` field and Accept."""
    best = req.accept_mimetypes.best_match(["application/json", *VIDEO_MIME_TYPES])
    container = VIDEO_MIME_TYPES.get(best) if best is not None else None
    return response == "binary" or container is not None, container
