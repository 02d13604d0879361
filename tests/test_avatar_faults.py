"""The local avatar store under faults: a full disk refuses a registration and leaves no
trace (no phantom in any worker's memory, no temporary), a delete or an eviction on one
worker is seen by every other one at once, and temporaries left by a killed worker are
removed when a store opens (those of live registrations are kept, and count in the
budget). Workers are AvatarStores on one directory; decode and detection are the test
doubles of test_avatar_lru, so no model runs.

A full disk comes two ways (`FullDisk`): `tmpfs`, a real, small tmpfs mounted under the
test's directory (root only; skipped where mounting is refused), filled with a file until
the kernel answers ENOSPC; `injected`, a plain directory where `os.write` (the lowest
write the disk backend makes) raises ENOSPC for files under it while it is "full"."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_avatar_disk import entry_bytes, register, stored_ids, worker
from test_avatar_lru import decode, image_bytes, prepare

from lipsync.avatar_store import temporaries
from lipsync.avatar_store.disk import SOURCE_FILE, DiskAvatars
from lipsync.avatars import AvatarStore, avatar_id_for
from lipsync.errors import ErrorCode, StorageFullError
from lipsync.options import RenderOptions

MODES = ("tmpfs", "injected")
TMPFS_BYTES = 4 * 1024 * 1024
CHUNK = 4096


class FullDisk:
    """`.directory` (the avatar directory), `.fill()`, `.free()`, `.close()`."""

    def __init__(self, mode: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mode = mode
        self.mount = root / "fs"
        self.mount.mkdir()
        self.directory = self.mount / "avatars"
        self.filler = self.mount / "filler"
        self.full = False
        self.mounted = False
        if mode == "tmpfs":
            self._mount()
        else:
            self._inject(monkeypatch)
        self.directory.mkdir()

    def _mount(self) -> None:
        command = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(self.mount)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except OSError as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted = True

    def _inject(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_write = os.write
        prefix = str(self.mount) + os.sep

        def write(fd: int, data) -> int:
            if self.full and os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)

    def fill(self) -> None:
        """No byte left: the filesystem's last page taken (tmpfs), or every write refused."""
        self.full = True
        if not self.mounted:
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while True:
                os.write(fd, b"\0" * CHUNK)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)

    def free(self) -> None:
        self.full = False
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mount)], check=True, timeout=30)
            self.mounted = False


@pytest.fixture(params=MODES)
def full_disk(request, tmp_path, monkeypatch):
    disk = FullDisk(request.param, tmp_path, monkeypatch)
    yield disk
    disk.close()


def listed(store: AvatarStore) -> list[str]:
    return [meta["avatar_id"] for meta in store.list()]


def test_a_full_disk_refuses_a_registration_and_keeps_serving(full_disk):
    directory = full_disk.directory
    first, second = worker(directory), worker(directory)
    kept = register(first, 0)
    assert second.get(kept) is not None  # in both workers' memory
    full_disk.fill()
    with pytest.raises(StorageFullError) as raised:
        register(first, 1)
    assert raised.value.code is ErrorCode.STORAGE_FULL
    assert os.listdir(directory) == [kept]  # no temporary left, nothing half-stored
    # Not in the memory of the worker that prepared it either: prepared anew for a raw image.
    assert first.get_or_create(image_bytes(1), RenderOptions(), persist=False)[1]
    refused = avatar_id_for(image_bytes(1), RenderOptions())
    for store in (first, second, worker(directory)):  # no phantom, on any worker
        assert store.get(refused) is None and store.meta(refused) is None
        assert listed(store) == [kept]
        assert store.get(kept) is not None and store.meta(kept)["avatar_id"] == kept
    raw, created = first.get_or_create(image_bytes(2), RenderOptions(), persist=False)
    assert created and raw.prepared.num_frames == 1  # a raw image needs no room
    full_disk.free()
    assert first.get_or_create(image_bytes(1), RenderOptions(), persist=True)[1]
    assert second.get(refused) is not None and sorted(listed(second)) == sorted([kept, refused])


