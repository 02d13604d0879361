"""Avatars in Redis, shared by every worker and machine.

One key per avatar, `lipsync:avatar:<id>`, holding the `codec` blob (metadata first, so a
metadata read is one range read). Ids are content hashes, so a registration is `SET NX`:
concurrent registrations of one file on any workers store it once and agree on the answer.
With a TTL, every use (`GET`/`GETRANGE` with `EXPIRE`, or `EXPIRE` alone to confirm a
worker's memory copy) restarts the clock, so only unused avatars expire; without one,
every use is a read or a `TOUCH`, which keeps Redis's LRU clock right for `allkeys-lru`.
A blob that fails to decode or validate is deleted (a warning is logged) and answered as
missing, so the client may register the file again.

A registration refused for lack of memory (`maxmemory` under `noeviction`) is a
StorageFullError (`507`); every other Redis error (refused, reset, timed out after
`timeout_s`, read-only) becomes AvatarStoreUnavailableError: a `503` with `Retry-After`.
redis-py reconnects on the next call, so the store recovers by itself when Redis is back.
Connections are made per OS thread: under gevent a socket belongs to the event loop of the
thread that made it, and requests reach the store on the hub's native threads
(lipsync/server/offload.py).
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lipsync.avatar_store import codec
from lipsync.avatar_store.model import AVATAR_ID_PATTERN, Avatar, Decoder
from lipsync.errors import AvatarStoreUnavailableError, StorageFullError

logger = logging.getLogger(__name__)

KEY_PREFIX = "lipsync:avatar:"
# The first range read of a blob for its metadata: an image's is ~300 bytes, a 750-frame
# video's (its boxes) ~25 kB, which takes a second read.
META_READ_BYTES = 16 * 1024
# What a metadata read asks for: the blob's first bytes and its length (is it whole?).
HEAD = (("getrange", 0, META_READ_BYTES - 1), ("strlen",))
SCAN_COUNT = 500
# One retry on a fresh connection after a connection error: a connection broken by a Redis
# restart is replaced at once, while a Redis that is down fails fast. A timeout is not
# retried: a hung Redis costs a request one timeout, not two.
RETRIES = 1


def _thread_local() -> Any:
    """A thread-local of OS threads (gevent patches `_thread._local` to greenlet-local)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("_thread", "_local")()
    return _thread._local()


