"""The live transport of the WSGI server (gunicorn): a simple-websocket connection
(on wsproto), upgraded from the request of the route.

`accept` checks the upgrade request first (HandshakeError: 400, or 426 for a WebSocket
version other than 13) and answers 101; `SocketTransport` adapts the connection to
`LiveTransport`; `upgraded_response` is what the view returns afterwards, so nothing more
is written on the socket (no HTTP answer ever follows a 101).

Every write to the socket, simple-websocket's own (answers to pings and closes from its
reading thread) and the session's, goes through one lock: two greenlets (or threads)
never write at once, and a close frame never lands inside a frame.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import select
import socket
import threading
from typing import Any

from flask import Response
from simple_websocket import ConnectionClosed, Server
from wsproto.events import CloseConnection, Message, TextMessage
from wsproto.utilities import LocalProtocolError

from lipsync.errors import ErrorCode, LipSyncError
from lipsync.server.realtime.transport import TransportClosed

logger = logging.getLogger(__name__)

WEBSOCKET_VERSION = "13"
KEY_BYTES = 16  # Sec-WebSocket-Key: base64 of 16 random bytes (RFC 6455 section 4.1)
# How long `close` waits for a blocked send to finish, then for the socket to take the
# close frame, before it drops the connection (a reader that reads nothing).
CLOSE_SEND_WAIT_S = 1.0
# How long `close` waits for the peer's close frame in answer to ours.
CLOSE_REPLY_WAIT_S = 2.0


class HandshakeError(LipSyncError):
    """An upgrade request that cannot be answered with 101; `headers` go with the answer."""

    def __init__(
        self, message: str, *, code: ErrorCode = ErrorCode.BAD_REQUEST, field: str | None = None
    ) -> None:
        super().__init__(message, code=code, field=field)
        self.headers: dict[str, str] = {}
        if code is ErrorCode.UPGRADE_REQUIRED:
            self.headers = {"Sec-WebSocket-Version": WEBSOCKET_VERSION, "Upgrade": "websocket"}


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def check_upgrade(method: str, headers: Any) -> None:
    """HandshakeError unless `method` and `headers` (a Mapping of the request's headers)
    are a WebSocket upgrade this server can accept (RFC 6455 section 4.2.1)."""
    if "websocket" not in _tokens(headers.get("Upgrade", "")) or "upgrade" not in _tokens(
        headers.get("Connection", "")
    ):
        raise HandshakeError(
            "not a WebSocket upgrade: /api/stream needs the headers Upgrade: websocket and "
            "Connection: Upgrade"
        )
    if method != "GET":
        raise HandshakeError(f"a WebSocket upgrade is a GET, not a {method}")
    version = headers.get("Sec-WebSocket-Version", "")
    if version.strip() != WEBSOCKET_VERSION:
        raise HandshakeError(
            f"Sec-WebSocket-Version {version!r} is not spoken here: only {WEBSOCKET_VERSION}",
            code=ErrorCode.UPGRADE_REQUIRED,
            field="Sec-WebSocket-Version",
        )
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        decoded = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != KEY_BYTES:
        raise HandshakeError(
            f"Sec-WebSocket-Key must be the base64 of {KEY_BYTES} bytes, got {key!r}",
            field="Sec-WebSocket-Key",
        )


def accept(environ: dict[str, Any], **options: Any) -> SocketTransport:
    """Answer 101 and return the connection; HandshakeError (nothing written) when the
    upgrade's headers cannot be negotiated (simple-websocket's Server `options`)."""
    try:
        ws = Server(environ, **options)
    except (ConnectionError, OSError) as exc:  # the client went before the 101 left
        raise HandshakeError(f"the upgrade failed: {exc!r}") from None
    except Exception as exc:  # wsproto refused a header (extensions, subprotocols, ...)
        logger.info("WebSocket upgrade refused: %r", exc)
        raise HandshakeError(f"malformed WebSocket upgrade: {exc}") from None
    return SocketTransport(ws)


class _SerialSocket:
    """The connection's socket, every write whole and under `lock`."""

    def __init__(self, sock: socket.socket, lock: threading.Lock) -> None:
        self._sock = sock
        self._lock = lock

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class SocketTransport:
    """`LiveTransport` over a simple-websocket Server connection."""

    def __init__(self, ws: Server) -> None:
        self._ws = ws
        self._sock: socket.socket = ws.sock
        self._send_lock = threading.Lock()
        ws.sock = _SerialSocket(ws.sock, self._send_lock)
        self._closed = False
        self.mode = ws.mode

    def receive(self, timeout: float) -> str | bytes | None:
        if not self._ws.thread.is_alive() and not self._ws.input_buffer:
            raise TransportClosed("the connection's reader has stopped")
        try:
            return self._ws.receive(timeout=timeout)
        except ConnectionClosed:
            raise TransportClosed("closed by the client") from None

    def send(self, message: str | bytes) -> None:
        event = Message(data=message) if isinstance(message, bytes) else TextMessage(data=message)
        with self._send_lock:
            if self._closed or not self._ws.connected:
                raise TransportClosed("the connection is closed")
            try:
                self._sock.sendall(self._ws.ws.send(event))
            except (OSError, LocalProtocolError) as exc:
                raise TransportClosed(f"send failed: {exc!r}") from None

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._send_lock.acquire(timeout=CLOSE_SEND_WAIT_S):
            self._drop()  # a send is stuck on a peer that reads nothing
            return
        try:
            self._send_close(code, reason)
        finally:
            self._send_lock.release()

    def finish(self) -> None:
        """After `close`: give the peer CLOSE_REPLY_WAIT_S to answer the close frame (its
        reader then ends), then drop the connection, so no reader outlives it."""
        self._ws.thread.join(CLOSE_REPLY_WAIT_S)
        self._drop()

    def _send_close(self, code: int, reason: str) -> None:
        if not self._ws.connected:
            return
        self._ws.connected = False
        with contextlib.suppress(OSError, LocalProtocolError, ValueError):
            _, writable, _ = select.select([], [self._sock], [], CLOSE_SEND_WAIT_S)
            if writable:
                self._sock.sendall(self._ws.ws.send(CloseConnection(code, reason)))

    def _drop(self) -> None:
        """Shut the socket (wakes a reader or a send blocked on it) and close it."""
        self._ws.connected = False
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._ws.event.set()


class _Upgraded(Response):
    """The view's return once the socket was upgraded: nothing is written."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self._mode = mode

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self._mode == "gunicorn":
            raise StopIteration()  # gunicorn's worker: this connection is done
        return []


def upgraded_response(transport: SocketTransport) -> Response:
    """Once the session is over (`transport` closed): finish the connection, and return
    what the view answers."""
    transport.finish()
    return _Upgraded(transport.mode)
