"""Live sessions for real networks, against the real gunicorn server: frames paced to real
time (never earlier than the lead, not held once due), an interrupt of a reply fed faster
than real time that leaves only the lead's worth behind, and patch output (base frames
once, then the changed region) that composites to the full-frame output, for an image and
a video avatar, with idle mode and the silence gate, in both protocols."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import websocket
from helpers import ASSETS, FACE_BOX, b64, make_clip, start_server, stop_server
from test_realtime import decode_jpeg, pcm16, receive, send_chunks
from test_realtime_modes import API_KEY, CLIP_BOX, CLIP_FRAMES, _register

from lipsync import audio
from lipsync.faces import frame_order
from lipsync.server.realtime import protocol as p

# A low frame rate keeps rendering well ahead of real time on a slow CPU, so the pace,
# not the renderer, decides when frames leave.
PACED_FPS = 5
# Composited patches against full frames: both within JPEG error of the same pixels.
MIN_PSNR_DB = 35.0
PATCH_TYPES = (p.FRAME_TYPE_PATCH, p.FRAME_TYPE_IDLE_PATCH)


@pytest.fixture(scope="module")
def server(untrained_models, tmp_path_factory):
    env = {"LIPSYNC_API_KEY": API_KEY, "LIPSYNC_PRECISION": "f32"}
    server = start_server(untrained_models, tmp_path_factory.mktemp("realtime-network"), **env)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def avatar_id(server) -> str:
    return _register(server, image=b64((ASSETS / "face.jpg").read_bytes()), box=list(FACE_BOX))


@pytest.fixture(scope="module")
def video_avatar_id(server) -> str:
    clip, _ = make_clip("mp4", "libx264", num_frames=CLIP_FRAMES, width=96, height=64)
    return _register(server, video=b64(clip), box=list(CLIP_BOX))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    wav, _ = audio.read_audio((ASSETS / "speech.wav").read_bytes())
    return wav


def open_session(server, face_id: str, **start) -> websocket.WebSocket:
    url = server.url.replace("http://", "ws://") + "/api/stream"
    ws = websocket.create_connection(url, timeout=60, header=[f"X-API-Key: {API_KEY}"])
    ws.send(json.dumps({"type": "start", "avatar_id": face_id, **start}))
    assert json.loads(ws.recv())["type"] == "ready"
    return ws


Message = tuple[int, int, int, bytes]  # (type, index, pts_ms, payload) as in binary


def _from_json(message: dict) -> Message:
    """A JSON frame/base/patch message as its binary equivalent (validated by its model)."""
    if message["type"] == "base":
        base = p.Base.model_validate(message)
        return p.FRAME_TYPE_BASE, base.index, 0, base64.b64decode(base.data)
    if message["type"] == "patch":
        patch = p.Patch.model_validate(message)
        rect = (patch.x, patch.y, patch.width, patch.height)
        payload = p.pack_patch(patch.base, rect, base64.b64decode(patch.data))
        kind = p.FRAME_TYPE_IDLE_PATCH if patch.idle else p.FRAME_TYPE_PATCH
        return kind, patch.index, patch.pts_ms, payload
    frame = p.Frame.model_validate(message)
    kind = p.FRAME_TYPE_IDLE_JPEG if frame.idle else p.FRAME_TYPE_JPEG
    return kind, frame.index, frame.pts_ms, base64.b64decode(frame.data)


def until(ws, kind: str, count: int | None = None) -> tuple[list[Message], list[dict]]:
    """Frame messages (either protocol) and the other JSON messages, up to the JSON message
    `kind` (or, with `count`, until that many frame messages)."""
    frames: list[Message] = []
    controls: list[dict] = []
    while count is None or len(frames) < count:
        opcode, data = receive(ws)
        if opcode == websocket.ABNF.OPCODE_BINARY:
            frames.append(p.unpack_message(data))
            continue
        message = json.loads(data)
        if message["type"] in ("frame", "base", "patch"):
            frames.append(_from_json(message))
            continue
        controls.append(message)
        if message["type"] == kind:
            break
    return frames, controls


def composite(messages: list[Message]) -> list[tuple[int, int, int, np.ndarray]]:
    """(type, index, base, image) of each patch drawn over its base, as a client does;
    checks that each base comes once, before the first patch over it."""
    bases: dict[int, np.ndarray] = {}
    drawn = []
    for kind, index, _, payload in messages:
        if kind == p.FRAME_TYPE_BASE:
            assert index not in bases, f"base {index} sent twice"
            bases[index] = decode_jpeg(payload)
        elif kind in PATCH_TYPES:
            base, (x, y, width, height), jpeg = p.unpack_patch(payload)
            image = bases[base].copy()
            if width:
                image[y : y + height, x : x + width] = decode_jpeg(jpeg)
            drawn.append((kind, index, base, image))
    return drawn


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def full_frames(server, face_id: str, samples: np.ndarray, **start) -> list[np.ndarray]:
    """The full-frame (jpeg) output of one utterance of `samples`."""
    ws = open_session(server, face_id, output={"format": "jpeg"}, pace="asap", **start)
    send_chunks(ws, samples)
    ws.send(json.dumps({"type": "flush"}))
    frames, _ = until(ws, "flushed")
    ws.close()
    assert [m[1] for m in frames] == list(range(len(frames)))
    return [decode_jpeg(m[3]) for m in frames]


def patch_frames(server, face_id: str, samples: np.ndarray, **start) -> list[Message]:
    ws = open_session(server, face_id, output={"format": "patch"}, **start)
    send_chunks(ws, samples)
    ws.send(json.dumps({"type": "flush"}))
    frames, _ = until(ws, "flushed")
    ws.close()
    return frames


def assert_composites_match(drawn, reference: list[np.ndarray]) -> None:
    assert [index for _, index, _, _ in drawn] == list(range(len(reference)))
    for (_, index, _, image), full in zip(drawn, reference, strict=True):
        assert psnr(image, full) >= MIN_PSNR_DB, index


# -- patch output ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_patch_output_of_an_image_composites_to_the_full_frames(
    server, avatar_id, speech, protocol
):
    """The image comes once, right after `ready`; each frame is then a patch over it of
    the lower face, and drawing it gives the full-frame output within JPEG error, for far
    fewer bytes."""
    samples = speech[:16000]
    messages = patch_frames(server, avatar_id, samples, protocol=protocol)
    assert messages[0][:2] == (p.FRAME_TYPE_BASE, 0)
    assert [m[0] for m in messages[1:]] == [p.FRAME_TYPE_PATCH] * (len(messages) - 1)
    drawn = composite(messages)
    assert_composites_match(drawn, full_frames(server, avatar_id, samples, protocol=protocol))
    for _, _, _, payload in messages[1:]:
        base, (x, y, width, height), _ = p.unpack_patch(payload)
        assert base == 0 and (x, width) == (FACE_BOX[2], FACE_BOX[3] - FACE_BOX[2])
        assert y > FACE_BOX[0] and y + height == FACE_BOX[1]  # the lower face only
    patches = sum(len(m[3]) for m in messages[1:])
    base_bytes = len(messages[0][3])
    assert patches < base_bytes * len(messages[1:]) / 4


def test_patch_output_of_a_video_avatar_sends_each_base_once_as_the_loop_needs_it(
    server, video_avatar_id, speech
):
    samples = speech[: int(0.6 * 16000)]
    messages = patch_frames(server, video_avatar_id, samples, pace="asap")
    drawn = composite(messages)  # each base once, before its first patch
    sources = [base for _, _, base, _ in drawn]
    assert sources == list(frame_order(len(drawn), CLIP_FRAMES))
    bases = [index for kind, index, _, _ in messages if kind == p.FRAME_TYPE_BASE]
    assert bases == list(range(CLIP_FRAMES))  # in the loop's order, each once
    assert_composites_match(drawn, full_frames(server, video_avatar_id, samples))


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_patch_output_in_idle_mode_names_the_loop_frames_without_pixels(
    server, video_avatar_id, speech, protocol
):
    """Idle frames are patches without a JPEG over the loop's frames; the speech continues
    the loop where they were, and no base is sent twice."""
    ws = open_session(
        server, video_avatar_id, output={"format": "patch"}, idle=True, protocol=protocol
    )
    idle, _ = until(ws, "", count=12)
    send_chunks(ws, speech[: int(0.3 * 16000)])
    ws.send(json.dumps({"type": "flush"}))
    rest, _ = until(ws, "flushed")
    after, _ = until(ws, "", count=3)
    ws.close()
    drawn = composite(idle + rest + after)
    kinds = [kind for kind, *_ in drawn]
    assert kinds.count(p.FRAME_TYPE_PATCH) == 8
    assert [base for *_, base, _ in drawn] == list(frame_order(len(drawn), CLIP_FRAMES))
    for kind, _, _, payload in idle + rest + after:
        if kind == p.FRAME_TYPE_IDLE_PATCH:
            assert p.unpack_patch(payload)[1][2:] == (0, 0)


def test_patch_output_with_the_silence_gate_sends_silent_frames_without_pixels(
    server, avatar_id, speech
):
    samples = np.concatenate([speech[: int(0.5 * 16000)], np.zeros(int(0.8 * 16000), np.float32)])
    messages = patch_frames(server, avatar_id, samples, silence_gate=True)
    widths = [p.unpack_patch(m[3])[1][2] for m in messages if m[0] == p.FRAME_TYPE_PATCH]
    assert widths[-1] == 0 and widths[0] > 0  # the trailing silence is the avatar itself
    drawn = composite(messages)
    assert_composites_match(drawn, full_frames(server, avatar_id, samples, silence_gate=True))


# -- pacing ----------------------------------------------------------------------------


def _arrivals(
    ws, count: int, ping_after: int | None = None
) -> tuple[list[tuple[float, float]], int | None]:
    """(arrival time, processing_ms) of `count` frames (JSON protocol); with `ping_after`,
    a ping is sent once that many have arrived, and the number of frames that had arrived
    when its pong came."""
    frames: list[tuple[float, float]] = []
    pong_at = None
    while len(frames) < count:
        message = json.loads(ws.recv())
        if message["type"] == "frame":
            frames.append((time.perf_counter(), message["processing_ms"] / 1000))
            if len(frames) == ping_after:
                ws.send(json.dumps({"type": "ping", "id": 1}))
        elif message["type"] == "pong":
            pong_at = len(frames)
    return frames, pong_at


def test_paced_frames_leave_no_earlier_than_the_lead_and_a_ping_is_not_held(
    server, avatar_id, speech
):
    """3 s of speech sent at once: frame i arrives no earlier than the lead before its time
    (i / fps after the audio arrived), and no later than that or than it was made (its
    processing time after the audio); a ping is answered ahead of the waiting frames. With
    pace asap all arrive as fast as they are made."""
    samples, lead = speech[: 3 * 16000], 0.2
    count = audio.num_video_frames(len(samples), PACED_FPS)
    start = {"fps": PACED_FPS, "protocol": "json"}
    ws = open_session(server, avatar_id, lead_ms=int(lead * 1000), **start)
    sent = time.perf_counter()
    ws.send_binary(pcm16(samples))
    frames, pong_at = _arrivals(ws, count - 2, ping_after=1)
    ws.close()
    for index, (arrived, processing) in enumerate(frames):
        due = sent + index / PACED_FPS - lead
        assert arrived >= due - 0.01, index
        assert arrived <= max(due, sent + processing) + 0.4, index  # a busy CPU's delays
    assert pong_at is not None and pong_at < len(frames) // 2
    ws = open_session(server, avatar_id, pace="asap", **start)
    sent = time.perf_counter()
    ws.send_binary(pcm16(samples))
    fast, _ = _arrivals(ws, count - 2)
    ws.close()
    for arrived, processing in fast:
        assert arrived <= sent + processing + 0.4
    early = [i for i, (arrived, _) in enumerate(fast) if arrived < sent + i / PACED_FPS - lead]
    assert early  # frames a realtime pace would have held


@pytest.mark.parametrize("lead_ms", [0, 400])
def test_an_interrupt_of_a_reply_sent_at_once_leaves_only_the_lead_behind(
    server, avatar_id, speech, lead_ms
):
    """A TTS-like feed (6 s at once), interrupted when the first frame arrives: before
    `interrupted` come only the frames due by then (the clock runs from the audio's
    arrival) and the lead's worth, none after it."""
    samples = np.tile(speech, 2)[: 6 * 16000]
    ws = open_session(server, avatar_id, fps=PACED_FPS, lead_ms=lead_ms)
    sent = time.perf_counter()
    for offset in range(0, len(samples), 16000):  # 1 s messages, as fast as they go
        ws.send_binary(pcm16(samples[offset : offset + 16000]))
    assert receive(ws)[0] == websocket.ABNF.OPCODE_BINARY
    ws.send(json.dumps({"type": "interrupt"}))
    elapsed = time.perf_counter() - sent
    before, _ = until(ws, "interrupted")
    assert len(before) <= int((elapsed + 0.02 + lead_ms / 1000) * PACED_FPS)
    assert len(before) < audio.num_video_frames(len(samples), PACED_FPS) // 4
    ws.settimeout(0.6)
    with pytest.raises(websocket.WebSocketTimeoutException):
        receive(ws)
    ws.close()
