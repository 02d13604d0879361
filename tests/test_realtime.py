"""WebSocket lip-sync sessions (/api/stream) against the real gunicorn server (gevent
worker): both frame encodings, parity with the offline path, controls, admission, limits,
malformed input and a client that never reads."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time

import cv2
import numpy as np
import pytest
import websocket
from helpers import ASSETS, FACE_BOX, b64, encode_image, start_server, stop_server

from lipsync import audio
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.live import LiveLipSync
from lipsync.options import RenderOptions
from lipsync.server.realtime import protocol as p

API_KEY = "s3cret"
ORIGIN = "https://app.example"
AUTH = [f"X-API-Key: {API_KEY}"]
MAX_MESSAGE = 256 * 1024
CHUNK_MS = 40
OPTIONS = RenderOptions(box=FACE_BOX, blend="none", quality="standard")


@pytest.fixture(scope="module")
def server(untrained_models, tmp_path_factory):
    server = start_server(
        untrained_models,
        tmp_path_factory.mktemp("realtime"),
        LIPSYNC_API_KEY=API_KEY,
        LIPSYNC_CORS_ORIGINS=ORIGIN,
        LIPSYNC_PRECISION="f32",
        LIPSYNC_DEFAULT_BLEND="none",
        LIPSYNC_REALTIME_MAX_SESSIONS="2",
        LIPSYNC_REALTIME_MAX_MESSAGE_BYTES=str(MAX_MESSAGE),
        LIPSYNC_REALTIME_IDLE_TIMEOUT_S="20",
        LIPSYNC_REALTIME_STALL_TIMEOUT_S="4",
        LIPSYNC_REALTIME_SEND_BUFFER_FRAMES="4",
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def avatar_id(server) -> str:
    image = (ASSETS / "face.jpg").read_bytes()
    reply = server.post(
        "/api/avatars", json={"image": b64(image), "box": list(FACE_BOX)}, headers=_auth()
    )
    assert reply.status_code in (200, 201), reply.text
    return reply.json()["avatar_id"]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    wav, rate = audio.read_audio((ASSETS / "speech.wav").read_bytes())
    assert rate == 16000
    return wav


def _auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/api/stream"


def connect(server, **kwargs) -> websocket.WebSocket:
    kwargs.setdefault("header", AUTH)
    return websocket.create_connection(ws_url(server), timeout=60, **kwargs)


def open_session(server, avatar_id: str, **start) -> tuple[websocket.WebSocket, dict]:
    ws = connect(server)
    ws.send(json.dumps({"type": "start", "avatar_id": avatar_id, **start}))
    ready = json.loads(ws.recv())
    assert ready["type"] == "ready", ready
    return ws, ready


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()


def send_chunks(ws, samples: np.ndarray, chunk_ms: int = CHUNK_MS, *, as_json=False) -> None:
    step = 16000 * chunk_ms // 1000
    for offset in range(0, len(samples), step):
        data = pcm16(samples[offset : offset + step])
        if as_json:
            ws.send(json.dumps({"type": "audio", "data": base64.b64encode(data).decode()}))
        else:
            ws.send_binary(data)


def receive(ws) -> tuple[int, bytes]:
    """(opcode, data) of the next message, close frames included (not answered: the
    server may have closed its socket already). The server never fragments."""
    frame = ws.recv_frame()
    return frame.opcode, frame.data


def close_status(ws) -> tuple[int, str]:
    """Read until the server's close frame: (code, reason)."""
    while True:
        opcode, data = receive(ws)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0]
            return code, data[2:].decode()


def collect_until(ws, kind: str) -> tuple[list[tuple[int, int, bytes]], list[dict]]:
    """Frames (index, pts_ms, jpeg) and JSON messages up to the first of type `kind`."""
    frames, messages = [], []
    while True:
        opcode, data = receive(ws)
        if opcode == websocket.ABNF.OPCODE_BINARY:
            frames.append(p.unpack_frame(data))  # checks magic, type, length, CRC
            continue
        assert opcode == websocket.ABNF.OPCODE_TEXT, (opcode, data)
        message = json.loads(data)
        if message["type"] == "frame":
            frames.append((message["index"], message["pts_ms"], base64.b64decode(message["data"])))
            assert message["processing_ms"] >= 0
            continue
        messages.append(message)
        if message["type"] == kind:
            return frames, messages


