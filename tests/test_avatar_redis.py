"""The Redis avatar backend against a real redis-server (the `redis_server` fixture).

Stores here are what gunicorn workers or machines hold: separate AvatarStores (each with
its own memory LRU) on one Redis. Decoding and preparation are the test doubles of
test_avatar_lru (OpenCV decode, a fixed box), so no model runs.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import redis
from test_avatar_lru import decode, image_bytes, prepare

from lipsync.avatar_store import codec
from lipsync.avatar_store.shared import KEY_PREFIX, RedisAvatars, redacted
from lipsync.avatars import AvatarStore, avatar_id_for, open_store
from lipsync.errors import AvatarStoreUnavailableError, ErrorCode, StorageFullError
from lipsync.options import RenderOptions
from lipsync.settings import Settings

RETRY_AFTER_S = 3


def worker(url: str, ttl_s: int = 0, max_bytes: int = 1 << 30) -> AvatarStore:
    backend = RedisAvatars(url, decode, ttl_s=ttl_s, timeout_s=0.5, retry_after_s=RETRY_AFTER_S)
    return AvatarStore(backend, max_bytes, decode, prepare)


def register(store: AvatarStore, seed: int = 0) -> tuple[str, bool]:
    avatar, created = store.get_or_create(image_bytes(seed), RenderOptions(), persist=True)
    return avatar.avatar_id, created


def calls(url: str, command: str) -> int:
    """How many times Redis ran `command` (INFO commandstats)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


def test_workers_see_each_others_registrations(redis_url):
    first, second = worker(redis_url), worker(redis_url)
    avatar_id, created = register(first)
    assert created
    assert second.meta(avatar_id) == first.meta(avatar_id)
    loaded = second.get(avatar_id)
    original = first.get(avatar_id)
    for name in ("frames", "boxes", "crops", "inputs"):
        np.testing.assert_array_equal(
            getattr(loaded.prepared, name), getattr(original.prepared, name)
        )
    assert [m["avatar_id"] for m in second.list()] == [avatar_id]
    assert register(second) == (avatar_id, False)  # idempotent, also from another worker


def test_registration_is_set_if_absent(redis_url):
    client = redis.Redis.from_url(redis_url)
    avatar_id, _ = register(worker(redis_url))
    blob = client.get(KEY_PREFIX + avatar_id)
    results = [register(worker(redis_url)) for _ in range(3)]  # fresh workers: memory empty
    assert results == [(avatar_id, False)] * 3
    assert client.get(KEY_PREFIX + avatar_id) == blob  # never overwritten
    assert client.dbsize() == 1


