"""A property-based fuzzer of /api/stream against the real gunicorn server (hypothesis,
bounded): messages generated from the protocol's own JSON Schemas (valid ones, and
mutated), raw frames (any opcode, fragments, reserved bits, unmasked, oversized), handshake
headers and message orders. Properties: never an HTTP 500; every upgraded connection ends
in a close frame whose code is one protocol.json documents; the server stays healthy and
its worker leaks no threads or sockets."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from helpers import ASSETS, FACE_BOX, b64, start_server, stop_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ws_raw import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    UPGRADE_HEADERS,
    frame,
    http_body,
    http_request,
    read_until_closed,
    text,
    upgrade,
)

from lipsync.server.realtime import protocol as p
from lipsync.server.realtime.protocol_doc import protocol_document
from tools.local_server import worker_threads

MAX_MESSAGE = 32 * 1024
DOCUMENT = protocol_document()
SCHEMAS = DOCUMENT["components"]["schemas"]
CLOSE_CODES = {int(code) for code in DOCUMENT["close_codes"]}
FUZZ = settings(
    max_examples=int(os.environ.get("LIPSYNC_FUZZ_EXAMPLES", "25")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def server(untrained_models, tmp_path_factory):
    server = start_server(
        untrained_models,
        tmp_path_factory.mktemp("fuzz"),
        LIPSYNC_PRECISION="f32",
        LIPSYNC_REALTIME_MAX_SESSIONS="2",
        LIPSYNC_REALTIME_MAX_MESSAGE_BYTES=str(MAX_MESSAGE),
        LIPSYNC_REALTIME_START_TIMEOUT_S="1",
        LIPSYNC_REALTIME_MAX_UNSTARTED_PER_CLIENT="16",
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def avatar_id(server) -> str:
    image = b64((ASSETS / "face.jpg").read_bytes())
    reply = server.post("/api/avatars", json={"image": image, "box": list(FACE_BOX)})
    return reply.json()["avatar_id"]


# -- values from the protocol's schemas ----------------------------------------------------


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy:
    """Values valid for a JSON Schema of protocol.json (the subset pydantic writes)."""
    if "$ref" in schema:
        return from_schema(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([from_schema(s) for s in schema.get("anyOf", schema.get("oneOf"))])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1e6))
        high = schema.get("maximum", 1e6)
        return st.floats(low, high, exclude_min="exclusiveMinimum" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.text(max_size=12)
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.tuples(*[from_schema(item) for item in schema["prefixItems"]]).map(list)
    if kind == "object":
        properties = {
            name: from_schema(sub)
            for name, sub in schema.get("properties", {}).items()
            if not sub.get("deprecated")
        }
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {name: value for name, value in properties.items() if name in required},
            optional={name: value for name, value in properties.items() if name not in required},
        )
    return JSON_VALUES


def client_message(name: str, avatar_id: str) -> st.SearchStrategy[dict]:
    """A message of the model `name`, valid by its schema (a start names the avatar)."""
    base = from_schema(SCHEMAS[name])
    if name == "Start":
        base = base.map(lambda m: {**m, "avatar_id": avatar_id, "image": None})
    return base


def mutated(message: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    """A message with a field dropped, replaced by any JSON value, or one added."""

    def mutate(data: st.DataObject, value: dict) -> dict:
        out = dict(value)
        how = data.draw(st.sampled_from(["drop", "replace", "add"]))
        if how == "add" or not out:
            out[data.draw(st.text(max_size=6))] = data.draw(JSON_VALUES)
        elif how == "drop":
            out.pop(data.draw(st.sampled_from(sorted(out))))
        else:
            out[data.draw(st.sampled_from(sorted(out)))] = data.draw(JSON_VALUES)
        return out

    return st.tuples(st.data(), message).map(lambda pair: mutate(*pair))


def actions(avatar_id: str) -> st.SearchStrategy[list[bytes]]:
    """A message order: a start (valid, mutated, or none), then messages and frames."""
    names = ["Audio", "Flush", "Interrupt", "Ping", "End", "Start"]
    valid = st.one_of([client_message(n, avatar_id) for n in names])
    json_frames = st.one_of(valid, mutated(valid)).map(text)
    pcm = st.binary(max_size=3200).map(lambda b: frame(OP_BINARY, b))
    raw = st.builds(
        frame,
        st.integers(0, 15),
        st.binary(max_size=64),
        fin=st.booleans(),
        mask=st.booleans(),
        rsv=st.integers(0, 7),
    )
    special = st.sampled_from(
        [
            frame(OP_BINARY, bytes(MAX_MESSAGE + 1)),  # oversize
            frame(OP_TEXT, b'{"type": "fl', fin=False) + frame(0, b'ush"}'),  # fragmented
            frame(OP_TEXT, b"\xff\xfe"),  # not UTF-8
            frame(OP_PING, b"x"),
            frame(OP_CLOSE, b"\x03\xe8"),
            b"pause",
        ]
    )
    body = st.lists(st.one_of(json_frames, pcm, raw, special), max_size=6)
    first = st.one_of(
        client_message("Start", avatar_id), mutated(client_message("Start", avatar_id))
    ).map(text)
    return st.tuples(st.lists(first, max_size=1), body).map(lambda pair: pair[0] + pair[1])


# -- the properties ------------------------------------------------------------------------


def port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def connect(server) -> tuple:
    """An upgraded connection; waits out a full worker (503 is a correct answer)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return upgrade(port(server))
        except ConnectionRefusedError as refused:
            assert refused.args[0] == 503, refused.args
            assert time.monotonic() < deadline
            time.sleep(0.3)