def decode_jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def offline_frames(untrained_models, samples: np.ndarray) -> np.ndarray:
    """The frames LiveLipSync renders in this process for `samples` (tests/test_live.py
    proves them equal to the offline path's)."""
    engine = Wav2LipInferenceEngine(untrained_models, precision="f32", batch_size=16)
    prepared = engine.prepare_face(cv2.imread(str(ASSETS / "face.jpg")), OPTIONS)
    live = LiveLipSync(engine, prepared, OPTIONS, 16000)
    return np.concatenate([live.push(samples), live.finish()])


def healthy(server) -> bool:
    return server.get("/health/live").status_code == 200


# -- protocol ------------------------------------------------------------------------------


def test_protocol_document_is_served_from_the_models(server):
    doc = server.get("/api/stream/protocol.json", headers=_auth()).json()
    schemas = doc["components"]["schemas"]
    assert {"Start", "Audio", "Frame", "Interrupted", "Dropped"} <= set(schemas)
    assert schemas["Start"]["properties"]["protocol"]["enum"] == ["binary", "json"]
    assert doc["server_messages"]["binary"]["size"] == p.FRAME_HEADER.size == 24
    assert doc["close_codes"]["1009"]


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_frames_of_a_whole_speech_match_the_offline_path(
    server, avatar_id, speech, untrained_models, protocol
):
    """Fed the speech in 40 ms chunks then flushed, the session returns as many frames as
    POST /api/generate makes of it, numbered 0.. with their pts, each the very JPEG
    (quality 100) of the frame rendered in this process by LiveLipSync (equal to the
    offline path: tests/test_live.py)."""
    ws, ready = open_session(
        server, avatar_id, protocol=protocol, output={"format": "jpeg", "quality": 100}
    )
    assert (ready["width"], ready["height"], ready["fps"]) == (512, 512, 25)
    send_chunks(ws, speech, as_json=protocol == "json")
    ws.send(json.dumps({"type": "flush"}))
    frames, messages = collect_until(ws, "flushed")
    expected = audio.num_video_frames(len(speech), 25)
    assert messages[-1]["frames"] == len(frames) == expected
    assert [f[0] for f in frames] == list(range(expected))
    assert [f[1] for f in frames] == [round(i * 40) for i in range(expected)]
    ws.send(json.dumps({"type": "end"}))
    assert close_status(ws) == (1000, "end")
    generated = server.post(
        "/api/generate",
        json={"avatar_id": avatar_id, "audio": b64((ASSETS / "speech.wav").read_bytes())},
        headers=_auth(),
    ).json()
    assert generated["num_frames"] == expected
    reference = offline_frames(untrained_models, speech)
    assert reference.shape == (expected, 512, 512, 3)
    same_jpegs = [
        encode_image(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 100]) for frame in reference
    ]
    identical = sum(f[2] == jpeg for f, jpeg in zip(frames, same_jpegs, strict=True))
    decoded = np.stack([decode_jpeg(f[2]) for f in frames]).astype(np.int16)
    error = np.abs(decoded - np.stack([decode_jpeg(j) for j in same_jpegs]))
    assert identical >= expected - 2 and error.max() <= 2, (identical, error.max())


def test_flush_starts_a_fresh_utterance_and_ping_answers(server, avatar_id, speech):
    ws, _ = open_session(server, avatar_id)
    ws.send(json.dumps({"type": "ping", "id": 7}))
    _, messages = collect_until(ws, "pong")
    assert messages[-1] == {"type": "pong", "id": 7}
    for _ in range(2):
        send_chunks(ws, speech[:8000])  # 0.5 s: 13 frames
        ws.send(json.dumps({"type": "flush"}))
        frames, messages = collect_until(ws, "flushed")
        assert [f[0] for f in frames] == list(range(13)) and messages[-1]["frames"] == 13
    ws.close()


