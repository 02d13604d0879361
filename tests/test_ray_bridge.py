"""The WSGI-on-ASGI bridge of the Ray Serve deployment (lipsync/server/asgi_bridge.py),
driven as an ASGI server drives it: chunks leave while the app still runs, a client that
goes closes the app's body, a failure after the first byte propagates, bodies reach the
app whole (or refused by its limit), WebSockets are refused with a reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import pytest

from lipsync.server.admission import ClientDisconnectedError, Deadline
from lipsync.server.app import create_app
from lipsync.server.asgi_bridge import CONNECTION_KEY, WEBSOCKET_REFUSED, WsgiOnAsgi

WAIT_S = 30


def scope(method: str = "GET", path: str = "/", headers=()) -> dict:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5555),
    }


def receiver(*bodies: bytes):
    """An ASGI receive() handing out `bodies` as one request body, then nothing."""
    messages = [
        {"type": "http.request", "body": b, "more_body": i < len(bodies) - 1}
        for i, b in enumerate(bodies or [b""])
    ]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    return receive


def bridge(app, **kwargs) -> WsgiOnAsgi:
    return WsgiOnAsgi(app, max_body_bytes=kwargs.pop("max_body_bytes", 1000), threads=2, **kwargs)


def test_chunks_leave_while_the_app_still_runs():
    first_sent = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "video/webm")])
        yield b"first"
        assert first_sent.wait(WAIT_S), "the first chunk was held back"
        yield b"second"

    sent = []

    async def send(message):
        sent.append(message)
        if message.get("body") == b"first":
            first_sent.set()

    asyncio.run(asyncio.wait_for(bridge(app)(scope(), receiver(), send), WAIT_S))
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 3
    assert [m.get("body") for m in sent[1:]] == [b"first", b"second", b""]
    assert sent[-1]["more_body"] is False


def test_a_client_that_goes_closes_the_body():
    closed = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [])
        try:
            while True:
                yield b"frame"
        finally:
            closed.set()

    async def send(message):
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    with pytest.raises(OSError):
        asyncio.run(bridge(app)(scope(), receiver(), send))
    assert closed.wait(WAIT_S)


def test_a_hang_up_during_a_whole_file_generation_stops_it():
    """The generation's Deadline (as the route makes it) sees the client go between
    batches when the host cancels the call (as Serve does when a client disconnects)."""
    stopped = threading.Event()

    def app(environ, start_response):
        deadline = Deadline(WAIT_S, environ.get(CONNECTION_KEY))
        try:
            while True:  # frame batches
                deadline.check()
                time.sleep(0.02)
        except ClientDisconnectedError:
            stopped.set()
        start_response("200 OK", [])
        return [b""]

    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)

    async def send(message):
        pass

    async def client():
        call = asyncio.ensure_future(bridge(app)(scope("POST"), receive, send))
        await asyncio.sleep(0.3)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(call, WAIT_S)

    asyncio.run(client())
    assert stopped.wait(WAIT_S)


def test_a_failure_after_the_first_byte_propagates_without_the_last_chunk():
    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"header"
        raise RuntimeError("encoder failed")

    sent = []

    async def send(message):
        sent.append(message)

    with pytest.raises(RuntimeError, match="encoder failed"):
        asyncio.run(bridge(app)(scope(), receiver(), send))
    assert sent[-1] == {"type": "http.response.body", "body": b"header", "more_body": True}


def test_the_body_reaches_the_app_whole_and_the_replica_header_is_added():
    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{environ['CONTENT_LENGTH']}:{body.decode()}:{environ['HTTP_X_A']}".encode()]

    sent = []

    async def send(message):
        sent.append(message)

    headers = [("X-A", "1"), ("X-A", "2")]
    call = bridge(app, headers=[("X-Replica", "r1")])(
        scope("POST", "/x", headers), receiver(b"ab", b"cd"), send
    )
    asyncio.run(call)
    assert (b"x-replica", b"r1") in sent[0]["headers"]
    assert sent[1]["body"] == b"4:abcd:1,2"


def test_the_real_app_refuses_an_oversized_body_from_its_length(tmp_path):
    flask = create_app({"models_dir": tmp_path, "avatar_dir": None, "max_body_mb": 0.001})
    sent = []

    async def send(message):
        sent.append(message)

    declared = [("Content-Length", "5000000"), ("Content-Type", "application/json")]
    call = bridge(flask, max_body_bytes=1048)(
        scope("POST", "/api/generate", declared), receiver(b"{"), send
    )
    asyncio.run(call)
    assert sent[0]["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_websocket_is_refused_with_a_reason():
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    call = bridge(lambda e, s: [], websocket_reason="use gunicorn")
    asyncio.run(call({"type": "websocket", "path": "/api/stream"}, receive, send))
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": WEBSOCKET_REFUSED, "reason": "use gunicorn"},
    ]
