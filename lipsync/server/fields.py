"""Field types of the request models: how each kind of field is read and documented.

One factory per kind of field, giving the `Annotated` metadata the models in `schemas.py`
unpack after the field's type (`Annotated[float | None, *number(...)]`, a form mypy
checks). The metadata carries the field's parser (lax where the API is: numbers as text,
`0,10,0,0` lists, `true`/`1` flags, base64 or uploaded media), its JSON Schema for JSON
bodies and, as `Form`, its schema in multipart and urlencoded forms, where every value is
text. A parser refuses with a `PydanticCustomError` whose type is the wire error code
(`invalid_field`, ...); the field comes from the error's location.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from lipsync.avatars import AVATAR_ID_PATTERN
from lipsync.errors import ErrorCode, InvalidInputError
from lipsync.limits import FACE_SIDES, MIN_PAD, Range
from lipsync.serving.payloads import decode_base64

AVATAR_ID_REGEX = AVATAR_ID_PATTERN.pattern
INT_LIST_TEXT = rf"^\s*\[?\s*-?\d+\s*(,\s*-?\d+\s*){{{FACE_SIDES - 1}}}\]?\s*$"
NON_NEGATIVE_INT_LIST_TEXT = rf"^\s*\[?\s*\d+\s*(,\s*\d+\s*){{{FACE_SIDES - 1}}}\]?\s*$"
# Padded base64 of at least one byte, optionally as a data: URL (the server also skips
# whitespace inside it).
_B64_TAIL = r"[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}="
BASE64_PATTERN = (
    r"^(data:[^,]*;base64,)?(([A-Za-z0-9+/]{4})+(" + _B64_TAIL + r")?|" + _B64_TAIL + r")$"
)
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist, _SHORT.maxlevel = 6, 2


@dataclass(frozen=True)
class Form:
    """A field's schema in a form (text values). `media=True`: a file or its base64."""

    schema: dict[str, Any] | None = None
    media: bool = False


def refuse(
    message: str, value: Any = None, code: ErrorCode = ErrorCode.INVALID_FIELD
) -> PydanticCustomError:
    """The error a parser raises: `message`, with a short repr of `value` when given."""
    text = message if value is None else f"{message}, got {_SHORT.repr(value)}"
    return PydanticCustomError(code.code, "{reason}", {"reason": text})


# -- parsers -------------------------------------------------------------------------------


