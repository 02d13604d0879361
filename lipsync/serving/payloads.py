"""Base64 media, decoded one way for every transport."""

from __future__ import annotations

import base64
import binascii

from lipsync.errors import ErrorCode, InvalidInputError


def decode_base64(text: str) -> bytes:
    """The bytes of padded base64 `text`, optionally a `data:<type>;base64,` URL; ASCII
    whitespace inside is skipped. InvalidInputError (`invalid_base64`) saying what is
    wrong; the caller names the field."""
    text = text.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidInputError(
                "data URL must be base64-encoded", code=ErrorCode.INVALID_BASE64
            )
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("is not valid base64", code=ErrorCode.INVALID_BASE64) from None