def test_a_delete_on_one_worker_is_seen_by_the_others(tmp_path):
    first, second = worker(tmp_path), worker(tmp_path)
    avatar_id = register(first, 0)
    assert second.get(avatar_id) is not None  # now in second's memory
    assert first.delete(avatar_id)
    assert second.get(avatar_id) is None and second.meta(avatar_id) is None
    assert listed(second) == [] and not second.delete(avatar_id)
    created = second.get_or_create(image_bytes(0), RenderOptions(), persist=True)[1]
    assert created and first.get(avatar_id) is not None  # registered anew, seen by the first


def test_an_eviction_by_another_worker_is_seen_by_all(tmp_path):
    budget = int(1.5 * entry_bytes(tmp_path))  # room for one
    directory = tmp_path / "avatars"
    first, second = worker(directory, budget), worker(directory, budget)
    evicted = register(first, 0)
    assert first.get(evicted) is not None
    newest = register(second, 1)
    assert stored_ids(directory) == {newest}
    assert first.get(evicted) is None and listed(first) == [newest]


def test_a_face_prepared_for_a_raw_image_is_not_registered(tmp_path):
    prepared = []

    def counting_prepare(frames, options, timings):
        prepared.append(len(frames))
        return prepare(frames, options, timings)

    def fresh_worker() -> AvatarStore:
        return AvatarStore(DiskAvatars(tmp_path, decode, None), 1 << 30, decode, counting_prepare)

    probe = fresh_worker()
    raw, created = probe.get_or_create(image_bytes(3), RenderOptions(), persist=False)
    assert created and probe.get(raw.avatar_id) is None and probe.list() == []
    store = fresh_worker()
    store.get_or_create(image_bytes(3), RenderOptions(), persist=False)
    assert store.list() == [] and prepared == [1, 1]
    registered, created = store.get_or_create(image_bytes(3), RenderOptions(), persist=True)
    assert created and registered.avatar_id == raw.avatar_id
    assert prepared == [1, 1]  # stored as prepared for the raw image: no detection again
    assert store.get(raw.avatar_id) is not None and listed(probe) == [raw.avatar_id]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leave(directory, name: str, nbytes: int = 1000, age_s: float = 0) -> None:
    """A temporary as a registration writes it, last changed `age_s` ago."""
    folder = directory / name
    folder.mkdir()
    (folder / SOURCE_FILE).write_bytes(b"\0" * nbytes)
    then = time.time() - age_s
    os.utime(folder, (then, then))


def test_temporaries_of_dead_workers_are_removed_when_a_store_opens(tmp_path):
    host, dead, long_ago = socket.gethostname(), dead_pid(), temporaries.STALE_AFTER_S + 60
    avatar_id = register(worker(tmp_path), 0)
    stale = {  # name: last changed (s ago)
        f".tmp-{host}-{dead}-k3j2h1gf": 0,  # a worker killed mid-registration
        f".trash-{host}-{dead}-{avatar_id}.1402": 0,  # ... mid-delete
        f".tmp-elsewhere-{os.getpid()}-a1b2c3d4": long_ago,  # another machine's, abandoned
        ".tmp-x8y7z6w5": long_ago,  # no owner in its name (older versions), abandoned
    }
    live = {
        temporaries.owned_prefix(temporaries.TMP) + "q9r8s7t6",  # this process registering
        f".tmp-elsewhere-{dead}-m1n2o3p4",  # another machine's, being written
    }
    for name, age_s in stale.items():
        leave(tmp_path, name, age_s=age_s)
    for name in live:
        leave(tmp_path, name, nbytes=700)
    (tmp_path / ".tmp-notes").write_text("not a directory: not the store's")
    seen = []
    DiskAvatars(tmp_path, decode, None, observe=lambda *found: seen.append(found))
    assert set(os.listdir(tmp_path)) == live | {avatar_id, ".tmp-notes"}
    assert seen == [(2, 1400, 4)]  # present, their bytes, removed


def test_temporaries_count_in_the_disk_budget(tmp_path):
    size = entry_bytes(tmp_path)
    directory = tmp_path / "avatars"
    store = worker(directory, int(2.5 * size))  # room for two avatars
    first = register(store, 0)
    assert stored_ids(directory) == {first}
    leave(directory, temporaries.owned_prefix(temporaries.TMP) + "inflight", nbytes=size)
    second = register(store, 1)  # with the temporary, the first no longer fits
    assert stored_ids(directory) == {second}
