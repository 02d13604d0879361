"""A WebSocket client on a raw socket, for tests that send what a library would refuse to:
malformed upgrades, odd opcodes, fragments, unmasked or oversized frames, half-sent
messages. Frames read back are parsed by hand, so an HTTP answer written onto the upgraded
socket (a 500) shows as what it is."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from dataclasses import dataclass, field

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
KEY = base64.b64encode(b"0123456789abcdef").decode()
UPGRADE_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": KEY,
}


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """One WebSocket frame as a client sends it (masked unless told otherwise)."""
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 1 << 16:
        head = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def text(message: dict | str) -> bytes:
    data = message if isinstance(message, str) else json.dumps(message)
    return frame(OP_TEXT, data.encode())


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())


def http_request(
    port: int, headers: dict[str, str], method: str = "GET", source: str = "127.0.0.1"
) -> tuple[socket.socket, int, dict[str, str], bytes]:
    """Send a request for /api/stream; (socket, status, headers, bytes after the head)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    lines = [f"{method} /api/stream HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1]) if status_line else 0
    answer = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer[name.strip().lower()] = value.strip()
    return sock, status, answer, rest


def http_body(sock: socket.socket, headers: dict[str, str], rest: bytes) -> bytes:
    """The body of an answer read by `http_request`."""
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return rest[:length]


def upgrade(port: int, source: str = "127.0.0.1", **extra: str) -> tuple[socket.socket, bytes]:
    """An upgraded connection and the bytes already read after the 101."""
    sock, status, headers, rest = http_request(port, {**UPGRADE_HEADERS, **extra}, source=source)
    if status != 101:
        sock.close()
        raise ConnectionRefusedError(status, headers)
    return sock, rest


@dataclass
class Ending:
    """What the server sent after the upgrade: its frames, the close code and reason (None
    when no close frame came), any bytes that are not frames (an HTTP answer)."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)
    close: tuple[int, str] | None = None
    garbage: bytes = b""

    def texts(self) -> list[dict]:
        return [json.loads(data) for op, data in self.frames if op == OP_TEXT]


def _parse(data: bytes, ending: Ending) -> int:
    """Parse whole frames of `data` into `ending`; -> bytes consumed."""
    at = 0
    while True:
        if len(data) - at < 2:
            return at
        first, second = data[at], data[at + 1]
        if first & 0x70 or (first & 0x0F) not in (0, 1, 2, 8, 9, 10) or second & 0x80:
            ending.garbage = data[at:]  # not a server frame: e.g. "HTTP/1.1 500"
            return len(data)
        n, head = second & 0x7F, 2
        if n == 126:
            if len(data) - at < 4:
                return at
            n, head = struct.unpack_from("!H", data, at + 2)[0], 4
        elif n == 127:
            if len(data) - at < 10:
                return at
            n, head = struct.unpack_from("!Q", data, at + 2)[0], 10
        if len(data) - at < head + n:
            return at
        payload = data[at + head : at + head + n]
        ending.frames.append((first & 0x0F, payload))
        if first & 0x0F == OP_CLOSE and ending.close is None:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            ending.close = (code, payload[2:].decode(errors="replace"))
        at += head + n


def read_until(sock: socket.socket, rest: bytes, done, timeout: float = 60) -> tuple[Ending, bytes]:
    """Frames until `done(ending)`, a close frame or the connection's end; -> (them, the
    bytes read beyond)."""
    ending = Ending()
    buffer = rest
    sock.settimeout(timeout)
    while True:
        buffer = buffer[_parse(buffer, ending) :]
        if ending.close is not None or ending.garbage or done(ending):
            return ending, buffer
        chunk = sock.recv(1 << 16)
        if not chunk:
            return ending, buffer
        buffer += chunk


def read_until_closed(sock: socket.socket, rest: bytes = b"", timeout: float = 60) -> Ending:
    """Every frame until the server's close frame (answered) or the connection's end."""
    ending = Ending()
    try:
        ending, _ = read_until(sock, rest, lambda _: False, timeout)
        if ending.close is not None:
            sock.sendall(close_frame(ending.close[0]))
    except OSError:
        pass
    finally:
        sock.close()
    return ending
