"""Avatar store: faces prepared once (detection, boxes, 96x96 crops), reused by id.

An avatar id is the sha256 (first 32 hex digits) of the uploaded file's bytes and the
face-preparation options (pads, box, smooth, quality): the same file with the same options
always gets the same id. The quality mode fixes the avatar's frame size (frames are fitted
to it once, before detection), so one file has an avatar per quality. Prepared avatars
live in a byte-bounded in-memory LRU and, when registered, on disk under `directory/<id>/`
(written to a temporary directory and renamed into place, so readers never see a partial
avatar), where a restarted process or another gunicorn worker finds them without running
the detector again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from _thread import LockType
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.errors import ErrorCode, InvalidFieldError
from lipsync.faces import PreparedFace
from lipsync.media.sizing import fit_frames
from lipsync.options import RenderOptions
from lipsync.util import native_lock, timed

logger = logging.getLogger(__name__)

AVATAR_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
META_FILE = "meta.json"
SOURCE_FILE = "source.bin"
BOXES_FILE = "boxes.npy"
CROPS_FILE = "crops.npy"
# Avatars stored before quality modes existed were prepared at the input's size.
STORED_QUALITY_BEFORE_MODES = "original"


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
    """Refuse anything but 32 lowercase hex digits (ids become directory names)."""
    if not isinstance(avatar_id, str) or not AVATAR_ID_PATTERN.fullmatch(avatar_id):
        raise InvalidFieldError(
            "avatar_id",
            f"must be 32 lowercase hex digits, got {avatar_id!r}",
            code=ErrorCode.INVALID_AVATAR_ID,
        )
    return avatar_id


# Decodes uploaded bytes into frames and the clip's fps (None for an image).
Decoder = Callable[[bytes], tuple[np.ndarray, float | None]]
# Detects and crops: (frames, options, stage timings) -> PreparedFace.
Preparer = Callable[[np.ndarray, RenderOptions, MutableMapping[str, float] | None], PreparedFace]


class AvatarStore:
    """Thread-safe LRU of prepared avatars (bounded in bytes) backed by a directory."""

    def __init__(
        self, directory: str | Path | None, max_bytes: int, decode: Decoder, prepare: Preparer
    ) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._decode = decode
        self._prepare = prepare
        self._memory: OrderedDict[str, Avatar] = OrderedDict()
        # Native locks: avatars are prepared on OS threads, also in a gevent worker.
        self._lock = native_lock()
        self._creating: dict[str, LockType] = {}

    # -- lookup ----------------------------------------------------------------------------

    def get(self, avatar_id: str) -> Avatar | None:
        """The avatar from memory, else from disk (without detection), else None."""
        check_avatar_id(avatar_id)
        with self._lock:
            avatar = self._memory.get(avatar_id)
            if avatar is not None:
                self._memory.move_to_end(avatar_id)
                return avatar
        avatar = self._load(avatar_id)
        if avatar is not None:
            self._remember(avatar)
        return avatar

    def meta(self, avatar_id: str) -> dict | None:
        """An avatar's metadata from memory or its meta.json, without loading its frames."""
        check_avatar_id(avatar_id)
        with self._lock:
            avatar = self._memory.get(avatar_id)
        if avatar is not None:
            return avatar.meta()
        if not self.directory:
            return None
        try:
            return _read_meta(self.directory / avatar_id / META_FILE)
        except FileNotFoundError:
            return None

    def get_or_create(
        self,
        data: bytes,
        options: RenderOptions,
        *,
        persist: bool,
        timings: MutableMapping[str, float] | None = None,
    ) -> tuple[Avatar, bool]:
        """The avatar for these bytes and options, prepared at most once. -> (avatar, created)."""
        avatar_id = avatar_id_for(data, options)
        with self._lock:
            creating = self._creating.setdefault(avatar_id, native_lock())
        with creating:  # concurrent registrations of one file prepare it once
            avatar = self.get(avatar_id)
            created = avatar is None
            if avatar is None:
                with timed(timings, "decode_face"):
                    frames, fps = self._decode(data)
                avatar = Avatar(
                    avatar_id=avatar_id,
                    kind="image" if fps is None else "video",
                    fps=fps,
                    prepared=self._prepare(frames, options, timings),
                    pads=options.pads,
                    box=options.box,
                    smooth=options.smooth,
                    created=time.time(),
                    quality=options.quality,
                )
                self._remember(avatar)
            if persist and self.directory and not (self.directory / avatar_id).is_dir():
                self._save(self.directory, avatar, data)
        with self._lock:
            self._creating.pop(avatar_id, None)
        return avatar, created

    def list(self) -> list[dict]:
        """Metadata of every stored avatar (disk and memory), newest first."""
        with self._lock:
            metas = {a.avatar_id: a.meta() for a in self._memory.values()}
        if self.directory:
            for meta_path in self.directory.glob(f"*/{META_FILE}"):
                if AVATAR_ID_PATTERN.fullmatch(meta_path.parent.name):
                    metas.setdefault(meta_path.parent.name, _read_meta(meta_path))
        return sorted(metas.values(), key=lambda m: m["created_at"], reverse=True)

    def delete(self, avatar_id: str) -> bool:
        """Forget an avatar in memory and on disk. -> whether it existed."""
        check_avatar_id(avatar_id)
        with self._lock:
            existed = self._memory.pop(avatar_id, None) is not None
        if self.directory and (self.directory / avatar_id).is_dir():
            trash = self.directory / f".trash-{avatar_id}-{os.getpid()}-{threading.get_ident()}"
            try:
                os.rename(self.directory / avatar_id, trash)  # atomic: readers see all or nothing
            except FileNotFoundError:
                pass  # deleted concurrently
            else:
                shutil.rmtree(trash, ignore_errors=True)
                existed = True
        return existed

    # -- memory ----------------------------------------------------------------------------

    def _remember(self, avatar: Avatar) -> None:
        with self._lock:
            self._memory[avatar.avatar_id] = avatar
            self._memory.move_to_end(avatar.avatar_id)
            total = sum(a.nbytes for a in self._memory.values())
            while total > self.max_bytes and len(self._memory) > 1:
                _, evicted = self._memory.popitem(last=False)
                total -= evicted.nbytes

    # -- disk ------------------------------------------------------------------------------

    def _save(self, directory: Path, avatar: Avatar, data: bytes) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
        try:
            (tmp / SOURCE_FILE).write_bytes(data)
            np.save(tmp / BOXES_FILE, avatar.prepared.boxes)
            np.save(tmp / CROPS_FILE, avatar.prepared.crops)
            (tmp / META_FILE).write_text(json.dumps(avatar.meta()))
            os.rename(tmp, directory / avatar.avatar_id)
        except OSError:
            if not (directory / avatar.avatar_id).is_dir():
                raise
            # Another process stored the same avatar first: identical content, keep theirs.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _load(self, avatar_id: str) -> Avatar | None:
        if not self.directory:
            return None
        folder = self.directory / avatar_id
        try:
            meta = json.loads((folder / META_FILE).read_text())
            data = (folder / SOURCE_FILE).read_bytes()
            boxes = np.load(folder / BOXES_FILE, allow_pickle=False)
            crops = np.load(folder / CROPS_FILE, allow_pickle=False)
        except FileNotFoundError:
            return None
        quality = meta.get("quality", STORED_QUALITY_BEFORE_MODES)
        frames, fps = self._decode(data)
        frames = fit_frames(frames, quality)
        logger.info("loaded avatar %s from %s", avatar_id, folder)
        return Avatar(
            avatar_id=avatar_id,
            kind=meta["kind"],
            fps=fps,
            prepared=PreparedFace(frames=frames, boxes=boxes, crops=crops),
            pads=tuple(meta["pads"]),
            box=tuple(meta["box"]) if meta["box"] else None,
            smooth=meta["smooth"],
            created=meta["created_at"],
            quality=quality,
        )


def _read_meta(path: Path) -> dict:
    """A stored avatar's meta.json (those stored before quality modes were 'original')."""
    return {"quality": STORED_QUALITY_BEFORE_MODES, **json.loads(path.read_text())}
