"""Run CPU-bound work on native threads so a gevent worker's event loop never blocks.

In a gevent worker every connection is a greenlet on one event loop (the hub): a client
that stalls mid-body only parks its greenlet. Inference, pasting and encoding hold a core
for seconds, so they run on the hub's pool of native threads while the request's greenlet
waits cooperatively (and, meanwhile, watches its socket for a hang-up). Outside gevent
(gthread worker, Flask's test client) everything runs inline on the calling thread.

`run_in_thread` offloads one call; `ThreadedStream` offloads a blocking iterator and hands
its items to the greenlet writing the response through a bounded buffer.
"""

from __future__ import annotations

import collections
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

from lipsync.errors import ErrorCode, LipSyncError
from lipsync.server.admission import Deadline
from lipsync.util import native_lock, native_rlock

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How often a waiting greenlet looks at its client's socket for a hang-up.
PEER_POLL_S = 0.25
# How long an interrupted greenlet waits for its cancelled native call to reach a check.
CANCEL_GRACE_S = 30.0


# What generation runs on native threads. Imported before gevent patches threading (see
# import_native_libraries), their module-level locks are OS locks.
NATIVE_THREAD_LIBRARIES = ("numpy", "numpy.fft", "cv2", "av", "soundfile", "soxr", "PIL.Image")


class ReaderTooSlowError(LipSyncError):
    """The client read nothing for the stream's time limit: its producer was stopped."""

    default_code = ErrorCode.TIMEOUT


