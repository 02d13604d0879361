"""lipsync.server.offload: native-thread offload of calls and of streamed iterators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lipsync.server.admission import Deadline
from lipsync.server.offload import ReaderTooSlowError, ThreadedStream, run_in_thread

ROOT = Path(__file__).resolve().parents[1]


def counting(limit: int | None, produced: list, state: dict, work_s: float = 0.0):
    """A producer yielding 0, 1, ... (forever for None), noting its thread on close."""

    def produce():
        try:
            i = 0
            while limit is None or i < limit:
                end = time.perf_counter() + work_s
                while time.perf_counter() < end:  # CPU-bound
                    pass
                produced.append(i)
                yield i
                i += 1
        finally:
            state["closed_on"] = threading.get_ident()

    return produce


def test_run_in_thread_is_inline_outside_gevent():
    assert run_in_thread(threading.get_ident) == threading.get_ident()
    with pytest.raises(ValueError):
        run_in_thread(int, "x", watch=Deadline(60))


def test_stream_hands_over_every_item_in_order_and_finishes_once():
    produced, state, finished = [], {}, []
    stream = ThreadedStream(
        counting(50, produced, state, work_s=0.001),
        max_buffered=4,
        reader_timeout_s=5,
        on_finish=lambda: finished.append(1),
    )
    assert list(stream) == list(range(50))
    deadline = time.monotonic() + 5
    while not finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert finished == [1]
    assert state["closed_on"] != threading.get_ident()


def test_stream_buffer_is_bounded_for_a_slow_reader():
    produced, state = [], {}
    stream = ThreadedStream(counting(40, produced, state), max_buffered=3, reader_timeout_s=5)
    ahead = []
    for item in stream:
        time.sleep(0.01)  # the reader is much slower than the producer
        ahead.append(len(produced) - (item + 1))
    assert max(ahead) <= 3 + 1  # the buffer plus the item waiting for room
    assert max(ahead) >= 3  # and the producer did run ahead up to the bound


def test_stream_abandons_a_reader_that_stops_reading():
    produced, state, finished = [], {}, threading.Event()
    stream = ThreadedStream(
        counting(None, produced, state),
        max_buffered=2,
        reader_timeout_s=0.3,
        on_finish=finished.set,
    )
    items = iter(stream)
    assert next(items) == 0
    started = time.monotonic()
    assert finished.wait(5)  # the slot comes back although the reader never returns
    assert 0.25 < time.monotonic() - started < 3
    assert stream.stopped
    assert state["closed_on"] != threading.get_ident()  # finally ran on the producer's thread
    assert len(produced) <= 1 + 2 + 1
    with pytest.raises(ReaderTooSlowError):
        list(items)  # what was buffered, then the error


def test_stream_closed_by_its_reader_stops_the_producer():
    produced, state, finished = [], {}, threading.Event()
    stream = ThreadedStream(
        counting(None, produced, state),
        max_buffered=2,
        reader_timeout_s=30,
        on_finish=finished.set,
    )
    items = iter(stream)
    next(items)
    items.close()  # what the WSGI server does when the client hangs up
    assert finished.wait(5)
    assert "closed_on" in state
    count = len(produced)
    time.sleep(0.1)
    assert len(produced) == count


def test_stream_closed_before_it_is_iterated_releases_its_slot():
    produced, state, finished = [], {}, []
    stream = ThreadedStream(
        counting(None, produced, state),
        max_buffered=2,
        reader_timeout_s=30,
        on_finish=lambda: finished.append(1),
    )
    stream.close()  # e.g. the response was dropped before its body was read
    assert finished == [1] and produced == []
    with pytest.raises(RuntimeError, match="once"):
        next(iter(stream))


def test_stream_raises_the_producers_error_after_its_items():
    def failing():
        yield 1
        yield 2
        raise KeyError("boom")

    got = []
    with pytest.raises(KeyError, match="boom"):
        for item in ThreadedStream(failing, max_buffered=1, reader_timeout_s=5):
            got.append(item)
    assert got == [1, 2]


def test_stream_limits_are_checked():
    with pytest.raises(ValueError, match="max_buffered"):
        ThreadedStream(lambda: iter(()), max_buffered=0, reader_timeout_s=1)


def test_offload_under_gevent_keeps_the_event_loop_turning():
    """The gevent worker's case, in a monkey-patched subprocess (tests/offload_probe.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "offload_probe.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["gevent_active"]
    assert out["run_in_thread_other_thread"] and out["run_in_thread_result_ok"]
    # CPU-bound work inline stalls the loop; offloaded, the loop keeps turning
    assert out["inline_max_gap_s"] > 0.2
    assert out["run_in_thread_max_gap_s"] < out["inline_max_gap_s"] / 3
    assert out["run_in_thread_error"].startswith("invalid literal")
    assert "failed with ValueError" not in run.stderr  # a raised error is not logged as a crash
    assert out["stream_items"] == list(range(12))
    assert out["stream_max_ahead"] <= 2 + 1
    assert out["stream_max_gap_s"] < 0.2
    assert out["stream_closed_off_hub"] and out["slot_released"]
    assert out["stalled_slot_released"] and out["stalled_release_s"] < 3
    assert out["stalled_produced"] <= 1 + 3 + 1
    assert out["stalled_closed_off_hub"]
    assert out["stalled_error"] == "timeout"
    assert out["failing_items"] == [1, 2] and out["failing_error"] == "'boom'"
    # greenlets and native threads logging at once (with greenlet handler locks: a stall)
    assert out["logged_lines"] == 6 * 2000
