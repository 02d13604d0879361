"""Avatars on local disk: one directory per avatar, within a byte budget.

`directory/<id>/` holds meta.json, source.bin (the uploaded file), boxes.npy and crops.npy,
written to a temporary directory and renamed into place, so readers never see a partial
avatar. Every use sets the entry's mtime (one `utime` call): that is the LRU order, and
after each registration the entries beyond the budget leave oldest first (never the one
just stored). An entry that cannot be read or is inconsistent (a truncated array, a bad
meta.json, a source file that no longer decodes) is removed with a warning and answered as
missing: it is the server's damage, not the client's.

A full disk (ENOSPC, or a quota's EDQUOT) makes a registration a StorageFullError; nothing
of it stays. Temporaries (`temporaries`: a registration's before its rename, a deleted
entry's before its removal) count in the budget while they exist; those a killed worker
left are removed when a store opens and after each registration.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lipsync.avatar_store import temporaries
from lipsync.avatar_store.model import (
    AVATAR_ID_PATTERN,
    Avatar,
    Decoder,
    avatar_from_meta,
    check_meta,
    check_prepared,
)
from lipsync.avatar_store.temporaries import Temporary
from lipsync.errors import StorageFullError
from lipsync.faces import PreparedFace
from lipsync.media.sizing import fit_frames

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
SOURCE_FILE = "source.bin"
BOXES_FILE = "boxes.npy"
CROPS_FILE = "crops.npy"
# What reading a damaged entry raises (a truncated .npy is a ValueError, so is bad JSON
# and a source file that no longer decodes; a missing file an OSError).
DAMAGE = (OSError, ValueError, KeyError, TypeError, EOFError)
# What a write raises when the filesystem (or the user's quota) has no room left.
FULL = (errno.ENOSPC, errno.EDQUOT)
# (last use, bytes, id) of each stored avatar.
Usage = list[tuple[float, int, str]]
Present = list[Temporary]
# Told after each scan of the directory: (temporaries present, their bytes, stale removed).
TemporariesObserver = Callable[[int, int, int], None]


class DiskAvatars:
    """Avatars under `directory`, at most `budget_bytes` of them (None: no limit).

    `observe` is told what each scan found (temporaries present and removed)."""

    def __init__(
        self,
        directory: str | Path,
        decode: Decoder,
        budget_bytes: int | None,
        observe: TemporariesObserver | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self._decode = decode
        self._observe = observe
        self.scan()  # removes what killed workers left

    def load(self, avatar_id: str) -> Avatar | None:
        folder = self.directory / avatar_id
        if not folder.is_dir():
            return None
        try:
            meta = check_meta(json.loads((folder / META_FILE).read_text()), avatar_id)
            boxes = np.load(folder / BOXES_FILE, allow_pickle=False)
            crops = np.load(folder / CROPS_FILE, allow_pickle=False)
            frames, _ = self._decode((folder / SOURCE_FILE).read_bytes())
            frames = fit_frames(frames, meta["quality"])
            check_prepared(meta, frames, boxes, crops)
            avatar = avatar_from_meta(meta, PreparedFace(frames=frames, boxes=boxes, crops=crops))
        except DAMAGE as exc:
            self._discard(avatar_id, exc)
            return None
        self.touch(avatar_id)
        logger.info("loaded avatar %s from %s", avatar_id, folder)
        return avatar

    def meta(self, avatar_id: str) -> dict | None:
        meta = self._read_meta(avatar_id)
        if meta is not None:
            self.touch(avatar_id)
        return meta

    def _read_meta(self, avatar_id: str) -> dict | None:
        """meta.json, checked (a damaged entry is removed); not a use of the avatar."""
        path = self.directory / avatar_id / META_FILE
        try:
            meta = check_meta(json.loads(path.read_text()), avatar_id)
        except FileNotFoundError:
            if path.parent.is_dir():  # an entry without its metadata
                self._discard(avatar_id, FileNotFoundError(f"no {META_FILE}"))
            return None
        except DAMAGE as exc:
            self._discard(avatar_id, exc)
            return None
        return meta

    def save(self, avatar: Avatar, source: bytes) -> bool:
        target = self.directory / avatar.avatar_id
        if self.touch(avatar.avatar_id):
            return False
        try:
            self._write(avatar, source, target)
        except OSError as exc:
            if target.is_dir():
                return False  # another process stored the same avatar first: identical content
            if exc.errno in FULL:
                raise self._full(avatar.avatar_id, exc) from None
            raise
        self._evict(keep=avatar.avatar_id)
        return True

    def _write(self, avatar: Avatar, source: bytes, target: Path) -> None:
        """The entry's files in a temporary directory of this process, renamed to `target`."""
        prefix = temporaries.owned_prefix(temporaries.TMP)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self.directory))
        try:
            write_file(tmp / SOURCE_FILE, source)
            write_file(tmp / BOXES_FILE, npy_bytes(avatar.prepared.boxes))
            write_file(tmp / CROPS_FILE, npy_bytes(avatar.prepared.crops))
            write_file(tmp / META_FILE, json.dumps(avatar.meta()).encode())
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _full(self, avatar_id: str, exc: OSError) -> StorageFullError:
        free = shutil.disk_usage(self.directory).free
        logger.error(
            "cannot store avatar %s: %s is full (%s; %d bytes free): free space or lower "
            "LIPSYNC_AVATAR_DISK_BUDGET_MB",
            avatar_id,
            self.directory,
            os.strerror(exc.errno or errno.ENOSPC),
            free,
        )
        return StorageFullError("the avatar store's disk is full")

    def touch(self, avatar_id: str) -> bool:
        try:
            os.utime(self.directory / avatar_id)
        except FileNotFoundError:
            return False
        return True

    def list(self) -> list[dict]:
        metas = []
        for folder in self.directory.iterdir():
            if AVATAR_ID_PATTERN.fullmatch(folder.name):
                meta = self._read_meta(folder.name)
                if meta is not None:
                    metas.append(meta)
        return metas

    def delete(self, avatar_id: str) -> bool:
        return self._remove(self.directory / avatar_id)

    def _remove(self, path: Path) -> bool:
        """Remove a directory of the store: whether this call did (not another one)."""
        tail = path.name.lstrip(".").replace("-", "_")  # the owner is read up to a "-"
        owned = temporaries.owned_prefix(temporaries.TRASH)
        trash = self.directory / f"{owned}{tail}.{threading.get_ident()}"
        try:
            os.rename(path, trash)  # atomic: readers see all or nothing, one remover wins
        except FileNotFoundError:
            return False  # not there, or removed concurrently
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def usage(self) -> Usage:
        """(last use, bytes, id) of every stored avatar, least recently used first."""
        return self.scan()[0]

    def scan(self) -> tuple[Usage, Present]:
        """The stored avatars (as `usage`) and the temporaries still present, after removing
        the stale ones (left by a killed worker); `observe` is told."""
        entries: Usage = []
        present: Present = []
        removed = 0
        now = time.time()
        for entry in os.scandir(self.directory):
            try:
                if is_temporary_dir(entry):
                    found = temporary(entry, now)
                    if found.stale:
                        removed += self._remove_stale(found)
                    else:
                        present.append(found)
                elif is_entry(entry):
                    size = temporaries.tree_bytes(entry.path)
                    entries.append((entry.stat().st_mtime, size, entry.name))
            except FileNotFoundError:
                continue  # renamed or removed meanwhile
        if self._observe is not None:
            self._observe(len(present), sum(t.nbytes for t in present), removed)
        return sorted(entries), present

    def _remove_stale(self, found: Temporary) -> bool:
        if not self._remove(found.path):
            return False  # another worker's scan removed it
        logger.warning(
            "removed %s from the avatar directory (%d bytes): left by a worker that stopped "
            "mid-registration or mid-delete",
            found.path.name,
            found.nbytes,
        )
        return True

    def _evict(self, keep: str) -> None:
        """Remove the least recently used avatars (not `keep`) until within the budget,
        which the temporaries present count in."""
        entries, present = self.scan()
        if self.budget_bytes is None:
            return
        total = sum(size for _, size, _ in entries) + sum(t.nbytes for t in present)
        for _, size, avatar_id in entries:
            if total <= self.budget_bytes:
                break
            if avatar_id != keep and self.delete(avatar_id):
                total -= size
                logger.info(
                    "avatar %s left the disk (least recently used; budget %d bytes)",
                    avatar_id,
                    self.budget_bytes,
                )

    def _discard(self, avatar_id: str, reason: BaseException) -> None:
        if self.delete(avatar_id):  # else it was deleted meanwhile: not damage
            logger.warning(
                "avatar %s on disk is damaged (%s: %s): removed, answered as missing",
                avatar_id,
                type(reason).__name__,
                reason,
            )


def is_entry(entry: os.DirEntry) -> bool:
    """Whether `entry` is a stored avatar's directory."""
    return bool(AVATAR_ID_PATTERN.fullmatch(entry.name)) and entry.is_dir(follow_symlinks=False)


def is_temporary_dir(entry: os.DirEntry) -> bool:
    """Whether `entry` is a temporary directory of the store (`temporaries`)."""
    return temporaries.is_temporary(entry.name) and entry.is_dir(follow_symlinks=False)


def temporary(entry: os.DirEntry, now: float) -> Temporary:
    """The temporary `entry` of the directory, at time `now` (FileNotFoundError if gone)."""
    age_s = now - entry.stat(follow_symlinks=False).st_mtime
    stale = temporaries.is_stale(entry.name, age_s)
    return Temporary(Path(entry.path), temporaries.tree_bytes(entry.path), stale)


def write_file(path: Path, data: bytes) -> None:
    """A new file holding `data`, written with `os.write` (OSError ENOSPC on a full disk)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def npy_bytes(array: np.ndarray) -> bytes:
    """The array in .npy format."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
