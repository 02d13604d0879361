"""Avatar store: faces prepared once (detection, boxes, 96x96 crops), reused by id.

An avatar id is the sha256 (first 32 hex digits) of the uploaded file's bytes and the
face-preparation options (pads, box, smooth, quality): the same file with the same options
always gets the same id. The quality mode fixes the avatar's frame size (frames are fitted
to it once, before detection), so one file has an avatar per quality. Prepared avatars live
in a byte-bounded in-memory LRU in front of a backend (lipsync/avatar_store/) where
registered ones outlive the process: a local directory within a byte budget (the default;
a restarted process or another gunicorn worker finds them without running the detector
again), or Redis, shared by every worker and machine (`LIPSYNC_AVATAR_STORE=redis://...`).
The backend is the truth and the memory LRU a read-through cache of it: an avatar exists
once the backend has stored it (it enters memory after that, never before), each use of a
cached avatar is confirmed with the backend (a `utime` of its directory, or one Redis
round trip), and metadata and the list are read from the backend, so an avatar deleted,
evicted or expired on one worker is gone on all of them. Memory also keeps faces prepared
for raw images, which are never served by id unless the backend has them.
"""

from __future__ import annotations

import logging
import time
from _thread import LockType
from collections import OrderedDict
from collections.abc import MutableMapping
from pathlib import Path

from lipsync.avatar_store.disk import DiskAvatars, TemporariesObserver
from lipsync.avatar_store.model import (
    AVATAR_ID_PATTERN,
    Avatar,
    AvatarBackend,
    Decoder,
    Preparer,
    avatar_id_for,
    check_avatar_id,
)
from lipsync.avatar_store.shared import RedisAvatars
from lipsync.errors import AvatarStoreUnavailableError
from lipsync.options import RenderOptions
from lipsync.settings import LOCAL_AVATAR_STORE, Settings
from lipsync.util import native_lock, timed

__all__ = ["AVATAR_ID_PATTERN", "Avatar", "AvatarStore", "avatar_id_for", "check_avatar_id"]

logger = logging.getLogger(__name__)
MB = 1024 * 1024


