"""Domain errors and the one list of error codes.

Library code raises a `LipSyncError` carrying an `ErrorCode` member and, when there is one,
the field at fault; it never chooses an HTTP status. The HTTP layer (lipsync/server) reads
`ErrorCode.status` to answer, and the OpenAPI document lists the codes from this enum.
Invalid input is also a `ValueError`, so integrators of the Python API can catch it as one.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Stable, machine-readable reasons, each with its HTTP status and meaning."""

    def __init__(self, status: int, description: str) -> None:
        self.status = status
        self.description = description

    @property
    def code(self) -> str:
        return self.name.lower()

    # 400: the request cannot be read or a field is wrong
    INVALID_JSON = (400, "the body is not a JSON object (nor a multipart or urlencoded form)")
    MISSING_FIELD = (400, "a required field is missing (`field` names it)")
    INVALID_FIELD = (400, "a field has the wrong type or is out of range (`field` names it)")
    INVALID_BASE64 = (400, "a media field is not base64 (or a data: URL that is not base64)")
    INVALID_AVATAR_ID = (400, "an avatar id that is not 32 lowercase hex digits")
    BAD_REQUEST = (400, "a request the server cannot parse")
    # 401
    UNAUTHORIZED = (401, "an API key is configured and the request has none or a wrong one")
    # 403
    FORBIDDEN_ORIGIN = (403, "a WebSocket upgrade from an Origin not in LIPSYNC_CORS_ORIGINS")
    # 404
    AVATAR_NOT_FOUND = (404, "no avatar with this id")
    NOT_FOUND = (404, "no such route")
    # 405
    METHOD_NOT_ALLOWED = (405, "the route exists but not with this method")
    # 413: over a limit
    PAYLOAD_TOO_LARGE = (413, "the body is over the configured limit")
    IMAGE_TOO_LARGE = (413, "the image has more pixels than allowed (read from its header)")
    VIDEO_TOO_LARGE = (413, "the video's frames have more pixels than allowed")
    VIDEO_TOO_LONG = (413, "the video has more frames or seconds than allowed")
    MEDIA_TOO_LARGE = (413, "an uploaded medium is over a limit")
    # 415: cannot be decoded
    UNSUPPORTED_MEDIA = (415, "the image/video cannot be decoded (unknown, truncated, corrupt)")
    UNSUPPORTED_AUDIO = (415, "the audio cannot be decoded, or has NaN/inf samples")
    INVALID_MEDIA = (415, "an uploaded medium was rejected")
    # 422: readable, but unusable
    FACE_NOT_DETECTED = (422, "no face in the image (or in frame N of a video)")
    AUDIO_TOO_LONG = (422, "the speech is longer than allowed")
    AUDIO_TOO_SHORT = (422, "the speech is shorter than one video frame")
    UNSUPPORTED_SAMPLE_RATE = (422, "the audio's sample rate is outside the accepted range")
    INVALID_AUDIO = (422, "the audio cannot be used")
    INVALID_INPUT = (422, "valid fields that do not fit together, e.g. a box outside the image")
    INVALID_VIDEO = (422, "e.g. a face video whose frame rate is outside 1..60 fps")
    # 426
    UPGRADE_REQUIRED = (
        426,
        "a WebSocket upgrade of a version this server does not speak (see the answer's "
        "Sec-WebSocket-Version)",
    )
    # 499: only logged, the client has gone
    CLIENT_DISCONNECTED = (499, "the client closed the connection mid-generation")
    # 500
    INTERNAL_ERROR = (500, "a bug: the server log has the traceback (`message` has the request id)")
    # 503
    OVERLOADED = (
        503,
        "every generation slot is busy and the queue is full: retry after `Retry-After` seconds",
    )
    MODEL_UNAVAILABLE = (503, "the requested model is not installed (the message says how)")
    MODELS_MISSING = (503, "`/health` only: a required model is not installed (`error.fix`)")
    AVATAR_STORE_UNAVAILABLE = (
        503,
        "the shared avatar store (Redis) is down or too slow: retry after `Retry-After` "
        "seconds (requests with an image or video instead of `avatar_id` still work)",
    )
    # 504
    TIMEOUT = (504, "the generation ran over the configured time limit")
    # 507
    STORAGE_FULL = (
        507,
        "the avatar store has no room to register this avatar (its disk is full, or Redis is "
        "out of memory): not transient, an operator must free space; registered avatars and "
        "requests with an image or video still work",
    )

    @classmethod
    def from_code(cls, code: str) -> ErrorCode:
        """The member named by a wire code ("invalid_field"); ValueError if none is."""
        try:
            return cls[code.upper()]
        except KeyError:
            raise ValueError(f"unknown error code {code!r}") from None

    @classmethod
    def answered(cls) -> dict[int, list[ErrorCode]]:
        """Codes an error answer can carry, by status (not 499's, nor /health's own)."""
        out: dict[int, list[ErrorCode]] = {}
        for member in cls:
            if member not in (cls.CLIENT_DISCONNECTED, cls.MODELS_MISSING):
                out.setdefault(member.status, []).append(member)
        return out


class LipSyncError(Exception):
    """A refusal or failure with a stable `code` and, when known, the `field` at fault."""

    default_code = ErrorCode.BAD_REQUEST

    def __init__(
        self, message: str, *, code: ErrorCode | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field


class InvalidInputError(LipSyncError, ValueError):
    """Input that cannot be used (a ValueError too, for callers of the Python API)."""

    default_code = ErrorCode.INVALID_INPUT


class InvalidFieldError(InvalidInputError):
    """A missing, malformed or out-of-range field; the message starts with its name."""

    default_code = ErrorCode.INVALID_FIELD

    def __init__(self, field: str, message: str, *, code: ErrorCode | None = None) -> None:
        text = message if message.startswith(field) else f"{field}: {message}"
        super().__init__(text, code=code, field=field)


class AudioError(InvalidInputError):
    """Speech that cannot be used: undecodable, too long, too short, odd sample rate."""

    default_code = ErrorCode.INVALID_AUDIO


class NotFoundError(LipSyncError, LookupError):
    """Something named by the request does not exist (an avatar id)."""

    default_code = ErrorCode.AVATAR_NOT_FOUND


class AvatarStoreUnavailableError(LipSyncError):
    """The shared avatar store cannot be reached in time: retry after `retry_after` seconds."""

    default_code = ErrorCode.AVATAR_STORE_UNAVAILABLE

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageFullError(LipSyncError):
    """The avatar store cannot take a new avatar: no room left (an operator must act).
    `why`: what is full, for the client ("its disk is full")."""

    default_code = ErrorCode.STORAGE_FULL

    def __init__(self, why: str) -> None:
        super().__init__(
            f"no room left to store the avatar ({why}); registered avatars, and images or "
            "videos sent with each request, still work"
        )


class UnauthorizedError(LipSyncError):
    default_code = ErrorCode.UNAUTHORIZED


class ForbiddenOriginError(LipSyncError):
    """A browser page from an origin that is not allowed opened a WebSocket."""

    default_code = ErrorCode.FORBIDDEN_ORIGIN
