"""A live session over an in-memory transport: no Flask, no socket, the real engine on the
random-init models. The session logic talks only to `LiveTransport` (receive, send,
close), so any transport that implements those three runs it the same."""

from __future__ import annotations

import json
import queue
import threading

import cv2
import numpy as np
import pytest
from helpers import ASSETS, FACE_BOX, b64, encode_image

from lipsync import audio
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.live import LiveLipSync
from lipsync.options import RenderOptions
from lipsync.server.realtime import protocol as p
from lipsync.server.realtime.batcher import FrameBatcher
from lipsync.server.realtime.route import _ready, serve
from lipsync.server.realtime.session import MAX_RENDER_S, Session
from lipsync.server.realtime.slots import LiveSlots
from lipsync.server.realtime.transport import LiveTransport, TransportClosed
from lipsync.server.service import Service
from lipsync.settings import Settings

CLOSED = object()
OPTIONS = RenderOptions(box=FACE_BOX, blend="none", quality="standard")


class MemoryTransport:
    """`LiveTransport` on two queues: the test is the client."""

    def __init__(self) -> None:
        self.inbox: queue.Queue = queue.Queue()  # client -> session
        self.outbox: queue.Queue = queue.Queue()  # session -> client; CLOSED, then nothing
        self.closed: tuple[int, str] | None = None
        self._lock = threading.Lock()

    def receive(self, timeout: float) -> str | bytes | None:
        try:
            message = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if message is CLOSED:
            raise TransportClosed("the client went")
        return message

    def send(self, message: str | bytes) -> None:
        with self._lock:
            if self.closed is not None:
                raise TransportClosed("closed")
            self.outbox.put(message)

    def close(self, code: int, reason: str) -> None:
        with self._lock:
            if self.closed is None:
                self.closed = (code, reason)
                self.outbox.put(CLOSED)

    # -- the client's side ---------------------------------------------------------------

    def next(self) -> str | bytes | object:
        return self.outbox.get(timeout=120)

    def until(self, kind: str) -> tuple[list[tuple[int, int, bytes]], list[dict]]:
        """Frames (index, pts_ms, jpeg) and JSON messages up to the first of type `kind`."""
        frames, messages = [], []
        while True:
            message = self.next()
            assert message is not CLOSED, self.closed
            if isinstance(message, bytes):
                frames.append(p.unpack_frame(message))
                continue
            messages.append(json.loads(message))
            if messages[-1]["type"] == kind:
                return frames, messages


class FailingTransport(MemoryTransport):
    """A transport whose sending breaks unexpectedly (a bug below the session)."""

    def send(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            raise RuntimeError("the transport broke")
        super().send(message)


@pytest.fixture(scope="module")
def service(untrained_models) -> Service:
    settings = Settings.load(
        {
            "models_dir": untrained_models,
            "cache_dir": None,
            "avatar_dir": None,
            "precision": "f32",
            "default_blend": "none",
        },
        environ={},
    )
    return Service(settings)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples, rate = audio.read_audio((ASSETS / "speech.wav").read_bytes())
    assert rate == 16000
    return samples[:16000]  # 1 s: 25 frames


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()


def start_session(service: Service, transport: LiveTransport) -> tuple[threading.Thread, LiveSlots]:
    """`serve` on its own thread, as a worker runs it; -> the thread and the slots."""
    slots = LiveSlots(1, 1, 1)
    slot = slots.connect("client")
    assert slot is not None
    batcher = FrameBatcher(16)
    thread = threading.Thread(target=serve, args=(transport, service, batcher, slot))
    thread.start()
    return thread, slots


def start_message(**extra) -> str:
    image = b64((ASSETS / "face.jpg").read_bytes())
    return json.dumps({"type": "start", "image": image, "box": list(FACE_BOX), **extra})


def test_a_session_over_memory_sends_the_frames_of_the_offline_path(
    service, speech, untrained_models
):
    """Start, 40 ms PCM chunks, flush, ping, end: `ready`, 25 frames numbered 0..24 with
    their pts, each the JPEG (quality 100) of the frame LiveLipSync renders (equal to the
    offline path: test_live.py), `flushed`, `pong`, then close 1000; the slot is free."""
    transport = MemoryTransport()
    thread, slots = start_session(service, transport)
    transport.inbox.put(start_message(output={"jpeg_quality": 100}))
    ready = json.loads(transport.next())
    assert ready["type"] == "ready" and (ready["width"], ready["height"]) == (512, 512)
    assert slots.open == 1
    for offset in range(0, len(speech), 640):
        transport.inbox.put(pcm16(speech[offset : offset + 640]))
    transport.inbox.put(json.dumps({"type": "flush"}))
    frames, messages = transport.until("flushed")
    assert messages[-1]["frames"] == len(frames) == 25
    assert [f[0] for f in frames] == list(range(25))
    assert [f[1] for f in frames] == [i * 40 for i in range(25)]
    transport.inbox.put(json.dumps({"type": "ping", "id": "x"}))
    assert transport.until("pong")[1][-1] == {"type": "pong", "id": "x"}
    transport.inbox.put(json.dumps({"type": "end"}))
    assert transport.next() is CLOSED and transport.closed == (1000, "end")
    thread.join(30)
    assert not thread.is_alive() and slots.open == 0

    engine = Wav2LipInferenceEngine(untrained_models, precision="f32", batch_size=16)
    prepared = engine.prepare_face(cv2.imread(str(ASSETS / "face.jpg")), OPTIONS)
    live = LiveLipSync(engine, prepared, OPTIONS, 16000)
    reference = np.concatenate([live.push(pcm16_roundtrip(speech)), live.finish()])
    assert reference.shape == (25, 512, 512, 3)
    same = [encode_image(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 100]) for frame in reference]
    identical = sum(f[2] == jpeg for f, jpeg in zip(frames, same, strict=True))
    decoded = np.stack([decode(f[2]) for f in frames]).astype(np.int16)
    assert identical >= 23 and np.abs(decoded - np.stack([decode(j) for j in same])).max() <= 2


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def pcm16_roundtrip(samples: np.ndarray) -> np.ndarray:
    return np.frombuffer(pcm16(samples), "<i2").astype(np.float32) / 32768.0