def open_store(
    settings: Settings,
    decode: Decoder,
    prepare: Preparer,
    observe: TemporariesObserver | None = None,
) -> AvatarStore:
    """The store the settings ask for: Redis (LIPSYNC_AVATAR_STORE), else the avatar
    directory within its disk budget (`observe`: told of its temporaries), else memory
    only."""
    backend: AvatarBackend | None = None
    if settings.avatar_store != LOCAL_AVATAR_STORE:
        backend = RedisAvatars(
            settings.avatar_store,
            decode,
            ttl_s=settings.avatar_ttl_s,
            timeout_s=settings.avatar_store_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
    elif settings.avatar_dir is not None:
        budget = int(settings.avatar_disk_budget_mb * MB)
        backend = DiskAvatars(settings.avatar_dir, decode, budget, observe)
    return AvatarStore(backend, int(settings.avatar_cache_mb * MB), decode, prepare)


class AvatarStore:
    """Thread-safe LRU of prepared avatars (bounded in bytes) in front of a backend.

    `backend`: an AvatarBackend, a directory (no disk budget) or None (memory only).
    """

    def __init__(
        self,
        backend: AvatarBackend | str | Path | None,
        max_bytes: int,
        decode: Decoder,
        prepare: Preparer,
    ) -> None:
        if isinstance(backend, str | Path):
            backend = DiskAvatars(backend, decode, None)
        self.backend = backend
        self.max_bytes = max_bytes
        self._decode = decode
        self._prepare = prepare
        self._memory: OrderedDict[str, Avatar] = OrderedDict()
        # Native locks: avatars are prepared on OS threads, also in a gevent worker.
        self._lock = native_lock()
        self._creating: dict[str, LockType] = {}
        # Until then, lookups that may do without the backend (raw images) skip it.
        self._skip_backend_until = 0.0

    # -- lookup ----------------------------------------------------------------------------

    def get(self, avatar_id: str) -> Avatar | None:
        """The stored avatar, else None: this worker's memory copy once the backend confirms
        it still has it, else the backend's (without detection). AvatarStoreUnavailableError
        if Redis is down."""
        check_avatar_id(avatar_id)
        avatar = self._cached(avatar_id)
        if self.backend is None:
            return avatar
        if avatar is not None:
            if self.backend.touch(avatar_id):
                return avatar
            self._forget(avatar_id)  # deleted, evicted or expired since; or never stored
            return None
        avatar = self.backend.load(avatar_id)
        if avatar is not None:
            self._remember(avatar)
        return avatar

    def meta(self, avatar_id: str) -> dict | None:
        """A stored avatar's metadata, read from the backend without loading its frames."""
        check_avatar_id(avatar_id)
        if self.backend is None:
            avatar = self._cached(avatar_id)
            return avatar.meta() if avatar is not None else None
        return self.backend.meta(avatar_id)

    def get_or_create(
        self,
        data: bytes,
        options: RenderOptions,
        *,
        persist: bool,
        timings: MutableMapping[str, float] | None = None,
    ) -> tuple[Avatar, bool]:
        """The avatar for these bytes and options, prepared at most once. -> (avatar, created).

        `persist`: register it in the backend (in memory only once stored there); `created`
        then says whether this call did (else whether it prepared the avatar now). Without
        `persist` (a raw image) an unreachable backend is skipped: the face is prepared here.
        StorageFullError when the backend has no room for it.
        """
        avatar_id = avatar_id_for(data, options)
        with self._lock:
            creating = self._creating.setdefault(avatar_id, native_lock())
        try:
            with creating:  # concurrent requests for one file prepare it once per process
                if persist and self.backend is not None:
                    return self._register(self.backend, avatar_id, data, options, timings)
                # A raw image (stored or not), or the memory-only store's registration.
                avatar = self._cached(avatar_id) or self._optional_load(avatar_id)
                if avatar is not None:
                    return avatar, False
                avatar = self._make(avatar_id, data, options, timings)
                self._remember(avatar)
                return avatar, True
        finally:
            with self._lock:
                self._creating.pop(avatar_id, None)

    def list(self) -> list[dict]:
        """Metadata of every stored avatar (the backend's, else memory's), newest first."""
        if self.backend is not None:
            metas = self.backend.list()
        else:
            with self._lock:
                metas = [a.meta() for a in self._memory.values()]
        return sorted(metas, key=lambda m: m["created_at"], reverse=True)

    def delete(self, avatar_id: str) -> bool:
        """Forget an avatar in the backend and in memory. -> whether it was stored."""
        check_avatar_id(avatar_id)
        if self.backend is None:
            return self._forget(avatar_id)
        stored = self.backend.delete(avatar_id)
        self._forget(avatar_id)
        return stored

    # -- memory and backend ----------------------------------------------------------------

    def _register(
        self,
        backend: AvatarBackend,
        avatar_id: str,
        data: bytes,
        options: RenderOptions,
        timings: MutableMapping[str, float] | None,
    ) -> tuple[Avatar, bool]:
        """Store the avatar unless the backend has it, then remember it: (avatar, created).
        A copy in memory (prepared for a raw image) is stored without detecting again."""
        avatar = self._cached(avatar_id)
        if avatar is not None and backend.touch(avatar_id):
            return avatar, False
        if avatar is None:
            avatar = backend.load(avatar_id)
            if avatar is not None:
                self._remember(avatar)
                return avatar, False
            avatar = self._make(avatar_id, data, options, timings)
        created = backend.save(avatar, data)  # raises: nothing remembered
        self._remember(avatar)
        return avatar, created

    def _optional_load(self, avatar_id: str) -> Avatar | None:
        """The backend's copy if it is reachable (a raw image can be prepared without it)."""
        if self.backend is None or time.monotonic() < self._skip_backend_until:
            return None
        try:
            avatar = self.backend.load(avatar_id)
        except AvatarStoreUnavailableError as exc:
            self._skip_backend_until = time.monotonic() + exc.retry_after
            logger.warning("preparing the face here: %s", exc.message)
            return None
        if avatar is not None:
            self._remember(avatar)
        return avatar

    def _cached(self, avatar_id: str) -> Avatar | None:
        with self._lock:
            avatar = self._memory.get(avatar_id)
            if avatar is not None:
                self._memory.move_to_end(avatar_id)
            return avatar

    def _make(
        self,
        avatar_id: str,
        data: bytes,
        options: RenderOptions,
        timings: MutableMapping[str, float] | None,
    ) -> Avatar:
        with timed(timings, "decode_face"):
            frames, fps = self._decode(data)
        return Avatar(
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

    def _forget(self, avatar_id: str) -> bool:
        with self._lock:
            return self._memory.pop(avatar_id, None) is not None

    def _remember(self, avatar: Avatar) -> None:
        with self._lock:
            self._memory[avatar.avatar_id] = avatar
            self._memory.move_to_end(avatar.avatar_id)
            total = sum(a.nbytes for a in self._memory.values())
            while total > self.max_bytes and len(self._memory) > 1:
                _, evicted = self._memory.popitem(last=False)
                total -= evicted.nbytes
