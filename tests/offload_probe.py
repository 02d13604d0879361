"""Run by tests/test_offload.py in a subprocess: lipsync.server.offload under gevent's
monkey patching (as in the gevent worker), printing one JSON object of observations."""

from gevent import monkey

monkey.patch_all()

import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.lock import Semaphore  # noqa: E402

from lipsync.server.offload import (  # noqa: E402
    ReaderTooSlowError,
    ThreadedStream,
    gevent_active,
    native_logging_locks,
    run_in_thread,
)

BLOCK = b"x" * (1 << 20)


def cpu_work(rounds: int) -> str:
    """Hash 1 MiB `rounds` times (CPU-bound; hashlib releases the GIL for big inputs)."""
    digest = hashlib.sha256()
    for _ in range(rounds):
        digest.update(BLOCK)
    return digest.hexdigest()


def max_tick_gap(during) -> tuple[object, float]:
    """Run `during()` on this greenlet while another ticks every 5 ms: (result, worst gap s)."""
    gaps = []
    running = True

    def ticker():
        last = time.monotonic()
        while running:
            gevent.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = gevent.spawn(ticker)
    gevent.sleep(0.02)
    try:
        result = during()
        gevent.sleep(0.02)  # the ticker records a gap the work may have caused
    finally:
        running = False
        tick.join()
    return result, max(gaps)


def main() -> None:
    out: dict[str, object] = {"gevent_active": gevent_active()}
    hub_thread = threading.get_native_id()

    # run_in_thread: the result, on another native thread, with the loop still turning
    def job():
        return threading.get_native_id(), cpu_work(400)

    (worker_thread, digest), gap = max_tick_gap(lambda: run_in_thread(job))
    out["run_in_thread_other_thread"] = worker_thread != hub_thread
    out["run_in_thread_result_ok"] = digest == cpu_work(400)
    out["run_in_thread_max_gap_s"] = gap
    _, blocked_gap = max_tick_gap(lambda: cpu_work(400))  # the same work on the hub
    out["inline_max_gap_s"] = blocked_gap

    try:
        run_in_thread(int, "not a number")
    except ValueError as exc:
        out["run_in_thread_error"] = str(exc)

    # ThreadedStream: items in order, bounded, the slot released on the loop
    slot = Semaphore(1)
    slot.acquire()
    produced = []
    state = {}

    def produce():
        try:
            for i in range(12):
                cpu_work(3)
                produced.append(i)
                yield i
        finally:
            state["closed_on"] = threading.get_native_id()

    stream = ThreadedStream(produce, max_buffered=2, reader_timeout_s=5, on_finish=slot.release)
    seen, in_flight = [], []

    def read_slowly():
        for item in stream:
            seen.append(item)
            in_flight.append(len(produced) - len(seen))
            gevent.sleep(0.05)

    _, gap = max_tick_gap(read_slowly)
    out["stream_items"] = seen
    out["stream_max_ahead"] = max(in_flight)
    out["stream_max_gap_s"] = gap
    out["stream_closed_off_hub"] = state["closed_on"] != hub_thread
    out["slot_released"] = slot.acquire(timeout=2)

    # a reader that stops reading: the producer is abandoned, the slot released
    slot2 = Semaphore(1)
    slot2.acquire()
    produced2, state2 = [], {}

    def endless():
        try:
            while True:
                cpu_work(5)
                produced2.append(1)
                yield b"chunk"
        finally:
            state2["closed_on"] = threading.get_native_id()

    stalled = ThreadedStream(endless, max_buffered=3, reader_timeout_s=0.5, on_finish=slot2.release)
    items = iter(stalled)
    next(items)
    started = time.monotonic()
    out["stalled_slot_released"] = slot2.acquire(timeout=5)
    out["stalled_release_s"] = time.monotonic() - started
    out["stalled_produced"] = len(produced2)
    out["stalled_closed_off_hub"] = state2.get("closed_on") not in (None, hub_thread)
    try:
        for _ in items:
            pass
    except ReaderTooSlowError as exc:
        out["stalled_error"] = exc.code.code

    # the producer's exception reaches the reader after its items
    def failing():
        yield 1
        yield 2
        raise KeyError("boom")

    got = []
    try:
        for item in ThreadedStream(failing, max_buffered=1, reader_timeout_s=5):
            got.append(item)
    except KeyError as exc:
        out["failing_error"] = str(exc)
    out["failing_items"] = got
    out["logged_lines"] = log_from_both_sides(2000)
    print(json.dumps(out))


def log_from_both_sides(count: int) -> int:
    """Lines logged by 3 native threads and 3 greenlets at once, `count` each, within 30 s."""
    stream = io.StringIO()
    logging.basicConfig(stream=stream, level=logging.INFO, force=True)
    native_logging_locks()
    log = logging.getLogger("probe")

    def native():
        for i in range(count):
            log.info("native %d", i)

    def green():
        for i in range(count):
            log.info("green %d", i)
            if i % 20 == 0:
                gevent.sleep(0)

    jobs = [gevent.spawn(run_in_thread, native) for _ in range(3)]
    jobs += [gevent.spawn(green) for _ in range(3)]
    gevent.joinall(jobs, timeout=30)
    return stream.getvalue().count("\n")


if __name__ == "__main__":
    main()
