"""What a live session needs of its connection: the one interface every transport adapts.

A session (lipsync/server/realtime/session.py) reads messages, sends messages and closes,
nothing more, so a new way in (an ASGI WebSocket under Ray Serve, a WebRTC data channel)
is an adapter of these three methods; today's is the simple-websocket socket
(`sock_transport.py`). Thread contract: `receive` is called by one loop, `send` by one
loop (the session's writer), and `close` by any loop at any time, even while a `send` is
blocked on a slow reader (the adapter then drops the connection instead of waiting).
"""

from __future__ import annotations

from typing import Protocol


class TransportClosed(Exception):
    """The peer has gone (closed, reset, or the connection failed): nothing more can be
    sent or received. Not an error of the server's."""


class LiveTransport(Protocol):
    """A message connection: whole text (str) or binary (bytes) messages both ways."""

    def receive(self, timeout: float) -> str | bytes | None:
        """The next whole message, or None when none arrived within `timeout` seconds;
        TransportClosed once the peer has gone."""
        ...

    def send(self, message: str | bytes) -> None:
        """Send one whole message (str as text, bytes as binary), blocking while the peer
        reads slowly; TransportClosed when it has gone or `close` was called."""
        ...

    def close(self, code: int, reason: str) -> None:
        """End the connection with a close `code` (RFC 6455 section 7.4) and `reason`; a
        send blocked on a peer that reads nothing is abandoned and the connection dropped.
        Idempotent, never raises."""
        ...
