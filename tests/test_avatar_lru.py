"""The avatar store's in-memory LRU: bounded in bytes, least recently used out first.

The store's collaborators (decode the upload, detect and crop) are injected; these tests
give it images decoded with OpenCV and a fixed box, so no model runs and eviction is the
only thing under test.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.avatars import AvatarStore
from lipsync.faces import PreparedFace, crop_faces
from lipsync.options import RenderOptions

SIDE = 64
BOX = (8, 56, 8, 56)


def image_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def decode(data: bytes) -> tuple[np.ndarray, None]:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[None], None


def prepare(frames: np.ndarray, options: RenderOptions, timings) -> PreparedFace:
    boxes = np.tile(np.array(BOX, dtype=np.int64), (len(frames), 1))
    return PreparedFace(frames=frames, boxes=boxes, crops=crop_faces(frames, boxes))


def one_avatar_bytes() -> int:
    """What one avatar of these tests costs in the LRU's accounting."""
    store = AvatarStore(None, 1 << 30, decode, prepare)
    avatar, _ = store.get_or_create(image_bytes(99), RenderOptions(), persist=False)
    return avatar.nbytes


@pytest.fixture
def store() -> AvatarStore:
    """Room for exactly three avatars."""
    return AvatarStore(None, 3 * one_avatar_bytes(), decode, prepare)


def add(store: AvatarStore, seed: int) -> str:
    avatar, created = store.get_or_create(image_bytes(seed), RenderOptions(), persist=False)
    assert created
    return avatar.avatar_id


def test_the_oldest_avatar_leaves_first_when_the_budget_is_full(store):
    ids = [add(store, seed) for seed in range(4)]
    assert store.get(ids[0]) is None
    assert all(store.get(i) is not None for i in ids[1:])


def test_a_lookup_makes_an_avatar_the_most_recent(store):
    ids = [add(store, seed) for seed in range(3)]
    assert store.get(ids[0]) is not None  # now ids[1] is the least recently used
    add(store, 3)
    assert store.get(ids[1]) is None
    assert store.get(ids[0]) is not None and store.get(ids[2]) is not None


def test_memory_stays_within_the_budget(store):
    for seed in range(10):
        add(store, seed)
    listed = store.list()
    assert len(listed) == 3
    assert sum(store.get(m["avatar_id"]).nbytes for m in listed) <= store.max_bytes


def test_an_avatar_larger_than_the_budget_is_still_kept_alone():
    store = AvatarStore(None, 1, decode, prepare)
    first, second = add(store, 0), add(store, 1)
    assert store.get(first) is None
    assert store.get(second) is not None
    assert len(store.list()) == 1


def test_an_evicted_avatar_is_prepared_again_on_request(store):
    ids = [add(store, seed) for seed in range(4)]
    again, created = store.get_or_create(image_bytes(0), RenderOptions(), persist=False)
    assert created and again.avatar_id == ids[0]


def test_metadata_of_a_stored_avatar_is_read_without_decoding_it(tmp_path):
    decoded = []

    def counting_decode(data: bytes):
        decoded.append(len(data))
        return decode(data)

    first = AvatarStore(tmp_path, 1 << 30, counting_decode, prepare)
    avatar, _ = first.get_or_create(image_bytes(5), RenderOptions(), persist=True)
    restarted = AvatarStore(tmp_path, 1 << 30, counting_decode, prepare)  # a new worker
    decoded.clear()
    meta = restarted.meta(avatar.avatar_id)
    assert meta == avatar.meta()
    assert decoded == []  # no frames were loaded for metadata
    assert restarted.meta("0" * 32) is None