def test_a_client_that_goes_ends_the_session_and_frees_its_slot(service):
    transport = MemoryTransport()
    thread, slots = start_session(service, transport)
    transport.inbox.put(start_message())
    assert json.loads(transport.next())["type"] == "ready"
    transport.inbox.put(CLOSED)
    thread.join(30)
    assert not thread.is_alive() and slots.open == 0 and slots.refusal("client") is None


def test_an_unexpected_failure_in_a_loop_closes_1011_and_is_logged(service, speech, caplog):
    transport = FailingTransport()
    thread, slots = start_session(service, transport)
    transport.inbox.put(start_message())
    assert json.loads(transport.next())["type"] == "ready"
    transport.inbox.put(pcm16(speech))
    transport.inbox.put(json.dumps({"type": "flush"}))
    while (message := transport.next()) is not CLOSED:
        assert json.loads(message)["type"] != "flushed"
    thread.join(30)
    assert transport.closed == (p.CLOSE_INTERNAL, "server error")
    assert "the transport broke" in caplog.text and slots.open == 0


@pytest.mark.parametrize(
    ("first", "code"),
    [(b"\x00\x01", p.CLOSE_UNSUPPORTED_DATA), ("{", p.CLOSE_INVALID_PAYLOAD), (None, 1008)],
)
def test_no_valid_start_closes_without_taking_a_session(service, first, code):
    transport = MemoryTransport()
    thread, slots = start_session(service, transport)
    if first is not None:
        transport.inbox.put(first)
    assert transport.next() is CLOSED and transport.closed[0] == code
    thread.join(30)
    assert slots.open == 0 and slots.refusal("client") is None


def test_a_long_audio_message_is_rendered_in_parts_so_the_first_frames_go_first(service):
    """3 s in one message (a TTS reply): each render takes at most MAX_RENDER_S of it, the
    rest stays queued, nothing lost or reordered."""
    start = p.Start.model_validate_json(start_message())
    face, output = _ready(service, start, FrameBatcher(16))
    session = Session(MemoryTransport(), start, face, output, service.settings)
    speech = np.arange(3 * 16000, dtype=np.float32)
    session._queue_audio(speech)
    parts = []
    while (taken := session._take_audio(0)) is not None:
        chunks, flushed, _ = taken
        assert not flushed
        parts.append(np.concatenate(chunks))
    assert [len(part) for part in parts[:-1]] == [round(MAX_RENDER_S * 16000)] * (len(parts) - 1)
    assert np.array_equal(np.concatenate(parts), speech)
    output.close()
