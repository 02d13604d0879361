"""Avatars on local disk: one directory per avatar, within a byte budget.

`directory/<id>/` holds meta.json, source.bin (the uploaded file), boxes.npy and crops.npy,
written to a temporary directory and renamed into place, so readers never see a partial
avatar. Every use sets the entry's mtime (one `utime` call): that is the LRU order, and
after each registration the entries beyond the budget leave oldest first (never the one
just stored). An entry that cannot be read or is inconsistent (a truncated array, a bad
meta.json, a source file that no longer decodes) is removed with a warning and answered as
missing: it is the server's damage, not the client's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from lipsync.avatar_store.model import (
    AVATAR_ID_PATTERN,
    Avatar,
    Decoder,
    avatar_from_meta,
    check_meta,
    check_prepared,
)
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
# (last use, bytes, id) of each stored avatar.
Usage = list[tuple[float, int, str]]


class DiskAvatars:
    """Avatars under `directory`, at most `budget_bytes` of them (None: no limit)."""

    shared = False

    def __init__(self, directory: str | Path, decode: Decoder, budget_bytes: int | None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self._decode = decode

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
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.directory))
        try:
            (tmp / SOURCE_FILE).write_bytes(source)
            np.save(tmp / BOXES_FILE, avatar.prepared.boxes)
            np.save(tmp / CROPS_FILE, avatar.prepared.crops)
            (tmp / META_FILE).write_text(json.dumps(avatar.meta()))
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            return False  # another process stored the same avatar first: identical content
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._evict(keep=avatar.avatar_id)
        return True

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
        folder = self.directory / avatar_id
        trash = self.directory / f".trash-{avatar_id}-{os.getpid()}-{threading.get_ident()}"
        try:
            os.rename(folder, trash)  # atomic: readers see all or nothing
        except FileNotFoundError:
            return False  # not stored, or deleted concurrently
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def usage(self) -> Usage:
        """(last use, bytes, id) of every stored avatar, least recently used first."""
        entries = []
        for entry in os.scandir(self.directory):
            if AVATAR_ID_PATTERN.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                try:
                    size = sum(f.stat().st_size for f in os.scandir(entry.path))
                    entries.append((entry.stat().st_mtime, size, entry.name))
                except FileNotFoundError:
                    continue  # deleted meanwhile
        return sorted(entries)

    def _evict(self, keep: str) -> None:
        """Remove the least recently used avatars (not `keep`) until within the budget."""
        if self.budget_bytes is None:
            return
        entries = self.usage()
        total = sum(size for _, size, _ in entries)
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
