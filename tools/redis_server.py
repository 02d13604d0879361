"""A throwaway redis-server on loopback (Debian's `redis-server` package) for the tests
and benchmarks: no persistence, its files in a given directory, stopped and started again
on the same port (so its URL stays valid) to exercise Redis failures."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tools.local_server import free_port

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class RedisServer:
    """`redis-server --port <free> --bind 127.0.0.1 --save '' --appendonly no` in `directory`.

    `.url` (redis://127.0.0.1:<port>/0), `.start()` and `.stop()` (both idempotent),
    `.pause()` and `.resume()` (a hung server), `.flush()` (drop every key), `.running`.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise FileNotFoundError(
                "redis-server is not installed: apt-get install -y redis-server "
                "(./scripts/test.sh installs it)"
            )
        self.executable = executable
        self.directory = Path(directory)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (if it is not running) and wait until it answers PING."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self._process = subprocess.Popen(
            command,
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.command(b"PING") != b"+PONG":
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {self.port}: {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a paused server cannot stop
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel, nothing is
        answered — a hung or overloaded Redis. `resume()` undoes it."""
        if self._process is None:
            raise RuntimeError("redis-server is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        """Drop every key (FLUSHALL)."""
        if self.command(b"FLUSHALL") != b"+OK":
            raise RuntimeError(f"FLUSHALL failed on port {self.port}")

    def command(self, *words: bytes) -> bytes | None:
        """Send one command (RESP) and return the reply's first line, or None when the
        server does not answer."""
        request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(request)
                return sock.makefile("rb").readline().rstrip(b"\r\n")
        except OSError:
            return None