def test_concurrent_registrations_on_several_workers_store_once(redis_url):
    workers = [worker(redis_url) for _ in range(4)]
    barrier = threading.Barrier(len(workers))
    results = []

    def run(store: AvatarStore) -> None:
        barrier.wait()
        results.append(register(store, 7))

    threads = [threading.Thread(target=run, args=(store,)) for store in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({avatar_id for avatar_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert redis.Redis.from_url(redis_url).dbsize() == 1


def test_memory_is_a_read_through_cache(redis_url):
    avatar_id, _ = register(worker(redis_url))
    reader = worker(redis_url)
    gets = calls(redis_url, "get")
    for _ in range(3):
        assert reader.get(avatar_id) is not None
    assert calls(redis_url, "get") == gets + 1  # the blob was fetched once
    assert calls(redis_url, "touch") >= 2  # later uses only confirmed it


def test_a_delete_on_one_worker_is_seen_by_the_others(redis_url):
    first, second = worker(redis_url), worker(redis_url)
    avatar_id, _ = register(first)
    assert second.get(avatar_id) is not None  # now in second's memory too
    assert first.delete(avatar_id)
    assert second.get(avatar_id) is None and second.meta(avatar_id) is None
    assert second.list() == [] and not second.delete(avatar_id)
    assert register(second) == (avatar_id, True)  # registered anew


def test_redis_out_of_memory_refuses_a_registration_and_keeps_serving(redis_url):
    client = redis.Redis.from_url(redis_url)
    first, second = worker(redis_url), worker(redis_url)
    kept, _ = register(first)
    assert second.get(kept) is not None
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # below what it holds: every write is refused
    try:
        with pytest.raises(StorageFullError) as raised:
            register(first, 1)
        assert raised.value.code is ErrorCode.STORAGE_FULL
        refused = avatar_id_for(image_bytes(1), RenderOptions())
        for store in (first, second):  # no phantom in the memory of the worker that tried
            assert store.get(refused) is None and store.meta(refused) is None
            assert [m["avatar_id"] for m in store.list()] == [kept]
            assert store.get(kept) is not None
        raw, created = first.get_or_create(image_bytes(2), RenderOptions(), persist=False)
        assert created and raw.prepared.num_frames == 1
    finally:
        client.config_set("maxmemory", "0")
    assert register(first, 1) == (refused, True)


def test_a_raw_image_is_not_registered(redis_url):
    store = worker(redis_url)
    avatar, created = store.get_or_create(image_bytes(1), RenderOptions(), persist=False)
    assert created and redis.Redis.from_url(redis_url).dbsize() == 0
    assert store.get(avatar.avatar_id) is None  # an id is valid only once registered
    assert register(store, 1) == (avatar.avatar_id, True)  # prepared already: stored now


def test_the_ttl_restarts_on_every_use(redis_url):
    client = redis.Redis.from_url(redis_url)
    store = worker(redis_url, ttl_s=600)
    avatar_id, _ = register(store)
    key = KEY_PREFIX + avatar_id
    assert 590 <= client.ttl(key) <= 600
    for use in (store.get, store.meta, worker(redis_url, ttl_s=600).get):
        client.expire(key, 5)
        assert use(avatar_id) is not None
        assert client.ttl(key) > 590, use
    client.expire(key, 5)
    assert register(store) == (avatar_id, False) and client.ttl(key) > 590
    client.delete(key)  # what expiry does
    assert store.get(avatar_id) is None


def test_without_a_ttl_avatars_do_not_expire(redis_url):
    avatar_id, _ = register(worker(redis_url))
    assert redis.Redis.from_url(redis_url).ttl(KEY_PREFIX + avatar_id) == -1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "old version"])
def test_a_damaged_entry_is_missing_and_can_be_registered_again(redis_url, caplog, damage):
    client = redis.Redis.from_url(redis_url)
    avatar_id, _ = register(worker(redis_url))
    key = KEY_PREFIX + avatar_id
    blob = client.get(key)
    damaged = {
        "garbage": b"\x00" * 100,
        "truncated": blob[: len(blob) // 2],
        "old version": blob[:4] + (0).to_bytes(2, "little") + blob[6:],
    }[damage]
    for read in ("get", "meta"):
        client.set(key, damaged)
        with caplog.at_level(logging.WARNING, "lipsync.avatar_store.shared"):
            assert getattr(worker(redis_url), read)(avatar_id) is None
        assert "damaged" in caplog.text and not client.exists(key)
    client.set(key, damaged)
    assert worker(redis_url).list() == [] and not client.exists(key)
    assert register(worker(redis_url)) == (avatar_id, True)
    assert codec.decode(client.get(key), avatar_id, decode).avatar_id == avatar_id


def test_redis_down_is_unavailable_for_registered_avatars_then_recovers(redis_server, redis_url):
    store = worker(redis_url)
    avatar_id, _ = register(store)
    redis_server.stop()
    try:
        for call in (
            lambda: store.get(avatar_id),  # cached, but cannot be confirmed
            lambda: store.meta(avatar_id),
            lambda: store.list(),
            lambda: store.delete(avatar_id),
            lambda: register(store, 2),
            lambda: worker(redis_url).get(avatar_id),
        ):
            with pytest.raises(AvatarStoreUnavailableError) as raised:
                call()
            assert raised.value.code is ErrorCode.AVATAR_STORE_UNAVAILABLE
            assert raised.value.retry_after == RETRY_AFTER_S
        raw, created = store.get_or_create(image_bytes(3), RenderOptions(), persist=False)
        assert created and raw.prepared.num_frames == 1  # a raw image needs no Redis
    finally:
        redis_server.start()  # empty again: this server keeps nothing on disk
    assert store.get(avatar_id) is None  # the same store, no restart: answers again
    assert register(store) == (avatar_id, True)
    assert worker(redis_url).get(avatar_id) is not None


def test_a_hung_redis_is_unavailable_and_raw_images_skip_it(redis_server, redis_url):
    store = worker(redis_url)
    avatar_id, _ = register(store)
    loads = []
    load = store.backend.load
    store.backend.load = lambda i: loads.append(i) or load(i)  # a spy: counts, changes nothing
    redis_server.pause()
    try:
        with pytest.raises(AvatarStoreUnavailableError, match="TimeoutError"):
            store.get(avatar_id)  # cached: its confirmation times out
        for seed in (4, 5):
            raw, created = store.get_or_create(image_bytes(seed), RenderOptions(), persist=False)
            assert created and raw.prepared.num_frames == 1
        assert len(loads) == 1  # after one failure, raw images skip Redis for a while
    finally:
        redis_server.resume()
    assert store.get(avatar_id) is not None  # the same store answers again


def test_open_store_follows_the_settings(redis_url, tmp_path):
    shared = open_store(
        Settings(avatar_store=redis_url, avatar_ttl_s=60, avatar_store_timeout_s=0.25),
        decode,
        prepare,
    )
    assert isinstance(shared.backend, RedisAvatars) and shared.backend.ttl_s == 60
    assert shared.backend.timeout_s == 0.25
    local = open_store(Settings(avatar_dir=tmp_path, avatar_disk_budget_mb=1.5), decode, prepare)
    assert local.backend.budget_bytes == int(1.5 * 1024 * 1024)
    assert open_store(Settings(avatar_dir=None), decode, prepare).backend is None


def test_store_settings_are_validated():
    for good in ("local", "redis://r:6379/0", "rediss://:pw@r/1", "unix:///run/redis.sock"):
        assert Settings.load(environ={"LIPSYNC_AVATAR_STORE": good}).avatar_store == good
    with pytest.raises(ValueError, match="LIPSYNC_AVATAR_STORE"):
        Settings.load(environ={"LIPSYNC_AVATAR_STORE": "http://r:6379"})
    with pytest.raises(ValueError, match="LIPSYNC_AVATAR_TTL_S"):
        Settings.load(environ={"LIPSYNC_AVATAR_TTL_S": "-1"})
    with pytest.raises(ValueError, match="LIPSYNC_AVATAR_DISK_BUDGET_MB"):
        Settings.load(environ={"LIPSYNC_AVATAR_DISK_BUDGET_MB": "0"})
    assert "secret" not in repr(Settings(avatar_store="redis://:secret@r:6379/0"))
    assert redacted("redis://user:secret@r:6379/2") == "redis://r:6379/2"