def test_interrupt_drops_the_rest_at_once(server, avatar_id, speech):
    ws, _ = open_session(server, avatar_id)
    send_chunks(ws, speech, chunk_ms=500)
    opcode, _ = receive(ws)  # the first frame arrives
    assert opcode == websocket.ABNF.OPCODE_BINARY
    ws.send(json.dumps({"type": "interrupt"}))
    frames, _ = collect_until(ws, "interrupted")
    assert len(frames) < audio.num_video_frames(len(speech), 25) - 1
    ws.settimeout(0.5)  # no frame of the interrupted speech follows
    with pytest.raises(websocket.WebSocketTimeoutException):
        receive(ws)
    ws.settimeout(60)
    send_chunks(ws, speech[:8000])
    ws.send(json.dumps({"type": "flush"}))
    frames, _ = collect_until(ws, "flushed")
    assert [f[0] for f in frames] == list(range(13))  # a fresh utterance
    ws.close()


# -- admission -----------------------------------------------------------------------------


def test_refused_beyond_capacity_before_the_upgrade(server, avatar_id):
    first, _ = open_session(server, avatar_id)
    second, _ = open_session(server, avatar_id)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server)
    assert refused.value.status_code == 503
    assert refused.value.resp_headers["retry-after"]
    assert json.loads(refused.value.resp_body)["error"]["code"] == "overloaded"
    first.close()
    second.close()
    time.sleep(0.5)
    third, _ = open_session(server, avatar_id)
    third.close()


def test_origin_and_api_key_are_checked_before_the_upgrade(server, avatar_id):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server, origin="https://evil.example")
    assert refused.value.status_code == 403
    assert json.loads(refused.value.resp_body)["error"]["code"] == "forbidden_origin"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server, header=[])
    assert refused.value.status_code == 401
    connect(server, origin=ORIGIN).close()


# -- malformed input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "code", "reason"),
    [
        ([b"\x00\x01"], 1003, "first message"),
        (["not json"], 1007, ""),
        ([{"type": "start", "avatar_id": "x", "fps": -1}], 1007, "fps"),
        # Beyond the limits the HTTP API and rendering share (lipsync.limits), refused by
        # the start's own validation, not later with another code.
        ([{"type": "start", "avatar_id": "0" * 32, "fps": 0.001}], 1007, "start.fps"),
        ([{"type": "start", "image": "AAAA", "silence_threshold_db": -110}], 1007, "threshold"),
        # Two faces: ambiguous, refused naming both.
        (
            [{"type": "start", "avatar_id": "0" * 32, "image": "AAAA"}],
            1007,
            "avatar_id: given with image",
        ),
        ([{"type": "start", "image": "@@@"}], 1007, "image: is not valid base64"),
        ([{"type": "start", "avatar_id": "0" * 32, "pace": "fast"}], 1007, "pace"),
        ([{"type": "start", "avatar_id": "0" * 32, "lead_ms": 5000}], 1007, "lead_ms"),
        ([{"type": "start", "avatar_id": "0" * 32, "lead_ms": -1}], 1007, "lead_ms"),
        ([{"type": "start", "avatar_id": "0" * 32, "output": {"format": "gif"}}], 1007, "format"),
        (["START", {"type": "dance"}], 1003, "unknown message type"),
        (["START", b"\x00\x01\x02"], 1007, "whole number"),
        (["START", {"type": "audio", "data": "@@@"}], 1007, "base64"),
        (["START", b"\x00" * (MAX_MESSAGE + 2)], 1009, ""),
        (["START", {"type": "start", "avatar_id": "x"}], 1008, "twice"),
    ],
)
def test_malformed_messages_close_with_a_clear_code(server, avatar_id, messages, code, reason):
    ws = connect(server)
    for message in messages:
        if message == "START":
            ws.send(json.dumps({"type": "start", "avatar_id": avatar_id}))
            assert json.loads(ws.recv())["type"] == "ready"
        elif isinstance(message, bytes):
            ws.send_binary(message)
        else:
            ws.send(message if isinstance(message, str) else json.dumps(message))
    got_code, got_reason = close_status(ws)
    assert got_code == code and reason in got_reason, (got_code, got_reason)
    assert healthy(server)


def test_unknown_avatar_is_reported_then_closed(server):
    ws = connect(server)
    ws.send(json.dumps({"type": "start", "avatar_id": "0" * 32}))
    assert json.loads(ws.recv())["code"] == "avatar_not_found"
    assert close_status(ws)[0] == 1008