def test_any_message_order_ends_in_a_documented_close(server, avatar_id):
    (worker,) = server.worker_pids()
    fds = len(os.listdir(f"/proc/{worker}/fd"))

    @FUZZ
    @given(sends=actions(avatar_id))
    def run(sends: list[bytes]) -> None:
        sock, rest = connect(server)
        try:
            for data in sends:
                if data == b"pause":
                    time.sleep(0.2)
                else:
                    sock.sendall(data)
            sock.sendall(text({"type": "end"}))
        except OSError:
            pass  # the server closed first: its close frame is read below
        ending = read_until_closed(sock, rest, timeout=120)
        assert not ending.garbage, ending.garbage[:120]
        assert ending.close is not None and ending.close[0] in CLOSE_CODES, ending.close
        assert ending.close[0] != p.CLOSE_INTERNAL, ending.close

    run()
    assert server.get("/health/live").status_code == 200
    log = server.log_path.read_text()
    assert "Traceback" not in log and "another greenlet" not in log, log[-3000:]
    deadline = time.monotonic() + 30
    while len(os.listdir(f"/proc/{worker}/fd")) > fds + 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(os.listdir(f"/proc/{worker}/fd")) <= fds + 2  # every socket closed
    assert worker_threads(worker) < 64  # the native pool is bounded; greenlets are not threads


HEADER_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["", "websocket", "Upgrade", "13", "8", "lipsync", ",", "a" * 200]),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=30),
)


@FUZZ
@given(
    changes=st.dictionaries(
        st.sampled_from(
            [*UPGRADE_HEADERS, "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Origin"]
        ),
        HEADER_VALUES,
        max_size=4,
    ),
    method=st.sampled_from(["GET", "GET", "POST", "HEAD", "PUT"]),
)
def test_any_handshake_is_answered_without_a_500(server, changes, method):
    headers = {k: v for k, v in {**UPGRADE_HEADERS, **changes}.items() if v is not None}
    headers = {k: v.strip() for k, v in headers.items()}
    sock, status, answer, rest = http_request(port(server), headers, method)
    try:
        assert status in (101, 400, 403, 405, 426, 503), (status, headers)
        if status != 101 and method != "HEAD":
            body = json.loads(http_body(sock, answer, rest))
            assert body["success"] is False and body["error"]["code"]
    finally:
        sock.close()
    assert server.get("/health/live").status_code == 200
