"""WebSocket sessions (/api/stream) against the real gunicorn server: idle mode, webm
output, browser authentication by subprotocol, sessions batched together on one model,
the face encoded once per session, and the session-length and idle-time limits."""

from __future__ import annotations

import io
import json
import threading
import time

import av
import cv2
import numpy as np
import pytest
import websocket
from helpers import ASSETS, FACE_BOX, b64, encode_image, make_clip, start_server, stop_server
from test_realtime import (
    close_status,
    collect_until,
    decode_jpeg,
    offline_frames,
    pcm16,
    receive,
    send_chunks,
)

from lipsync import audio
from lipsync.faces import frame_order
from lipsync.server.realtime import protocol as p

API_KEY = "s3cret-key"
SPEECH_S = 1.0
CLIP_FRAMES = 6
# Face box of the synthetic clip (64x48): a small part of it, so the frames stay apart.
CLIP_BOX = (20, 36, 24, 40)


SERVER_ENV = {
    "LIPSYNC_API_KEY": API_KEY,
    "LIPSYNC_PRECISION": "f32",
    "LIPSYNC_DEFAULT_BLEND": "none",
    "LIPSYNC_REALTIME_MAX_SESSIONS": "4",
}


@pytest.fixture(scope="module")
def server(untrained_models, tmp_path_factory):
    server = start_server(untrained_models, tmp_path_factory.mktemp("realtime-modes"), **SERVER_ENV)
    yield server
    stop_server(server)


def _auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


def _register(server, **face) -> str:
    reply = server.post("/api/avatars", json=face, headers=_auth())
    assert reply.status_code in (200, 201), reply.text
    return reply.json()["avatar_id"]


@pytest.fixture(scope="module")
def avatar_id(server) -> str:
    return _register(server, image=b64((ASSETS / "face.jpg").read_bytes()), box=list(FACE_BOX))


@pytest.fixture(scope="module")
def clip() -> tuple[bytes, list[np.ndarray]]:
    return make_clip("mp4", "libx264", num_frames=CLIP_FRAMES)


@pytest.fixture(scope="module")
def video_avatar_id(server, clip) -> str:
    return _register(server, video=b64(clip[0]), box=list(CLIP_BOX))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    wav, _ = audio.read_audio((ASSETS / "speech.wav").read_bytes())
    return wav


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/api/stream"


def open_session(server, face: dict, **start) -> tuple[websocket.WebSocket, dict]:
    ws = websocket.create_connection(ws_url(server), timeout=60, header=[f"X-API-Key: {API_KEY}"])
    ws.send(json.dumps({"type": "start", **face, **start}))
    ready = json.loads(ws.recv())
    assert ready["type"] == "ready", ready
    return ws, ready


def read_binary(ws, count: int) -> list[tuple[int, int, int, bytes]]:
    """The next `count` binary messages as (type, index, pts_ms, payload)."""
    messages = []
    while len(messages) < count:
        opcode, data = receive(ws)
        if opcode == websocket.ABNF.OPCODE_BINARY:
            messages.append(p.unpack_message(data))
    return messages


def binary_until(ws, kind: str) -> list[tuple[int, int, int, bytes]]:
    """Binary messages (type, index, pts_ms, payload) up to the JSON message `kind`."""
    messages = []
    while True:
        opcode, data = receive(ws)
        if opcode == websocket.ABNF.OPCODE_BINARY:
            messages.append(p.unpack_message(data))
        elif json.loads(data)["type"] == kind:
            return messages


def metric(server, name: str) -> dict[str, float]:
    """Samples of one metric family: {'name{labels}': value}."""
    text = server.get("/metrics", headers=_auth()).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name)
    }


# -- idle mode -----------------------------------------------------------------------------