def redacted(url: str) -> str:
    """The URL without its credentials, for logs."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()


class RedisAvatars:
    """Avatars in the Redis at `url`; unused ones expire after `ttl_s` (0: never)."""

    def __init__(
        self, url: str, decode: Decoder, *, ttl_s: int, timeout_s: float, retry_after_s: int
    ) -> None:
        self._url = url
        self.where = redacted(url)
        self._decode = decode
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._local = _thread_local()

    def client(self) -> redis.Redis:
        """This OS thread's client (its own connection pool)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = redis.Redis.from_url(
                self._url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), RETRIES, supported_errors=(redis.ConnectionError,)),
            )
            self._local.client = client
        return client

    # -- the backend protocol (lipsync.avatar_store.model.AvatarBackend) ------------------

    def load(self, avatar_id: str) -> Avatar | None:
        key = KEY_PREFIX + avatar_id
        with self.reaching("reading an avatar"):
            (blob,) = self._used(key, ("get",))
        if blob is None:
            return None
        try:
            avatar = codec.decode(blob, avatar_id, self._decode)
        except codec.DamagedBlobError as exc:
            self._discard(avatar_id, exc)
            return None
        logger.info("loaded avatar %s from %s (%d bytes)", avatar_id, self.where, len(blob))
        return avatar

    def meta(self, avatar_id: str) -> dict | None:
        key = KEY_PREFIX + avatar_id
        with self.reaching("reading an avatar's metadata"):
            head, length = self._used(key, *HEAD)
            return self._head_meta(avatar_id, head, length)

    def save(self, avatar: Avatar, source: bytes) -> bool:
        key = KEY_PREFIX + avatar.avatar_id
        blob = codec.encode(avatar, source)
        with self.reaching("storing an avatar"):
            client = self.client()
            try:
                stored = client.set(key, blob, nx=True, ex=self.ttl_s or None)
            except redis.OutOfMemoryError as exc:  # maxmemory reached under `noeviction`
                raise self._full(avatar.avatar_id, len(blob), exc) from None
            if not stored and self.ttl_s:
                client.expire(key, self.ttl_s)  # registered again: a use
        if stored:
            logger.info(
                "stored avatar %s in %s (%d bytes)", avatar.avatar_id, self.where, len(blob)
            )
        return bool(stored)

    def touch(self, avatar_id: str) -> bool:
        key = KEY_PREFIX + avatar_id
        with self.reaching("confirming an avatar"):
            client = self.client()
            found = client.expire(key, self.ttl_s) if self.ttl_s else client.touch(key)
        return bool(found)

    def list(self) -> list[dict]:
        metas = []
        with self.reaching("listing avatars"):
            client = self.client()
            keys = [k.decode() for k in client.scan_iter(match=KEY_PREFIX + "*", count=SCAN_COUNT)]
            ids = [k.removeprefix(KEY_PREFIX) for k in keys]
            ids = [i for i in ids if AVATAR_ID_PATTERN.fullmatch(i)]
            pipe = client.pipeline(transaction=False)
            for avatar_id in ids:
                for name, *args in HEAD:
                    getattr(pipe, name)(KEY_PREFIX + avatar_id, *args)
            replies = pipe.execute()
            for avatar_id, head, length in zip(ids, replies[::2], replies[1::2], strict=True):
                meta = self._head_meta(avatar_id, head, length)
                if meta is not None:
                    metas.append(meta)
        return metas

    def delete(self, avatar_id: str) -> bool:
        with self.reaching("deleting an avatar"):
            return bool(self.client().delete(KEY_PREFIX + avatar_id))

    # -- helpers ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def reaching(self, what: str) -> Iterator[None]:
        """Turn Redis's errors into AvatarStoreUnavailableError (503, Retry-After)."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("avatar store %s unreachable while %s: %s", self.where, what, exc)
            raise AvatarStoreUnavailableError(
                f"the avatar store is unavailable ({what} failed: {type(exc).__name__})",
                self.retry_after_s,
            ) from None
        except redis.RedisError as exc:  # e.g. OOM under noeviction, READONLY replica
            logger.error("avatar store %s refused %s: %s", self.where, what, exc)
            raise AvatarStoreUnavailableError(
                f"the avatar store refused {what} ({type(exc).__name__})", self.retry_after_s
            ) from None

    def _full(self, avatar_id: str, nbytes: int, exc: redis.OutOfMemoryError) -> StorageFullError:
        logger.error(
            "cannot store avatar %s (%d bytes): %s is out of memory (%s): raise its maxmemory "
            "or choose an evicting maxmemory-policy",
            avatar_id,
            nbytes,
            self.where,
            exc,
        )
        return StorageFullError("the avatar store is out of memory")

    def _used(self, key: str, *commands: tuple[Any, ...]) -> tuple[Any, ...]:
        """The replies of `(command, *args)` on the key, and its TTL restarted, in one round
        trip."""
        pipe = self.client().pipeline(transaction=False)
        for name, *args in commands:
            getattr(pipe, name)(key, *args)
        if self.ttl_s:
            pipe.expire(key, self.ttl_s)
        return tuple(pipe.execute()[: len(commands)])

    def _head_meta(self, avatar_id: str, head: bytes, length: int) -> dict | None:
        """The metadata from a blob's first bytes (read more if they fall short) and its
        length; None if the avatar is missing or damaged (then deleted)."""
        if not head:
            return None
        try:
            if codec.blob_length(head) != length:
                raise codec.DamagedBlobError(f"{length} bytes, its header says more or less")
            end = codec.meta_end(head)
            if end > len(head):
                head = cast(bytes, self.client().getrange(KEY_PREFIX + avatar_id, 0, end - 1))
            return codec.read_meta(head, avatar_id)
        except codec.DamagedBlobError as exc:
            self._discard(avatar_id, exc)
            return None

    def _discard(self, avatar_id: str, reason: Exception) -> None:
        logger.warning(
            "avatar %s in %s is damaged (%s): deleted, answered as missing",
            avatar_id,
            self.where,
            reason,
        )
        with self.reaching("deleting a damaged avatar"):
            self.client().delete(KEY_PREFIX + avatar_id)
