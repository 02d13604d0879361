"""Small helpers shared across the pipeline."""

from __future__ import annotations

import _thread
import contextlib
import hashlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T", bound="Sequence[Any] | np.ndarray")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers whose messages are whole JSON documents, written bare (one parseable line each).
JSON_LOGGERS = ("lipsync.access",)


class _Handler(logging.StreamHandler):
    """A stderr handler installed by configure_logging (replaced when it is called again)."""


class _NotJson(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(JSON_LOGGERS)


class _Json(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(JSON_LOGGERS)


def configure_logging(
    verbose: bool = False, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Log to `stream` (stderr) at `level` ("debug" ... "critical"; default INFO, DEBUG if
    `verbose`).

    Text lines (LOG_FORMAT) for every logger except JSON_LOGGERS, whose messages are written
    bare so that each line is one JSON document. Calling it again replaces the handlers.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    text, bare = _Handler(stream), _Handler(stream)
    text.setFormatter(logging.Formatter(LOG_FORMAT))
    text.addFilter(_NotJson())
    bare.setFormatter(logging.Formatter("%(message)s"))
    bare.addFilter(_Json())
    root.addHandler(text)
    root.addHandler(bare)
    root.setLevel(level.upper() if level else logging.DEBUG if verbose else logging.INFO)


def batched(items: T, size: int) -> Iterator[T]:
    """Consecutive slices of `items` of length `size` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield cast(T, items[start : start + size])


@contextlib.contextmanager
def timed(timings: MutableMapping[str, float] | None, stage: str) -> Iterator[None]:
    """Add the wall time of the block, in seconds, to `timings[stage]` (no-op for None)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


# Mode of a new file before the umask, as `open()` and every other tool create files; the
# rename keeps the sibling's mode, so the sibling is created with it (not mkstemp's 0600).
NEW_FILE_MODE = 0o666


def write_atomically(path: Path, data: bytes) -> None:
    """Write a hidden sibling of `path`, then rename it: no half-written file under `path`,
    and no sibling left behind when writing fails. The file's mode is 0666 less the
    process's umask (e.g. 0644 under umask 022), as for any file the user creates."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def native_lock() -> _thread.LockType:
    """A lock of the OS threads, also in a gevent worker (where `threading.Lock` is a
    greenlet lock): for state shared with the native threads that run inference."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("_thread", "allocate_lock")()
    return _thread.allocate_lock()


def native_rlock() -> _thread.RLock:
    """A re-entrant lock of the OS threads (gevent does not patch `_thread.RLock`)."""
    return _thread.RLock()