def parse_number(value: Any) -> float | None:
    """A finite number, or its text ("25", " 29.97 ")."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise refuse("must be a number", value) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refuse("must be a finite number", value)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range, e.g. 10**400
        raise refuse("must be a finite number, got a huge integer") from None
    if not math.isfinite(number):
        raise refuse("must be a finite number", value)
    return number


def parse_int_list(value: Any) -> list[int] | None:
    """Four integers: a list, `0,10,0,0` or a JSON list as text; "" and "null" mean none."""
    if value is None or value in ("", "null"):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [int(v) for v in text.split(",")]
        except (ValueError, RecursionError):
            raise refuse("must be 4 integers", text) from None
    if not isinstance(value, list) or len(value) != FACE_SIDES:
        raise refuse("must be a list of 4 integers", value)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise refuse("must be a list of 4 integers", value)
    return value


def parse_flag(value: Any) -> bool | None:
    """true/false, or their text: "true", "false", "1", "0" (any case)."""
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if value is not None and not isinstance(value, bool):
        raise refuse("must be true or false", value)
    return value


def parse_choice(value: Any, choices: tuple[str, ...]) -> str | None:
    if value is not None and value not in choices:
        raise refuse(f"must be one of {list(choices)}", value)
    return value


def parse_media(value: Any) -> bytes | None:
    """Uploaded bytes, or base64 text (optionally a data: URL). Empty or null: not given."""
    if not value:
        return None
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise refuse("must be a base64 string")
    try:
        data = decode_base64(value)
    except InvalidInputError as exc:
        raise refuse(exc.message, code=exc.code) from None
    if not data:
        raise refuse("is empty")
    return data


def parse_avatar_id(value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and AVATAR_ID_PATTERN.fullmatch(value)):
        raise refuse("must be 32 lowercase hex digits", value, ErrorCode.INVALID_AVATAR_ID)
    return value


# -- field types ---------------------------------------------------------------------------

MEDIA_DOC = (
    "Base64 of the file's bytes; a `data:<type>;base64,<data>` URL is accepted too. "
    "`null` or an empty string means not given."
)


def media(description: str, *, nullable: bool = True) -> tuple[Any, ...]:
    """A media field (`bytes | None`): base64 in JSON, a file upload (or base64 text) in a
    form."""
    schema = {
        "type": ["string", "null"] if nullable else "string",
        "minLength": 1,
        "pattern": BASE64_PATTERN,
        "contentEncoding": "base64",
        "description": f"{description} {MEDIA_DOC}",
    }
    return PlainValidator(parse_media), WithJsonSchema(schema), Form(media=True)


def in_range(value: float | None, minimum: float, maximum: float) -> float | None:
    if value is not None and not minimum <= value <= maximum:
        raise refuse(f"must be between {minimum:g} and {maximum:g}", value)
    return value


def non_negative(values: list[int] | None) -> list[int] | None:
    if values is not None and any(v < MIN_PAD for v in values):
        raise refuse("must be 4 non-negative integers", values)
    return values


def _ranged(
    parse: Callable[[Any], float | int | None],
    json_type: str,
    limit: Range,
    description: str,
    default: float,
    form: dict[str, Any],
) -> tuple[Any, ...]:
    """A numeric field read by `parse`, within `limit`, documented as `json_type` in JSON
    and by the `form` schema in forms."""
    minimum, maximum = limit.minimum, limit.maximum
    return (
        BeforeValidator(parse),
        AfterValidator(lambda value: in_range(value, minimum, maximum)),
        WithJsonSchema(
            {
                "type": [json_type, "null"],
                "minimum": minimum,
                "maximum": maximum,
                "description": description,
            }
        ),
        Field(json_schema_extra={"default": default}),
        Form(form),
    )


def number(limit: Range, description: str, default: float) -> tuple[Any, ...]:
    """A number field (`float | None`) within `limit`."""
    sign = "[+-]" if limit.minimum < 0 else "[+]"
    form = {
        "type": "string",
        "pattern": rf"^\s*{sign}?\d+(\.\d+)?\s*$",
        "description": f"a number {limit.text}",
    }
    return _ranged(parse_number, "number", limit, description, default, form)


def parse_integer(value: Any) -> int | None:
    """An integer, or its text ("3"); not a bool, not 2.5."""
    number = parse_number(value)
    if number is None:
        return None
    if isinstance(value, bool) or not number.is_integer():
        raise refuse("must be an integer", value)
    return int(number)


def integer(limit: Range, description: str, default: int) -> tuple[Any, ...]:
    """An integer field (`int | None`) within `limit`."""
    form = {"type": "string", "pattern": r"^\s*[+]?\d+\s*$"}
    return _ranged(parse_integer, "integer", limit, description, default, form)


def int_list(description: str, *, unsigned: bool, default: Any) -> tuple[Any, ...]:
    """A field of four integers (`list[int] | None`), non-negative when `unsigned`."""
    item: dict[str, Any] = {"type": "integer", **({"minimum": MIN_PAD} if unsigned else {})}
    form = (
        {"pattern": NON_NEGATIVE_INT_LIST_TEXT, "description": "`0,10,0,0` or a JSON list"}
        if unsigned
        else {
            "pattern": r"^(|null|" + INT_LIST_TEXT[1:-1] + r")$",
            "description": "`top,bottom,left,right`, a JSON list, or empty / `null` for none",
        }
    )
    return (
        BeforeValidator(parse_int_list),
        AfterValidator(non_negative if unsigned else lambda values: values),
        WithJsonSchema(
            {
                "type": ["array", "null"],
                "items": item,
                "minItems": FACE_SIDES,
                "maxItems": FACE_SIDES,
                "description": description,
            }
        ),
        Field(json_schema_extra={"default": default}),
        Form({"type": "string", **form}),
    )


def flag(description: str, default: bool) -> tuple[Any, ...]:
    """A true/false field (`bool | None`)."""
    return (
        BeforeValidator(parse_flag),
        WithJsonSchema({"type": ["boolean", "null"], "description": description}),
        Field(json_schema_extra={"default": default}),
        Form({"type": "string", "enum": ["true", "false", "1", "0"]}),
    )


def choice(
    choices: tuple[str, ...], description: str, default: str | None = None
) -> tuple[Any, ...]:
    """One of `choices` (`str | None`). Without `default`, the default is the server's (a
    setting: `lipsync.serving.options.SERVER_DEFAULTS`, filled into the document)."""
    schema = {"type": ["string", "null"], "enum": [*choices, None], "description": description}
    return (
        PlainValidator(lambda value: parse_choice(value, choices)),
        WithJsonSchema(schema),
        *(() if default is None else (Field(json_schema_extra={"default": default}),)),
        Form({"type": "string", "enum": list(choices)}),
    )


_AVATAR_ID = (
    PlainValidator(parse_avatar_id),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": AVATAR_ID_REGEX,
            "description": "a registered avatar (its own pads/box/smooth apply); 400 "
            "`invalid_avatar_id` when malformed, 404 `avatar_not_found` when unknown",
        }
    ),
    Form({"type": "string", "pattern": AVATAR_ID_REGEX}),
)
AvatarId = Annotated[str | None, *_AVATAR_ID]
# In a URL path the id is always there.
PathAvatarId = Annotated[str, *_AVATAR_ID]
