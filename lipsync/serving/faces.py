"""The face of a request: a registered avatar (by id) or inline image/video bytes, and the
render options it implies (a video's own frame rate, the avatar's quality)."""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping
from dataclasses import dataclass

from lipsync.avatars import Avatar, AvatarStore
from lipsync.errors import ErrorCode, InvalidFieldError, NotFoundError
from lipsync.options import RenderOptions


@dataclass(frozen=True)
class Face:
    """A request's avatar and the options to render it with."""

    avatar: Avatar
    options: RenderOptions


def ambiguity(given: dict[str, object]) -> str | None:
    """Why a request naming these faces ({field: value or None}) is ambiguous, or None.

    A request names one face: a client that sent two has a bug it should hear about."""
    named = [name for name, value in given.items() if value is not None]
    if len(named) < 2:
        return None
    first, *others = named
    return f"{first}: given with {' and '.join(others)}; send only one of them"


def check_one_face(given: dict[str, object]) -> None:
    """InvalidFieldError (naming every field given) unless at most one face is named."""
    reason = ambiguity(given)
    if reason is not None:
        field, _, message = reason.partition(": ")
        raise InvalidFieldError(field, message)


def not_found(avatar_id: str) -> NotFoundError:
    return NotFoundError(f"avatar {avatar_id} not found", field="avatar_id")


def check_quality(requested: str | None, avatar: Avatar) -> None:
    """An avatar's frames are fitted to its quality once: a request cannot ask another."""
    if requested is not None and requested != avatar.quality:
        raise InvalidFieldError(
            "quality",
            f"avatar {avatar.avatar_id} was registered with quality {avatar.quality!r}; "
            f"register it again with quality {requested!r}",
        )


def resolve_face(
    store: AvatarStore,
    options: RenderOptions,
    *,
    avatar_id: str | None = None,
    face: bytes | None = None,
    quality: str | None = None,
    timings: MutableMapping[str, float] | None = None,
) -> Face:
    """The avatar `avatar_id` names (NotFoundError when unknown; `quality`, the one the
    request asked, must be its own), or the one `face` bytes make (decoded and detected now
    unless known, not registered), and `options` with its frame rate and quality.

    Runs detection: call it on a native thread. InvalidFieldError when both or neither
    are given."""
    check_one_face({"avatar_id": avatar_id, "image": face})
    if avatar_id is not None:
        avatar = store.get(avatar_id)
        if avatar is None:
            raise not_found(avatar_id)
        check_quality(quality, avatar)
    elif face is not None:
        avatar, _ = store.get_or_create(face, options, persist=False, timings=timings)
    else:
        raise InvalidFieldError(
            "image", "image (or video) or avatar_id is required", code=ErrorCode.MISSING_FIELD
        )
    fps = options.fps if avatar.fps is None else avatar.fps
    return Face(avatar, dataclasses.replace(options, fps=fps, quality=avatar.quality))
