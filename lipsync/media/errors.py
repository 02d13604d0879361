"""Typed errors for rejected client media: invalid input with a media error code."""

from __future__ import annotations

from lipsync.errors import ErrorCode, InvalidInputError


class MediaError(InvalidInputError):
    """A client-supplied medium was rejected; `code` says why."""

    default_code = ErrorCode.INVALID_MEDIA


class UnsupportedMediaError(MediaError):
    """Not an image/video we can read: unknown format, corrupt, truncated or empty."""

    default_code = ErrorCode.UNSUPPORTED_MEDIA


class MediaTooLargeError(MediaError):
    """Over a limit: IMAGE_TOO_LARGE, VIDEO_TOO_LARGE (pixels per frame) or VIDEO_TOO_LONG
    (frames or duration)."""

    default_code = ErrorCode.MEDIA_TOO_LARGE
