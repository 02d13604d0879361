"""/api/stream never answers 500, on raw sockets against the real gunicorn server:
malformed upgrades are 400/426 JSON errors; after the upgrade every ending is a close
frame (never an HTTP answer written onto the socket); connections that never send
`start` cannot take the places of real sessions; and a session runs on the gthread
worker too (its loops are threads there)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from helpers import ASSETS, FACE_BOX, b64, start_server, stop_server
from ws_raw import (
    OP_BINARY,
    OP_PING,
    OP_TEXT,
    UPGRADE_HEADERS,
    close_frame,
    frame,
    http_body,
    http_request,
    read_until,
    read_until_closed,
    text,
    upgrade,
)

from lipsync.server.realtime import protocol as p
from tools.local_server import worker_threads

START_TIMEOUT_S = 2
MAX_MESSAGE = 64 * 1024
SETTINGS = {
    "LIPSYNC_PRECISION": "f32",
    "LIPSYNC_DEFAULT_BLEND": "none",
    "LIPSYNC_REALTIME_MAX_SESSIONS": "2",
    "LIPSYNC_REALTIME_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
    "LIPSYNC_REALTIME_START_TIMEOUT_S": str(START_TIMEOUT_S),
    "LIPSYNC_REALTIME_MAX_UNSTARTED_PER_CLIENT": "4",
}
PCM = (np.sin(np.arange(16000) / 5) * 8000).astype("<i2").tobytes()  # 1 s


@pytest.fixture(scope="module")
def server(untrained_models, tmp_path_factory):
    server = start_server(untrained_models, tmp_path_factory.mktemp("live"), **SETTINGS)
    yield server
    stop_server(server)


def port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def register(server) -> str:
    image = b64((ASSETS / "face.jpg").read_bytes())
    reply = server.post("/api/avatars", json={"image": image, "box": list(FACE_BOX)})
    assert reply.status_code in (200, 201), reply.text
    return reply.json()["avatar_id"]


@pytest.fixture(scope="module")
def avatar_id(server) -> str:
    return register(server)


def no_tracebacks(server) -> None:
    log = server.log_path.read_text()
    assert "Traceback" not in log and "another greenlet" not in log, log[-3000:]


def free_sessions(server) -> None:
    """Wait until no session is open (the previous test's may still be closing)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        metrics = server.get("/metrics").text
        open_now = [
            line for line in metrics.splitlines() if line.startswith("lipsync_realtime_sessions")
        ]
        if all(float(line.split()[-1]) == 0 for line in open_now):
            return
        time.sleep(0.2)
    raise TimeoutError("sessions stay open")


# -- the handshake -------------------------------------------------------------------------

WITHOUT = {name: None for name in UPGRADE_HEADERS}


@pytest.mark.parametrize(
    ("changes", "method", "status", "code"),
    [
        ({}, "GET", 101, None),
        ({"Sec-WebSocket-Key": None}, "GET", 400, "bad_request"),
        ({"Sec-WebSocket-Key": "abc"}, "GET", 400, "bad_request"),
        ({"Sec-WebSocket-Key": "a,b"}, "GET", 400, "bad_request"),
        ({"Sec-WebSocket-Version": None}, "GET", 426, "upgrade_required"),
        ({"Sec-WebSocket-Version": "8"}, "GET", 426, "upgrade_required"),
        ({"Connection": None}, "GET", 400, "bad_request"),
        ({"Upgrade": None}, "GET", 400, "bad_request"),
        ({"Upgrade": "h2c"}, "GET", 400, "bad_request"),
        (WITHOUT, "GET", 400, "bad_request"),
        ({}, "POST", 405, "method_not_allowed"),
        ({}, "HEAD", 400, None),  # a HEAD answer has no body
        ({"Sec-WebSocket-Protocol": "l\u00e9"}, "GET", 400, "bad_request"),
        ({"Sec-WebSocket-Protocol": ",,"}, "GET", 101, None),
        (
            {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits=x"},
            "GET",
            400,
            "bad_request",
        ),
    ],
)
def test_a_malformed_upgrade_is_a_json_error_never_a_500(server, changes, method, status, code):
    headers = {name: value for name, value in {**UPGRADE_HEADERS, **changes}.items() if value}
    sock, got, answer, rest = http_request(port(server), headers, method)
    try:
        assert got == status, (got, answer)
        if code is not None:
            body = json.loads(http_body(sock, answer, rest))
            assert body["success"] is False and body["error"]["code"] == code
            assert body["error"]["message"]
        if status == 426:
            assert answer["sec-websocket-version"] == "13"
    finally:
        sock.close()
    no_tracebacks(server)


# -- after the upgrade: always a close frame -----------------------------------------------


def session_start(avatar_id: str, **extra) -> bytes:
    return text({"type": "start", "avatar_id": avatar_id, **extra})


@pytest.mark.parametrize(
    ("name", "codes"),
    [
        ("webm end before any frame", {1000}),
        ("webm audio interrupt end", {1000}),
        ("binary before start", {1003}),
        ("huge frame before start", {1009}),
        ("huge frame mid-session", {1009}),
        ("interrupt flush end at once", {1000}),
        ("close while frames are sent", {1000}),
        ("pings while frames are sent", {1000, 1008}),
        ("unknown opcode", {1002}),
        ("fragmented start", {1000}),
    ],
)
def test_every_session_ends_in_a_close_frame(server, avatar_id, name, codes):
    """Inputs and orders that once ended in `HTTP/1.1 500` written onto the upgraded
    socket (an exception escaping the session) and a socket used by two greenlets."""
    free_sessions(server)
    sock, rest = upgrade(port(server))
    webm = session_start(avatar_id, output={"format": "webm"})
    jpeg = session_start(avatar_id)
    end = text({"type": "end"})
    sends = {
        "webm end before any frame": [webm, end],
        "webm audio interrupt end": [webm, frame(OP_BINARY, PCM), text({"type": "interrupt"}), end],
        "binary before start": [frame(OP_BINARY, b"\x00\x01")],
        "huge frame before start": [frame(OP_BINARY, bytes(MAX_MESSAGE + 2))],
        "huge frame mid-session": [
            jpeg,
            frame(OP_BINARY, PCM),
            frame(OP_BINARY, bytes(MAX_MESSAGE + 2)),
        ],
        "interrupt flush end at once": [
            jpeg,
            frame(OP_BINARY, PCM),
            text({"type": "flush"}),
            text({"type": "interrupt"}),
            end,
        ],
        "close while frames are sent": [
            jpeg,
            frame(OP_BINARY, PCM * 2),
            text({"type": "flush"}),
            "wait",
            close_frame(),
        ],
        "pings while frames are sent": [
            jpeg,
            frame(OP_BINARY, PCM * 2),
            text({"type": "flush"}),
            "wait",
            *[frame(OP_PING, b"p" * 100)] * 30,
            end,
        ],
        "unknown opcode": [jpeg, frame(3, b"xx")],
        "fragmented start": [
            frame(OP_TEXT, b'{"type": "start", ', fin=False),
            frame(0, f'"avatar_id": "{avatar_id}"}}'.encode()),
            end,
        ],
    }[name]
    for data in sends:
        if data == "wait":
            time.sleep(1)
        else:
            sock.sendall(data)
    ending = read_until_closed(sock, rest)
    assert not ending.garbage, ending.garbage[:200]
    assert ending.close is not None and ending.close[0] in codes, ending.close
    assert server.get("/health/live").status_code == 200
    no_tracebacks(server)


# -- unstarted connections -----------------------------------------------------------------


def test_idle_unstarted_sockets_cannot_stop_a_real_session(server, avatar_id):
    """8 sockets from one address upgrade and send nothing (max 2 sessions): 4 are taken
    (the per-client bound), the rest refused 503 before the upgrade; a real client from
    another address still starts a session and gets frames; the idle ones are closed
    1008 after the start timeout."""
    free_sessions(server)
    idle, refused = [], []
    for _ in range(8):
        try:
            idle.append(upgrade(port(server), source="127.0.0.2"))
        except ConnectionRefusedError as exc:
            refused.append(exc.args[0])
    assert len(idle) == 4 and refused == [503] * 4
    sock, rest = upgrade(port(server))
    sock.sendall(session_start(avatar_id) + frame(OP_BINARY, PCM[:16000]) + text({"type": "flush"}))
    time.sleep(0.1)
    endings = [read_until_closed(s, r, timeout=START_TIMEOUT_S + 30) for s, r in idle]
    assert all(e.close and e.close[0] == p.CLOSE_POLICY for e in endings), [
        e.close for e in endings
    ]
    assert "no start message" in endings[0].close[1]
    sock.sendall(text({"type": "end"}))
    ending = read_until_closed(sock, rest)
    assert ending.texts()[0]["type"] == "ready", ending.frames[:2]
    assert ending.close == (1000, "end")
    no_tracebacks(server)


# -- the gthread worker --------------------------------------------------------------------


def _gthread_session(server, avatar: str) -> None:
    """One session on the gthread worker: an utterance's frames in order then `flushed`, an
    interrupt, a ping, `end`."""
    sock, rest = upgrade(port(server))
    sock.sendall(session_start(avatar) + frame(OP_BINARY, PCM[:16000]) + text({"type": "flush"}))
    flushed = lambda e: any(m["type"] == "flushed" for m in e.texts())  # noqa: E731
    first, rest = read_until(sock, rest, flushed, timeout=600)
    sock.sendall(text({"type": "interrupt"}) + text({"type": "ping", "id": 1}))
    ponged = lambda e: any(m["type"] == "pong" for m in e.texts())  # noqa: E731
    controls, rest = read_until(sock, rest, ponged)
    sock.sendall(text({"type": "end"}))
    ending = read_until_closed(sock, rest)
    assert not first.garbage and not ending.garbage and ending.close == (1000, "end")
    frames = [p.unpack_frame(d)[0] for op, d in first.frames if op == OP_BINARY]
    assert frames == list(range(13)) and first.texts()[-1] == {"type": "flushed", "frames": 13}
    assert [m["type"] for m in controls.texts()] == ["interrupted", "pong"]


def _settled_threads(pid: int, above: int | None = None, seconds: float = 30.0) -> int:
    """The worker's thread count once it stops falling (or is back to `above`)."""
    deadline = time.monotonic() + seconds
    count = worker_threads(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = worker_threads(pid)
        if now == count and (above is None or now <= above):
            break
        count = now
    return worker_threads(pid)


def test_a_session_runs_on_the_gthread_worker(untrained_models, tmp_path):
    """Its loops are native threads there: sessions run whole, and each gives back every
    thread it started (the first session may leave the worker's lazily made pools, so the
    count is taken after it)."""
    server = start_server(
        untrained_models,
        tmp_path,
        **{**SETTINGS, "LIPSYNC_REALTIME_IDLE_TIMEOUT_S": "600"},
        LIPSYNC_WORKER_CLASS="gthread",
        LIPSYNC_THREADS="4",
    )
    try:
        avatar = register(server)
        (worker,) = server.worker_pids()
        _gthread_session(server, avatar)
        before = _settled_threads(worker)
        _gthread_session(server, avatar)
        assert _settled_threads(worker, above=before) <= before
        no_tracebacks(server)
    finally:
        stop_server(server)
