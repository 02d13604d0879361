"""A prepared avatar, its content-derived id, and what an avatar backend provides."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lipsync.errors import ErrorCode, InvalidFieldError
from lipsync.faces import PreparedFace
from lipsync.options import RenderOptions
from lipsync.runtime.wav2lip import FACE_SIZE

AVATAR_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
KINDS = ("image", "video")
# Avatars stored before quality modes existed were prepared at the input's size.
STORED_QUALITY_BEFORE_MODES = "original"

# Decodes uploaded bytes into frames and the clip's fps (None for an image).
Decoder = Callable[[bytes], tuple[np.ndarray, float | None]]
# Detects and crops: (frames, options, stage timings) -> PreparedFace.
Preparer = Callable[[np.ndarray, RenderOptions, MutableMapping[str, float] | None], PreparedFace]


@dataclass(frozen=True)
class Avatar:
    """A prepared face: frames, boxes and crops, plus what describes it to clients."""

    avatar_id: str
    kind: str  # "image" or "video"
    fps: float | None
    prepared: PreparedFace
    pads: tuple[int, int, int, int]
    box: tuple[int, int, int, int] | None
    smooth: bool
    created: float
    quality: str = "standard"

    @property
    def nbytes(self) -> int:
        p = self.prepared
        return p.frames.nbytes + p.crops.nbytes + p.inputs.nbytes + p.boxes.nbytes

    def meta(self) -> dict:
        height, width = self.prepared.frames.shape[1:3]
        return {
            "avatar_id": self.avatar_id,
            "kind": self.kind,
            "width": int(width),
            "height": int(height),
            "num_frames": self.prepared.num_frames,
            "fps": self.fps,
            "boxes": self.prepared.boxes.tolist(),
            "pads": list(self.pads),
            "box": list(self.box) if self.box else None,
            "smooth": self.smooth,
            "quality": self.quality,
            "created_at": self.created,
        }


def avatar_from_meta(meta: dict[str, Any], prepared: PreparedFace) -> Avatar:
    """The avatar described by stored metadata (`Avatar.meta()`) with its prepared face.

    KeyError/TypeError/ValueError when the metadata is not an avatar's."""
    return Avatar(
        avatar_id=meta["avatar_id"],
        kind=meta["kind"],
        fps=None if meta["fps"] is None else float(meta["fps"]),
        prepared=prepared,
        pads=_ints(meta["pads"]),
        box=_ints(meta["box"]) if meta["box"] else None,
        smooth=bool(meta["smooth"]),
        created=float(meta["created_at"]),
        quality=meta.get("quality", STORED_QUALITY_BEFORE_MODES),
    )


def _ints(values: Any) -> tuple[int, int, int, int]:
    top, bottom, left, right = (int(v) for v in values)
    return top, bottom, left, right


META_KEYS = frozenset(
    {"avatar_id", "kind", "width", "height", "num_frames", "fps", "boxes", "pads", "box"}
    | {"smooth", "quality", "created_at"}
)


def check_meta(meta: Any, avatar_id: str) -> dict[str, Any]:
    """Stored metadata, if it is this avatar's (`Avatar.meta()`'s keys); else ValueError.
    Metadata stored before quality modes existed is completed with 'original'."""
    if not isinstance(meta, dict):
        raise ValueError(f"metadata is a {type(meta).__name__}, not an object")
    meta = {"quality": STORED_QUALITY_BEFORE_MODES, **meta}
    if META_KEYS - meta.keys():
        raise ValueError(f"metadata lacks {sorted(META_KEYS - meta.keys())}")
    if meta["avatar_id"] != avatar_id or meta["kind"] not in KINDS:
        raise ValueError(f"metadata of {meta['avatar_id']!r} ({meta['kind']!r}), not {avatar_id}")
    return meta


def check_prepared(
    meta: dict[str, Any], frames: np.ndarray, boxes: np.ndarray, crops: np.ndarray | None
) -> None:
    """ValueError unless stored metadata and arrays describe one consistent avatar: frames
    (M, H, W, 3) uint8 with M, H, W as the metadata says; boxes (M, 4) int64 equal to the
    metadata's and inside the frames; crops (None: not stored) (M, FACE_SIZE, FACE_SIZE, 3)
    uint8."""
    count, height, width = meta["num_frames"], meta["height"], meta["width"]
    if frames.dtype != np.uint8 or frames.shape != (count, height, width, 3) or count < 1:
        raise ValueError(f"frames {frames.dtype} {frames.shape}, metadata {count}x{height}x{width}")
    if boxes.dtype != np.int64 or boxes.shape != (count, 4):
        raise ValueError(f"boxes {boxes.dtype} {boxes.shape} for {count} frames")
    face = (count, FACE_SIZE, FACE_SIZE, 3)
    if crops is not None and (crops.dtype != np.uint8 or crops.shape != face):
        raise ValueError(f"crops {crops.dtype} {crops.shape} for {count} frames")
    if boxes.tolist() != meta["boxes"]:
        raise ValueError("boxes differ from the metadata's")
    top, bottom, left, right = boxes.T
    inside = (top >= 0) & (top < bottom) & (bottom <= height) & (left >= 0)
    if not (inside & (left < right) & (right <= width)).all():
        raise ValueError(f"a box is outside the {width}x{height} frames")


def avatar_id_for(data: bytes, options: RenderOptions) -> str:
    """Content-derived id: sha256 over the file bytes and the face-preparation options."""
    digest = hashlib.sha256(data)
    face_options = [
        list(options.pads),
        options.box and list(options.box),
        options.smooth,
        options.fill_missing_faces,
        options.quality,
    ]
    digest.update(json.dumps(face_options).encode())
    return digest.hexdigest()[:32]


def check_avatar_id(avatar_id: str) -> str:
    """Refuse anything but 32 lowercase hex digits (ids become directory names and keys)."""
    if not isinstance(avatar_id, str) or not AVATAR_ID_PATTERN.fullmatch(avatar_id):
        raise InvalidFieldError(
            "avatar_id",
            f"must be 32 lowercase hex digits, got {avatar_id!r}",
            code=ErrorCode.INVALID_AVATAR_ID,
        )
    return avatar_id


class AvatarBackend(Protocol):
    """Where registered avatars are kept beyond one process's memory: the truth for every
    worker, whose memory copy is confirmed with `touch` on every use (so a delete, an
    eviction or an expiry anywhere is seen everywhere).

    Lookups of a damaged entry remove it and answer as for a missing one. A backend that
    cannot be reached raises AvatarStoreUnavailableError; one without room for a new avatar,
    StorageFullError.
    """

    def load(self, avatar_id: str) -> Avatar | None:
        """The stored avatar (frames decoded), or None."""
        ...

    def meta(self, avatar_id: str) -> dict | None:
        """The stored avatar's metadata (`Avatar.meta()`) without its frames, or None."""
        ...

    def save(self, avatar: Avatar, source: bytes) -> bool:
        """Store the avatar (prepared from `source`) unless it is: whether it was stored now."""
        ...

    def touch(self, avatar_id: str) -> bool:
        """Note a use of the avatar (its LRU rank, its TTL): whether it is stored."""
        ...

    def list(self) -> list[dict]:
        """Metadata of every stored avatar, in no particular order."""
        ...

    def delete(self, avatar_id: str) -> bool:
        """Forget the avatar: whether it was stored."""
        ...
