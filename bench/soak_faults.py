"""The soak's faults (bench/soak.py): a full avatar disk, a killed and a paused worker, idle
WebSocket connections; and the figures read off the server afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import websocket

from bench.load import speech_wav
from bench.realtime import FACE_BOX
from bench.soak_clients import (
    CLOSE,
    FAULT_SETTLE_S,
    IDLE_CLIENT_ADDRESS,
    IDLE_SOCKETS,
    PAUSE_S,
    TMPFS_BYTES,
    Plan,
    Record,
    b64,
    open_live,
    until_served,
    variant,
)
from tools import local_server


@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[str | None]:
    """Mount a TMPFS_BYTES tmpfs at `path` (None), or say why it cannot be (a plain dir)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield f"no tmpfs: {mounted.stderr.strip() or mounted.returncode}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` with one file (ENOSPC ends it)."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def process_figures(pids: set[int]) -> dict[str, dict[str, int]]:
    """Per worker: RSS (KiB), native threads and open file descriptors."""
    out = {}
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            out[str(pid)] = {
                "rss_kib": local_server.worker_rss_kib(pid),
                "threads": local_server.worker_threads(pid),
                "fds": len(os.listdir(f"/proc/{pid}/fd")),
            }
    return out


def faults(server, avatar_dir: Path, plan: Plan, record: Record, stop, disk_full) -> None:
    """The fault schedule; each fault's window is kept to leave it out of the lag figures."""
    began = time.perf_counter()

    def at(fraction: float) -> bool:
        return not stop.wait(max(began + fraction * plan.seconds - time.perf_counter(), 0))

    if at(plan.disk_full[0]) and record.faults.get("disk") is None:
        filler = fill(avatar_dir)
        disk_full.set()
        register_on_full_disk(server.url, record, stop)
        if at(plan.disk_full[1]):
            filler.unlink()
            disk_full.clear()
    if at(plan.kill_at):
        record.faults["kill"] = kill_one(server, record)
    if at(plan.pause_at):
        record.faults["pause"] = pause_one(server, record, stop)
    if at(plan.idle[0]):
        record.faults["idle_flood"] = idle_flood(server, plan, record, stop)


def register_on_full_disk(url: str, record: Record, stop) -> None:
    """One registration of a new image while the avatar disk is full (its status is in
    `register_disk_full`), then a raw-image generation, which needs no storage."""
    body = {"image": b64(variant(10**6)), "box": list(FACE_BOX)}
    answer = until_served(
        record,
        "register_disk_full",
        "disk_probe",
        lambda: requests.post(url + "/api/avatars", json=body, timeout=120),
        stop,
    )
    if answer is not None and answer.status_code == 201:  # it did find room: it exists
        record.stored.add(answer.json()["avatar_id"])
    body["audio"] = b64(speech_wav(0.5))
    until_served(
        record,
        "generate_disk_full",
        "disk_probe",
        lambda: requests.post(url + "/api/generate", json=body, timeout=120),
        stop,
    )


def kill_one(server, record: Record) -> dict:
    """SIGKILL a worker; how long until a replacement is up and the server answers."""
    victim = min(server.worker_pids())
    killed = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    for _ in range(600):
        fresh = server.worker_pids() - {victim}
        if len(fresh) == 2 and healthy(server.url):
            break
        time.sleep(0.05)
    replaced = time.perf_counter() - killed
    record.windows.append((killed, killed + replaced + FAULT_SETTLE_S))
    return {"pid": victim, "replaced_s": round(replaced, 2)}


def pause_one(server, record: Record, stop) -> dict:
    victim = max(server.worker_pids())
    paused = time.perf_counter()
    os.kill(victim, signal.SIGSTOP)
    try:
        stop.wait(PAUSE_S)
    finally:
        os.kill(victim, signal.SIGCONT)
    record.windows.append((paused, time.perf_counter() + FAULT_SETTLE_S))
    return {"pid": victim, "paused_s": PAUSE_S}


def healthy(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(url + "/health/live", timeout=2, headers=CLOSE).status_code == 200
    return False


def idle_flood(server, plan: Plan, record: Record, stop) -> dict:
    """IDLE_SOCKETS upgraded connections that never send `start` (reopened when the server
    closes them) until the window ends; meanwhile a probe opens a real session."""
    ws_url = server.url.replace("http://", "ws://") + "/api/stream"
    began = time.perf_counter()
    end = began + (plan.idle[1] - plan.idle[0]) * plan.seconds
    idle: list[websocket.WebSocket] = []
    probe: dict[str, object] = {}
    prober = threading.Thread(
        target=lambda: probe.update(probe_session(ws_url, plan.live_fps, record, end))
    )
    try:
        while time.perf_counter() < end and not stop.is_set():
            idle = [ws for ws in idle if ws.connected] + open_idle(ws_url, IDLE_SOCKETS - len(idle))
            if not prober.is_alive() and not probe:
                prober.start()
            stop.wait(0.5)
    finally:
        prober.join(120)
        for ws in idle:
            ws.close()
    record.windows.append((began, time.perf_counter() + FAULT_SETTLE_S))
    return {"sockets": IDLE_SOCKETS, **probe}


def open_idle(ws_url: str, count: int) -> list[websocket.WebSocket]:
    """Idle connections from IDLE_CLIENT_ADDRESS (the real sessions' is 127.0.0.1)."""
    host, port = ws_url.removeprefix("ws://").split("/")[0].split(":")
    opened = []
    for _ in range(max(count, 0)):
        with contextlib.suppress(OSError, websocket.WebSocketException):
            sock = socket.create_connection(
                (host, int(port)), timeout=10, source_address=(IDLE_CLIENT_ADDRESS, 0)
            )
            opened.append(websocket.create_connection(ws_url, timeout=10, socket=sock))
    return opened


def probe_session(ws_url: str, fps: float, record: Record, end: float) -> dict:
    """A real session opened while the idle sockets are up: its time to `ready`."""
    first = time.perf_counter()
    avatar_id = record.faults["base_avatar"]
    while time.perf_counter() < end:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws = open_live(ws_url, str(avatar_id), fps)
            ws.close()
            return {"probe_ready_s": round(time.perf_counter() - first, 2)}
        time.sleep(1.0)
    return {"probe_ready_s": None}


def leftovers(avatar_dir: Path, tmpdir: Path) -> dict[str, list[str]]:
    """Temporaries left behind: `.tmp*` entries in the avatar directory, files in TMPDIR."""
    return {
        "avatar_dir": sorted(e.name for e in avatar_dir.iterdir() if e.name.startswith(".tmp")),
        "server_tmpdir": sorted(e.name for e in tmpdir.iterdir()),
    }
