"""Start and stop the real gunicorn server on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LocalServer:
    url: str
    process: subprocess.Popen
    tmpdir: Path
    log_path: Path

    def worker_pids(self) -> set[int]:
        """PIDs of the master's current worker processes."""
        pid = self.process.pid
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all bound at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5):
            return True
    except urllib.error.HTTPError:
        return True  # 503 still means the server is up
    except OSError:
        return False


GUNICORN = str(Path(sys.executable).parent / "gunicorn")
# The service's command (that of lipsync serve and the Docker image).
SERVICE_COMMAND = (
    GUNICORN,
    "-c",
    "python:lipsync.server.gunicorn_conf",
    "lipsync.server.wsgi:app",
)


def start_server(
    models_dir: Path,
    work_dir: Path,
    timeout_s: float = 120,
    command: Sequence[str] = SERVICE_COMMAND,
    **env: str,
) -> LocalServer:
    """The server on 127.0.0.1:<free port> (HOST and PORT; "{port}" in `command` becomes
    it too), run from the source tree; its TMPDIR, caches and log under `work_dir`. Extra
    LIPSYNC_* settings come as keyword arguments."""
    port = free_port()
    tmpdir = work_dir / "server-tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "TMPDIR": str(tmpdir),
        "LIPSYNC_MODELS_DIR": str(models_dir),
        "LIPSYNC_CACHE_DIR": str(work_dir / "ov-cache"),
        "LIPSYNC_AVATAR_DIR": str(work_dir / "avatars"),
        "LIPSYNC_METRICS_DIR": str(work_dir / "metrics"),
        "LIPSYNC_WORKERS": "1",
        "LIPSYNC_THREADS": "2",
        **env,
    }
    log_path = work_dir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [part.format(port=port) for part in command],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    server = LocalServer(f"http://127.0.0.1:{port}", process, tmpdir, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()}")
        if _answers(server.url):
            return server
        time.sleep(0.3)
    stop_server(server)
    raise TimeoutError(f"gunicorn did not answer within {timeout_s:g} s")


def stop_server(server: LocalServer) -> None:
    """SIGTERM the master (graceful), then make sure nothing of the process group is left."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def stall_requests(url: str, count: int, body_bytes: int = 200_000) -> list[socket.socket]:
    """`count` connections that each send a POST's headers and half its body, then stall
    (a slow or stuck client). Close the returned sockets to let them go."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_bytes}\r\n\r\n"
    ).encode()
    stalled = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(head + b'{"image": "' + b"A" * (body_bytes // 2))
        stalled.append(sock)
    return stalled


def worker_threads(pid: int) -> int:
    """Native threads of a process (/proc/<pid>/status)."""
    return int(_proc_status(pid)["Threads"])


def worker_rss_kib(pid: int) -> int:
    return int(_proc_status(pid)["VmRSS"].split()[0])


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)
