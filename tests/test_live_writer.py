"""A live session's writer with pacing, over a fake transport (no server): a slow send
costs no frame that was waiting for its time, and what an interrupt cannot drop (WebM
bytes) leaves unpaced, so `interrupted` is not held behind it."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lipsync.server.realtime import protocol as p
from lipsync.server.realtime.outputs import Outgoing
from lipsync.server.realtime.pacing import Pacer
from lipsync.server.realtime.writer import Writer

FPS = 25


class SlowOnceTransport:
    """Records what is sent and when; its `block`-th send takes `seconds`."""

    def __init__(self, block: int = -1, seconds: float = 0.0) -> None:
        self.sent: list[tuple[float, str | bytes]] = []
        self._block, self._seconds = block, seconds

    def receive(self, timeout: float) -> None:
        return None

    def send(self, message: str | bytes) -> None:
        if len(self.sent) == self._block:
            time.sleep(self._seconds)
        self.sent.append((time.perf_counter(), message))

    def close(self, code: int, reason: str) -> None:
        pass


def running(writer: Writer) -> threading.Thread:
    thread = threading.Thread(target=writer.loop, daemon=True)
    thread.start()
    return thread


def speech(count: int, droppable: bool = True) -> list[Outgoing]:
    return [Outgoing(f"frame {i}".encode(), droppable, i / FPS) for i in range(count)]


@pytest.fixture
def stop_after():
    writers: list[Writer] = []
    yield writers.append
    for writer in writers:
        writer.stop()


def test_a_slow_send_drops_only_frames_whose_time_passed(stop_after):
    """A 0.4 s hiccup at the start of a 3 s reply rendered at once: frames whose send time
    passed meanwhile may be dropped (the reader is behind), every later one is sent."""
    transport = SlowOnceTransport(block=1, seconds=0.4)
    writer = Writer(transport, 4, Pacer(0.2, 1 / FPS))
    stop_after(writer)
    running(writer)
    writer.frames(speech(75), time.perf_counter(), utterance=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sent = [int(m.split()[1]) for _, m in transport.sent if isinstance(m, bytes)]
        if len(sent) + writer.dropped == 75:
            break
        time.sleep(0.02)
    late_by_then = round((0.4 + 0.2 + 0.1) * FPS)  # due before the hiccup ended, and a margin
    assert sent == sorted(sent) and writer.dropped == 75 - len(sent) <= late_by_then
    assert sent[-(75 - late_by_then) :] == list(range(late_by_then, 75))


def test_a_slow_send_before_a_reply_starts_drops_only_its_late_frames(stop_after):
    """A 1 s hiccup sending the message before a 6 s reply (a base frame, an idle frame):
    the reply's clock runs from its audio's arrival, so only the frames due by the end of
    the hiccup may go, and the rest of the reply is still paced."""
    transport = SlowOnceTransport(block=0, seconds=1.0)
    writer = Writer(transport, 8, Pacer(0.2, 1 / FPS))
    stop_after(writer)
    running(writer)
    received = time.perf_counter()
    writer.frames([Outgoing(b"base", False, None, False)], received)
    writer.frames(speech(150), received, utterance=1)
    sent = [(t, int(m.split()[1])) for t, m in transport.sent if m[:5] == b"frame"]
    late_by_then = round((1.0 + 0.2 + 0.1) * FPS)
    assert writer.dropped <= late_by_then
    for when, index in sent:
        assert when >= received + index / FPS - 0.2 - 0.01, index  # still paced


def test_webm_bytes_kept_by_an_interrupt_leave_unpaced(stop_after):
    transport = SlowOnceTransport()
    writer = Writer(transport, 8, Pacer(0.2, 1 / FPS))
    stop_after(writer)
    running(writer)
    start = time.perf_counter()
    # Chunks of 16 frames each (0.64 s), not droppable: 8 of them are 5 s of paced bytes.
    chunks = [Outgoing(f"chunk {k}".encode(), False, k * 0.64) for k in range(8)]
    current = threading.Event()
    current.set()  # the session's epoch check: cleared by the interrupt
    producer = threading.Thread(target=writer.frames, args=(chunks, start, current.is_set, 1))
    producer.start()
    time.sleep(0.1)
    current.clear()
    writer.drop_frames(lambda n: p.Interrupted(dropped_frames=n))
    producer.join(10)
    deadline = time.monotonic() + 10
    while not any(isinstance(m, str) for _, m in transport.sent) and time.monotonic() < deadline:
        time.sleep(0.01)
    acknowledged = next(t for t, m in transport.sent if isinstance(m, str))
    assert json.loads(next(m for _, m in transport.sent if isinstance(m, str)))["type"] == (
        "interrupted"
    )
    assert acknowledged - start < 1.0  # paced, the kept chunks would have taken 4.5 s