def test_idle_frames_come_at_fps_until_speech_takes_over(server, avatar_id, speech):
    """With no audio, idle frames (type 2, the avatar's own JPEG) arrive at about 25 fps,
    numbered from 0; speech frames then come as one run of type 1 frames 0..n-1, and the
    idle frames resume after the flush, numbered on."""
    ws, _ = open_session(server, {"avatar_id": avatar_id}, idle=True, output={"quality": 100})
    started = time.monotonic()
    idle = read_binary(ws, 25)
    elapsed = time.monotonic() - started
    own = encode_image(
        ".jpg", cv2.imread(str(ASSETS / "face.jpg")), [cv2.IMWRITE_JPEG_QUALITY, 100]
    )
    assert {m[0] for m in idle} == {p.FRAME_TYPE_IDLE_JPEG}
    assert [m[1] for m in idle] == list(range(25))
    assert all(m[3] == own for m in idle)
    assert 0.6 < elapsed < 3.0, elapsed  # ~25 fps (1 s), never faster; slower when busy
    send_chunks(ws, speech[: int(0.5 * 16000)])
    ws.send(json.dumps({"type": "flush"}))
    kinds = [(m[0], m[1]) for m in binary_until(ws, "flushed")]
    speech_frames = [index for kind, index in kinds if kind == p.FRAME_TYPE_JPEG]
    assert speech_frames == list(range(13))
    first = kinds.index((p.FRAME_TYPE_JPEG, 0))
    assert all(kind == p.FRAME_TYPE_JPEG for kind, _ in kinds[first:])  # one run
    after = read_binary(ws, 3)
    assert {m[0] for m in after} == {p.FRAME_TYPE_IDLE_JPEG}
    assert after[0][1] > idle[-1][1]
    ws.close()


def _nearest(frame: np.ndarray, sources: list[np.ndarray]) -> int:
    errors = [np.abs(frame.astype(int) - s.astype(int)).mean() for s in sources]
    return int(np.argmin(errors))


def test_a_video_avatar_loops_forward_and_backward_through_idle_and_speech(
    server, video_avatar_id, clip, speech
):
    """Idle frames play the clip 0, 1, .., 5, 4, .., 0, 1, ..; the speech frames continue
    the loop where the idle frames were, and the idle frames where the speech stopped."""
    ws, ready = open_session(
        server, {"avatar_id": video_avatar_id}, idle=True, output={"quality": 100}
    )
    sources = [cv2.resize(frame, (ready["width"], ready["height"])) for frame in _decoded(clip[0])]
    idle = read_binary(ws, 12)
    send_chunks(ws, speech[: int(0.3 * 16000)])
    ws.send(json.dumps({"type": "flush"}))
    idle += binary_until(ws, "flushed")  # idle frames during the look-ahead, then speech
    ws.close()
    assert [m[0] for m in idle].count(p.FRAME_TYPE_JPEG) == 8
    shown = [_nearest(decode_jpeg(m[3]), sources) for m in idle]
    assert shown[:12] == list(frame_order(12, CLIP_FRAMES))
    assert shown == list(frame_order(len(shown), CLIP_FRAMES))


def _decoded(video: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(video)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


# -- webm ----------------------------------------------------------------------------------


def test_webm_output_is_one_stream_with_video_and_speech(server, avatar_id, speech):
    """Binary messages of type 3, concatenated, decode (PyAV) to the utterance's frames
    and its speech; `end` finishes the stream before closing."""
    ws, ready = open_session(server, {"avatar_id": avatar_id}, output={"format": "webm"})
    assert ready["mime_type"] == 'video/webm; codecs="vp9,opus"'
    samples = speech[: int(SPEECH_S * 16000)]
    send_chunks(ws, samples)
    ws.send(json.dumps({"type": "flush"}))
    chunks = binary_until(ws, "flushed")
    ws.send(json.dumps({"type": "end"}))
    while True:
        opcode, data = receive(ws)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        chunks.append(p.unpack_message(data))
    expected = audio.num_video_frames(len(samples), 25)
    assert {c[0] for c in chunks} == {p.FRAME_TYPE_WEBM}
    assert chunks[-1][1] == expected and chunks[-1][2] == expected * 40
    stream = b"".join(c[3] for c in chunks)
    with av.open(io.BytesIO(stream)) as container:
        video = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    with av.open(io.BytesIO(stream)) as container:
        sound = sum(f.samples for f in container.decode(audio=0)) / 48000
    assert len(video) == expected and video[0].shape == (512, 512, 3)
    assert abs(sound - expected / 25) < 0.03, sound


# -- subprotocol authentication ------------------------------------------------------------


def test_the_api_key_as_a_subprotocol_opens_the_session(server, avatar_id):
    ws = websocket.create_connection(
        ws_url(server), timeout=60, subprotocols=["lipsync", f"lipsync-key.{API_KEY}"]
    )
    assert ws.getsubprotocol() == "lipsync"
    ws.send(json.dumps({"type": "start", "avatar_id": avatar_id}))
    assert json.loads(ws.recv())["type"] == "ready"
    ws.close()


@pytest.mark.parametrize("offered", [["lipsync", "lipsync-key.wrong"], ["lipsync"]])
def test_a_wrong_or_missing_key_is_refused_before_the_upgrade(server, offered):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(server), timeout=60, subprotocols=offered)
    assert refused.value.status_code == 401
    assert API_KEY not in server.log_path.read_text()


