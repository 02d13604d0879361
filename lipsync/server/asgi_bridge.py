"""The Flask (WSGI) app served as an ASGI app, for ASGI hosts such as Ray Serve's ingress.

Each HTTP request's body is read on the event loop (at most the body limit + 1 byte: a
longer body is refused by the app with 413 from its length), then the WSGI app runs on a
native thread of a bounded pool, off the event loop. Response chunks go back to the loop
through a bounded queue as the app yields them, so a streamed reply (`"stream": true`)
keeps streaming: its first bytes leave while the generation runs. When the client goes
(the ASGI call is cancelled or `send` fails), the thread stops at its next chunk and closes
the body, which stops a streamed generation and frees its slot. A failure after the first
byte propagates, so the host drops the connection without the final chunk (a truncated
transfer, as under gunicorn). A client hanging up during a whole-file generation is seen
as under gunicorn: the app finds a socket under `CONNECTION_KEY` (gunicorn's name for the
client's socket, which the generation's `Deadline` polls between frame batches); here it is
one end of a socket pair whose other end the bridge closes when the ASGI call ends
(Serve cancels it when the client goes), so the generation stops at its next batch and
frees its slot. WebSocket connections are accepted and closed at once with
`WEBSOCKET_REFUSED` and a reason: real-time sessions need the gunicorn deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

logger = logging.getLogger(__name__)

Message = dict[str, Any]
WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

# Close code and reason of a WebSocket refused by this bridge (RFC 6455: policy violation).
WEBSOCKET_REFUSED = 1008
# Where the app looks for the client's connection to notice a hang-up (gunicorn's key).
CONNECTION_KEY = "gunicorn.socket"
# How often a thread blocked on a full queue checks whether its client is gone (seconds).
ABANDON_POLL_S = 0.5


class ClientGone(Exception):
    """The client went away before the answer was complete."""


class WsgiOnAsgi:
    """ASGI app running `app` (WSGI) on a pool of `threads` native threads.

    `headers`: added to every answer (e.g. which replica answered). `buffer_chunks`: body
    chunks waiting for the client before the app's thread blocks.
    """

    def __init__(
        self,
        app: WsgiApp,
        *,
        max_body_bytes: int,
        threads: int,
        headers: Iterable[tuple[str, str]] = (),
        buffer_chunks: int = 8,
        websocket_reason: str = "WebSocket sessions are not served here",
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="wsgi")
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.buffer_chunks = buffer_chunks
        self.websocket_reason = websocket_reason

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send(
                {
                    "type": "websocket.close",
                    "code": WEBSOCKET_REFUSED,
                    "reason": self.websocket_reason,
                }
            )
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.executor.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            body = b""  # the app refuses it from the declared length, unread
        else:
            body = await read_body(receive, self.max_body_bytes + 1)
            declared = len(body)
        environ = wsgi_environ(scope, body, declared)
        connection, hang_up = socket.socketpair()  # closing `hang_up`: the client has gone
        environ[CONNECTION_KEY] = connection
        exchange = Exchange(asyncio.get_running_loop(), self.buffer_chunks, self.headers)
        done = asyncio.get_running_loop().run_in_executor(
            self.executor, exchange.run, self.app, environ
        )
        try:
            while (message := await exchange.next()) is not None:
                await send(message)
            await done
        finally:
            exchange.abandon()  # the thread stops at its next chunk if it is still running
            hang_up.close()  # and a generation still running stops at its next batch
            done.add_done_callback(lambda _: connection.close())


async def read_body(receive: Callable, limit: int) -> bytes:
    """The request body, stopping once `limit` bytes have arrived."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("client disconnected while sending the body")
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def wsgi_environ(scope: dict, body: bytes, content_length: int) -> dict:
    """PEP 3333 environ of an ASGI HTTP scope with its whole body."""
    import io

    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "CONTENT_LENGTH": str(content_length),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name in ("CONTENT_LENGTH",):
            continue
        key = name if name == "CONTENT_TYPE" else f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class Exchange:
    """One request between the app's thread (`run`) and the event loop (`next`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, buffer_chunks: int, headers: list) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Message | BaseException | None] = asyncio.Queue(buffer_chunks)
        self.extra_headers = headers
        self.gone = threading.Event()
        self.start: Message | None = None
        self.started = False

    async def next(self) -> Message | None:
        """The next ASGI message to send, None at the end; raises the app's failure."""
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def abandon(self) -> None:
        self.gone.set()

    def run(self, app: WsgiApp, environ: dict) -> None:
        """On the app's thread: call the app, hand over its status, headers and chunks."""
        try:
            iterable = app(environ, self._start_response)
        except BaseException as exc:  # Flask answers errors itself: this is a bug
            with contextlib.suppress(ClientGone):
                self._put(exc)
            return
        try:
            for chunk in iterable:
                if chunk:
                    self._send_start()
                    self._put({"type": "http.response.body", "body": chunk, "more_body": True})
            self._send_start()
            self._put({"type": "http.response.body", "body": b"", "more_body": False})
            self._put(None)
        except ClientGone:
            logger.info(
                "client gone: %s %s stopped", environ["REQUEST_METHOD"], environ["PATH_INFO"]
            )
        except BaseException as exc:  # after the first byte: the host drops the connection
            with contextlib.suppress(ClientGone):
                self._put(exc)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    def _start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable:
        if exc_info is not None and self.started:
            raise exc_info[1].with_traceback(exc_info[2])
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.start = {
            "type": "http.response.start",
            "status": int(status.split(" ", 1)[0]),
            "headers": encoded + self.extra_headers,
        }
        return self._write

    def _write(self, chunk: bytes) -> None:  # PEP 3333's legacy write()
        self._send_start()
        self._put({"type": "http.response.body", "body": chunk, "more_body": True})

    def _send_start(self) -> None:
        if not self.started:
            if self.start is None:
                raise RuntimeError("the WSGI app sent a body before start_response")
            self.started = True
            self._put(self.start)

    def _put(self, item: Message | BaseException | None) -> None:
        """Queue `item` for the loop, waiting while the queue is full; ClientGone once the
        loop has stopped taking items."""
        if self.gone.is_set():
            raise ClientGone("client gone")
        future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while True:
            with contextlib.suppress(FutureTimeout):
                future.result(timeout=ABANDON_POLL_S)
                return
            if self.gone.is_set():
                future.cancel()
                raise ClientGone("client gone")
