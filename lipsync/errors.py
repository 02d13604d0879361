"""Errors that carry their HTTP meaning. The app maps these (and library errors) in one place."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses, with an HTTP status and a stable error code."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status or self.status
        self.field = field


class InvalidFieldError(ServiceError):
    """A missing, malformed or out-of-range request field (400)."""

    code = "invalid_field"

    def __init__(self, field: str, message: str, *, code: str | None = None) -> None:
        text = message if message.startswith(field) else f"{field}: {message}"
        super().__init__(text, code=code, field=field)


class AudioError(ServiceError):
    """Audio that cannot be used: undecodable (415), too long or too short (422)."""

    status = 422
    code = "invalid_audio"