def gevent_active() -> bool:
    """True in a gevent worker (threading monkey-patched to greenlets)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def import_native_libraries() -> None:
    """Import the libraries generation uses, and OpenVINO, before gevent's monkey patching
    (gunicorn's post_fork hook). Imported after it, a lock a library makes at import time
    (e.g. soundfile's error lock) would be a greenlet lock shared by native threads.

    `import openvino` also sends a telemetry event from a helper thread that forks the
    process. Patched, that thread would be a greenlet and the forked copy would go on
    running the worker's other greenlets (its connections). Here it is a native thread,
    and it is shut down, waiting for its send (at most the telemetry's 3 s timeout; nothing
    to wait for when telemetry is opted out), so no pre-patch thread outlives the patch.
    """
    for name in NATIVE_THREAD_LIBRARIES:
        importlib.import_module(name)
    import openvino  # noqa: F401

    try:
        from openvino_telemetry import Telemetry

        Telemetry().sender.executor.shutdown(wait=True)
    except (ImportError, AttributeError, RuntimeError):  # no telemetry, or another version
        pass


def native_logging_locks() -> None:
    """Give logging and every handler an OS lock. Under gevent they lock with greenlet
    locks (a handler made after the patch, e.g. by `logging.basicConfig` in the worker, and
    the module lock, which gevent converts), and greenlets and native threads logging at
    once then stall on them."""
    if hasattr(logging, "_lock"):  # the module's lock (logger cache, configuration)
        logging._lock = native_rlock()
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for each in loggers:
        for handler in getattr(each, "handlers", ()):  # placeholders have none
            handler.lock = native_rlock()


def run_in_thread(fn: Callable[..., T], *args: Any, watch: Deadline | None = None) -> T:
    """`fn(*args)` on a native thread of the gevent hub's pool; its result or exception.

    The calling greenlet yields to the others meanwhile and polls `watch`'s socket, so
    `watch.check()` inside `fn` sees a hang-up. Inline outside gevent.
    """
    if not gevent_active():
        return fn(*args)
    import gevent

    result = gevent.get_hub().threadpool.spawn(_outcome, fn, args)
    if watch is not None:
        watch.watched = True
    try:
        while not result.ready():
            result.wait(PEER_POLL_S)
            if watch is not None:
                watch.poll_peer()
    except BaseException:  # greenlet killed (worker stopping): stop the thread at its next check
        if watch is not None:
            watch.cancel()
        result.wait(CANCEL_GRACE_S)
        raise
    value, error = result.get()
    if error is not None:
        raise error
    return value


def _outcome(fn: Callable[..., T], args: tuple) -> tuple[T | None, BaseException | None]:
    """(result, None) or (None, exception): the pool would print a raised exception as an
    unhandled error, yet most are a client's (raised again on the greenlet, traceback kept)."""
    try:
        return fn(*args), None
    except Exception as exc:
        return None, exc


class NativeEvent:
    """Auto-reset event on OS locks: `set` from any thread, `wait` on a native thread."""

    def __init__(self) -> None:
        self._mutex = native_lock()
        self._gate = native_lock()
        self._gate.acquire()
        self._is_set = False

    def set(self) -> None:
        with self._mutex:
            if not self._is_set:
                self._is_set = True
                self._gate.release()

    def wait(self, timeout: float) -> bool:
        if not self._gate.acquire(timeout=max(timeout, 0.0)):
            return False
        with self._mutex:
            self._is_set = False
        return True

    def close(self) -> None:
        pass


class _HubEvent:
    """Auto-reset event: `set` from any thread (libev async watcher, the loop's only
    thread-safe entry), `wait` cooperatively on a greenlet of that loop."""

    def __init__(self) -> None:
        import gevent
        from gevent.event import Event

        self._event = Event()
        self.hub = gevent.get_hub()
        self._watcher = self.hub.loop.async_()
        self._watcher.start(self._event.set)

    def set(self) -> None:
        self._watcher.send()

    def wait(self, timeout: float) -> bool:
        fired = self._event.wait(max(timeout, 0.0))
        self._event.clear()
        return fired

    def close(self) -> None:
        """On the loop's thread, once the last `set` is done."""
        self._event.set()
        self._watcher.close()


class ThreadedStream(Generic[T]):
    """Iterate `produce()` on a native thread; iterate this object on the response's greenlet.

    At most `max_buffered` items wait in between: a producer that gets ahead of its reader
    blocks (memory stays bounded), and when the reader takes nothing for `reader_timeout_s`
    the producer is abandoned: its iterator is closed on its thread and iterating this
    object raises ReaderTooSlowError. A producer's exception is raised to the reader after
    the items produced before it. `on_finish` runs once when the producer has stopped for
    any reason (on the event loop under gevent, else on the producer's thread): release
    the generation slot there, since a reader stuck writing to a stalled client never
    returns. `stopped` tells a producer's own checks (e.g. between batches) to give up.
    """

    def __init__(
        self,
        produce: Callable[[], Iterator[T]],
        *,
        max_buffered: int,
        reader_timeout_s: float,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        if max_buffered < 1 or reader_timeout_s <= 0:
            raise ValueError(
                f"invalid stream limits: max_buffered={max_buffered}, "
                f"reader_timeout_s={reader_timeout_s}"
            )
        self._produce = produce
        self._max = max_buffered
        self._reader_timeout_s = reader_timeout_s
        self._on_finish = on_finish
        self._lock = native_lock()
        self._items: collections.deque[T] = collections.deque()
        self._error: BaseException | None = None
        self._done = False
        self._abandoned = False
        self._finished = False
        self._space = NativeEvent()  # producer waits on it: the reader took an item
        self._gevent = gevent_active()
        self._ready: _HubEvent | NativeEvent | None = None  # the reader waits on it
        self._started = False

    @property
    def stopped(self) -> bool:
        """True once the reader is gone (closed, or too slow): the producer should stop."""
        return self._abandoned

    def __iter__(self) -> Generator[T, None, None]:
        if self._started:
            raise RuntimeError("a ThreadedStream is iterated once")
        self._started = True
        self._start_producer()
        try:
            while True:
                item, finished = self._take()
                if finished:
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """The reader is gone: stop the producer at its next item (never started: just
        run `on_finish`)."""
        with self._lock:
            self._abandoned = True
        self._space.set()
        if not self._started:
            self._started = True
            self._finish()

    # -- reader side -----------------------------------------------------------------------

    def _take(self) -> tuple[Any, bool]:
        """The next item, or (None, True) at the end; raises the producer's error."""
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    self._space.set()
                    return item, False
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return None, True
            self._event.wait(1.0)

    # -- producer side ---------------------------------------------------------------------

    @property
    def _event(self) -> _HubEvent | NativeEvent:
        """What the reader waits on (made when iteration starts)."""
        if self._ready is None:
            raise RuntimeError("the stream has not started")
        return self._ready

    def _start_producer(self) -> None:
        # made here, on the reader's greenlet: its watcher belongs to that loop
        self._ready = _HubEvent() if self._gevent else NativeEvent()
        if isinstance(self._ready, _HubEvent):
            self._ready.hub.threadpool.spawn(self._run)
        else:
            threading.Thread(target=self._run, name="threaded-stream", daemon=True).start()

    def _run(self) -> None:
        iterator: Iterator[T] | None = None
        try:
            iterator = self._produce()
            for item in iterator:
                if not self._put(item):
                    break
        except BaseException as exc:
            with self._lock:
                self._error = exc
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()  # the producer's finally runs here, on its own thread
                except Exception:
                    logger.exception("closing an abandoned stream's producer failed")
            with self._lock:
                self._done = True
            self._event.set()
            if self._gevent:
                self._finish_on_loop()
            else:
                self._finish()

    def _put(self, item: T) -> bool:
        """Buffer `item` once there is room; False when the reader is gone or too slow."""
        limit = time.monotonic() + self._reader_timeout_s
        while True:
            with self._lock:
                if self._abandoned:
                    return False
                if len(self._items) < self._max:
                    self._items.append(item)
                    break
            if not self._space.wait(limit - time.monotonic()) and time.monotonic() >= limit:
                with self._lock:
                    self._abandoned = True
                    self._error = ReaderTooSlowError(
                        f"the client read nothing for {self._reader_timeout_s:g} s"
                    )
                logger.warning("stream abandoned: reader too slow")
                return False
        self._event.set()
        return True

    def _finish_on_loop(self) -> None:
        """Run `_finish` on the event loop (greenlet primitives, e.g. the slot, live there)."""
        import gevent

        event = self._event
        if not isinstance(event, _HubEvent):
            raise RuntimeError("a gevent stream's reader event is a hub event")
        event.hub.loop.run_callback_threadsafe(gevent.spawn, self._finish)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._ready is not None:
            self._ready.close()
        if self._on_finish is not None:
            try:
                self._on_finish()
            except Exception:
                logger.exception("a stream's on_finish failed")