# -- many sessions, one model --------------------------------------------------------------


def test_two_concurrent_sessions_go_through_the_batcher_and_keep_their_frames(
    server, avatar_id, speech, untrained_models
):
    """Two sessions fed at once: their inferences go through the shared batcher (counted in
    the batch histograms) and each still gets exactly its offline frames. Whether two
    sessions' windows meet in one batch depends on timing here; that pending windows of
    several sessions do run as one batch is tests/test_realtime_batcher.py's."""
    before = metric(server, "lipsync_realtime_batch_frames")
    samples = speech[: (2 * 16000)]
    results: list[list] = [[], []]

    def one(slot: int) -> None:
        ws, _ = open_session(server, {"avatar_id": avatar_id}, output={"quality": 100})
        send_chunks(ws, samples)
        ws.send(json.dumps({"type": "flush"}))
        results[slot] = collect_until(ws, "flushed")[0]
        ws.close()

    threads = [threading.Thread(target=one, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = metric(server, "lipsync_realtime_batch_frames")
    key = "lipsync_realtime_batch_frames_sum"
    assert after[key] - before.get(key, 0) == 2 * len(results[0])  # every frame, batched
    reference = offline_frames(untrained_models, samples)
    jpegs = [encode_image(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 100]) for f in reference]
    for frames in results:
        assert [f[0] for f in frames] == list(range(len(reference)))
        decoded = np.stack([decode_jpeg(f[2]) for f in frames]).astype(np.int16)
        error = np.abs(decoded - np.stack([decode_jpeg(j) for j in jpegs]))
        identical = sum(f[2] == j for f, j in zip(frames, jpegs, strict=True))
        assert identical >= len(reference) - 2 and error.max() <= 2, (identical, error.max())


def test_the_face_is_encoded_once_per_session(server, avatar_id, speech):
    """Two utterances and an interrupt in one session: the face encoder runs once."""
    before = metric(server, "lipsync_realtime_face_encodes_total")
    ws, _ = open_session(server, {"avatar_id": avatar_id})
    for _ in range(2):
        send_chunks(ws, speech[:8000])
        ws.send(json.dumps({"type": "flush"}))
        collect_until(ws, "flushed")
    send_chunks(ws, speech[:8000])
    ws.send(json.dumps({"type": "interrupt"}))
    collect_until(ws, "interrupted")
    ws.close()
    after = metric(server, "lipsync_realtime_face_encodes_total")
    name = "lipsync_realtime_face_encodes_total"
    assert after[name] - before.get(name, 0) == 1


# -- limits --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_server(untrained_models, tmp_path_factory):
    server = start_server(
        untrained_models,
        tmp_path_factory.mktemp("realtime-limits"),
        LIPSYNC_PRECISION="f32",
        LIPSYNC_REALTIME_MAX_SESSION_S="3",
        LIPSYNC_REALTIME_IDLE_TIMEOUT_S="1.5",
    )
    yield server
    stop_server(server)


def _strict_session(server) -> websocket.WebSocket:
    image = b64((ASSETS / "face.jpg").read_bytes())
    ws = websocket.create_connection(ws_url(server), timeout=30)
    ws.send(json.dumps({"type": "start", "image": image, "box": list(FACE_BOX)}))
    assert json.loads(ws.recv())["type"] == "ready"
    return ws


def test_a_silent_client_is_closed_after_the_idle_time(strict_server):
    ws = _strict_session(strict_server)
    started = time.monotonic()
    assert close_status(ws) == (1008, "no message for 1.5 s")
    assert 1.4 < time.monotonic() - started < 4


def test_a_session_is_closed_after_its_longest_time(strict_server):
    ws = _strict_session(strict_server)
    started = time.monotonic()
    done = threading.Event()

    def keep_talking() -> None:
        while not done.wait(0.4):
            try:
                ws.send_binary(pcm16(np.zeros(640, np.float32)))
            except (websocket.WebSocketException, OSError):
                return

    talker = threading.Thread(target=keep_talking)
    talker.start()
    try:
        code, reason = close_status(ws)
    finally:
        done.set()
        talker.join()
    assert (code, reason) == (1008, "session longer than 3 s")
    assert 2.9 < time.monotonic() - started < 6
