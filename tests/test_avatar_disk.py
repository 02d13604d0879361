"""The local avatar directory: a byte budget with least recently used avatars leaving
first, and damaged entries answered as missing (404), removed, with a warning."""

from __future__ import annotations

import json
import logging
import os

import cv2
import pytest
from helpers import FACE_BOX, assert_error, b64, wav_bytes
from test_avatar_lru import decode, image_bytes, prepare

from lipsync.avatar_store.disk import BOXES_FILE, CROPS_FILE, META_FILE, SOURCE_FILE, DiskAvatars
from lipsync.avatars import AvatarStore
from lipsync.options import RenderOptions
from lipsync.server.app import create_app


def entry_bytes(tmp_path) -> int:
    """What one avatar of these tests costs on disk."""
    backend = DiskAvatars(tmp_path / "probe", decode, None)
    AvatarStore(backend, 1 << 30, decode, prepare).get_or_create(
        image_bytes(99), RenderOptions(), persist=True
    )
    ((_, size, _),) = backend.usage()
    return size


def worker(directory, budget: int | None = None) -> AvatarStore:
    """A fresh process on the directory (nothing in memory)."""
    return AvatarStore(DiskAvatars(directory, decode, budget), 1 << 30, decode, prepare)


def register(store: AvatarStore, seed: int) -> str:
    return store.get_or_create(image_bytes(seed), RenderOptions(), persist=True)[0].avatar_id


def stored_ids(directory) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith(".")}


def test_the_least_recently_used_avatar_leaves_the_disk_first(tmp_path):
    directory = tmp_path / "avatars"
    budget = int(2.5 * entry_bytes(tmp_path))  # room for two
    store = worker(directory, budget)
    first, second = register(store, 0), register(store, 1)
    os.utime(directory / first, (100, 100))  # long unused...
    os.utime(directory / second, (200, 200))
    assert worker(directory, budget).get(first) is not None  # ...until now (another worker)
    third = register(store, 2)
    assert stored_ids(directory) == {first, third}
    assert sum(size for _, size, _ in store.backend.usage()) <= budget
    os.utime(directory / first, (100, 100))
    assert store.get(first) is not None  # a use served from memory counts too
    fourth = register(store, 3)  # the third, unused since stored, leaves
    assert stored_ids(directory) == {first, fourth}


def test_a_new_avatar_larger_than_the_budget_is_kept_alone(tmp_path):
    store = worker(tmp_path, budget=1)
    register(store, 0)
    newest = register(store, 1)
    assert stored_ids(tmp_path) == {newest}


def damage(folder, name: str) -> None:
    """Truncate one of an entry's files, or make it garbage."""
    path = folder / name
    if name == META_FILE:
        path.write_text("{not json")
    else:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("name", [BOXES_FILE, CROPS_FILE, META_FILE, SOURCE_FILE])
def test_a_damaged_entry_is_missing_and_removed(tmp_path, caplog, name):
    avatar_id = register(worker(tmp_path), 0)
    damage(tmp_path / avatar_id, name)
    with caplog.at_level(logging.WARNING, "lipsync.avatar_store.disk"):
        assert worker(tmp_path).get(avatar_id) is None
    assert f"avatar {avatar_id} on disk is damaged" in caplog.text
    assert stored_ids(tmp_path) == set()
    again = worker(tmp_path).get_or_create(image_bytes(0), RenderOptions(), persist=True)
    assert again[1] and worker(tmp_path).get(avatar_id) is not None  # registered anew


@pytest.mark.parametrize(
    "meta",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"avatar_id": "0" * 32}),
        None,  # meta.json missing
    ],
)
def test_damaged_metadata_is_missing_for_meta_and_list(tmp_path, meta):
    avatar_id = register(worker(tmp_path), 0)
    kept = register(worker(tmp_path), 1)
    path = tmp_path / avatar_id / META_FILE
    if meta is None:
        path.unlink()
    else:
        path.write_text(meta)
    assert [m["avatar_id"] for m in worker(tmp_path).list()] == [kept]
    assert stored_ids(tmp_path) == {kept}
    damage(tmp_path / kept, META_FILE)
    assert worker(tmp_path).meta(kept) is None and stored_ids(tmp_path) == set()


def test_an_entry_of_inconsistent_arrays_is_missing(tmp_path):
    avatar_id = register(worker(tmp_path), 0)
    folder = tmp_path / avatar_id
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "boxes": [[0, 500, 0, 500]]}))
    assert worker(tmp_path).get(avatar_id) is None and stored_ids(tmp_path) == set()


def test_a_truncated_array_is_404_not_422(untrained_models, tmp_path, face_image):
    def client():
        settings = {"models_dir": untrained_models, "cache_dir": None, "avatar_dir": tmp_path}
        return create_app(settings).test_client()

    face = cv2.imencode(".jpg", face_image)[1].tobytes()
    registered = client().post("/api/avatars", json={"image": b64(face), "box": list(FACE_BOX)})
    avatar_id = registered.get_json()["avatar_id"]
    damage(tmp_path / avatar_id, CROPS_FILE)
    payload = {"avatar_id": avatar_id, "audio": b64(wav_bytes(0.3))}
    assert_error(client().post("/api/generate", json=payload), 404, "avatar_not_found")
    assert_error(client().get(f"/api/avatars/{avatar_id}"), 404, "avatar_not_found")
    fresh = client()
    assert (
        fresh.post("/api/avatars", json={"image": b64(face), "box": list(FACE_BOX)}).status_code
        == 201
    )
    assert fresh.post("/api/generate", json=payload).status_code == 200