# -- backpressure --------------------------------------------------------------------------


def test_a_client_that_never_reads_gets_drops_or_is_closed(server, avatar_id, speech):
    """At quality 100 the speech's frames are ~14 MB, more than the socket buffers hold:
    the server drops the oldest waiting frames (reported) or closes the stalled session,
    and stays healthy."""
    small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    ws = connect(server, sockopt=small)
    start = {"type": "start", "avatar_id": avatar_id, "output": {"quality": 100}}
    ws.send(json.dumps(start))
    for _ in range(3):
        send_chunks(ws, speech, chunk_ms=1000)
        ws.send(json.dumps({"type": "flush"}))
    time.sleep(8)  # read nothing
    assert healthy(server)
    received, dropped, closed = 0, 0, False
    ws.settimeout(10)
    try:
        while True:
            opcode, data = receive(ws)
            if opcode == websocket.ABNF.OPCODE_BINARY:
                received += 1
            elif opcode == websocket.ABNF.OPCODE_TEXT and json.loads(data)["type"] == "dropped":
                dropped = json.loads(data)["total"]
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                closed = True
                break
    except (websocket.WebSocketException, OSError):
        closed = True
    assert closed or dropped > 0
    assert healthy(server)


def test_metrics_count_sessions_and_frames(server, avatar_id, speech):
    ws, _ = open_session(server, avatar_id)
    send_chunks(ws, speech[:8000])
    ws.send(json.dumps({"type": "flush"}))
    collect_until(ws, "flushed")
    text = server.get("/metrics", headers=_auth()).text
    ws.close()
    assert "lipsync_realtime_sessions" in text
    sent = [
        line for line in text.splitlines() if line.startswith("lipsync_realtime_frames_sent_total")
    ]
    assert sent and float(sent[0].split()[-1]) >= 13
    assert "lipsync_realtime_frame_seconds_bucket" in text


# -- pure parts of the protocol ------------------------------------------------------------


def test_frame_header_round_trip_and_crc_check():
    message = p.pack_frame(7, 280, b"\xff\xd8jpeg")
    assert len(message) == p.FRAME_HEADER.size + 6
    assert p.unpack_frame(message) == (7, 280, b"\xff\xd8jpeg")
    corrupt = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(ValueError, match="CRC"):
        p.unpack_frame(corrupt)
    with pytest.raises(ValueError, match="length"):
        p.unpack_frame(message + b"x")


def test_pcm_decoding_averages_channels_and_refuses_partial_samples():
    from lipsync.server.realtime.inbound import SessionClosed, decode_pcm

    stereo = np.array([[0.5, -0.25], [1.0, 0.0]], "<f4")
    fmt = p.AudioFormat(sample_rate=16000, encoding="f32le", channels=2)
    np.testing.assert_array_equal(decode_pcm(stereo.tobytes(), fmt), [0.125, 0.5])
    s16 = p.AudioFormat(sample_rate=16000, encoding="pcm_s16le", channels=1)
    np.testing.assert_array_equal(decode_pcm(np.array([16384], "<i2").tobytes(), s16), [0.5])
    with pytest.raises(SessionClosed) as closed:
        decode_pcm(b"\x00\x00\x00", s16)
    assert closed.value.code == p.CLOSE_INVALID_PAYLOAD


@pytest.mark.parametrize("gate", [True, False])
def test_silence_gate_shows_the_avatar_frame_in_silence(server, avatar_id, gate):
    """With the gate on, 0.5 s of digital silence gives 13 frames that are the avatar's own
    image (the same JPEG bytes); with it off (the default) they are generated."""
    ws, _ = open_session(server, avatar_id, silence_gate=gate, output={"quality": 100})
    send_chunks(ws, np.zeros(8000, np.float32))
    ws.send(json.dumps({"type": "flush"}))
    frames, _ = collect_until(ws, "flushed")
    ws.close()
    face = cv2.imread(str(ASSETS / "face.jpg"))
    own = encode_image(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert len(frames) == 13
    assert all(f[2] == own for f in frames) is gate
