"""Typed errors for rejected client media; the HTTP layer maps them to 413 or 415."""

from __future__ import annotations


class MediaError(ValueError):
    """A client-supplied medium was rejected; `code` is a stable machine-readable reason."""

    code: str = "invalid_media"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnsupportedMediaError(MediaError):
    """Not an image/video we can read: unknown format, corrupt, truncated or empty."""

    code = "unsupported_media"


class MediaTooLargeError(MediaError):
    """Within the limits no more: codes "image_too_large", "video_too_large" (pixels per
    frame) or "video_too_long" (frames or duration)."""

    code = "media_too_large"
