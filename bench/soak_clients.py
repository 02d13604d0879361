"""The soak's clients (bench/soak.py): what they send, and the record of what they saw."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import requests
import websocket

from bench.load import speech_wav
from bench.realtime import FACE_BOX, completing_chunk, send_paced
from lipsync.server.realtime import protocol as p

ROOT = Path(__file__).resolve().parent.parent
FACE = (ROOT / "test_assets" / "face.jpg").read_bytes()
PAUSE_S = 3.0
IDLE_SOCKETS = 12  # more than both workers' live sessions (4 each by default)
# The idle connections' client address: another client than the real sessions (a
# squatter's unstarted connections count against its own per-client limit, not theirs).
IDLE_CLIENT_ADDRESS = "127.0.0.2"
UTTERANCE_S = 4.0
# A live client gives up on a session that sends nothing this long (a killed worker's).
LIVE_READ_TIMEOUT_S = 90.0
TMPFS_BYTES = 8 * 1024 * 1024
# After a fault, live lag is left out of the "outside faults" figures this long.
FAULT_SETTLE_S = 5.0
# A connection error (a worker killed under the request): retry after this pause.
RECONNECT_S = 0.5


@dataclass
class Plan:
    """Clients and the fault schedule (fractions of `seconds`)."""

    seconds: float
    whole_file: int = 1
    streamed: int = 1
    live: int = 2
    live_fps: float = 25.0  # a CPU that renders fewer frames/s than the sessions ask falls behind
    speech_s: float = 1.0
    disk_full: tuple[float, float] = (0.15, 0.35)
    kill_at: float = 0.4
    pause_at: float = 0.55
    idle: tuple[float, float] = (0.7, 0.85)


@dataclass
class Record:
    """What the clients saw (thread-safe)."""

    statuses: dict[str, Counter] = field(default_factory=dict)
    longest_s: dict[str, float] = field(default_factory=dict)
    waiting_since: dict[str, float] = field(default_factory=dict)  # requests not yet served
    lags: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter sent, lag)
    frames_lost: int = 0
    stored: set[str] = field(default_factory=set)  # avatar ids registered, not deleted
    phantoms: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    faults: dict[str, object] = field(default_factory=dict)
    windows: list[tuple[float, float]] = field(default_factory=list)  # perf_counter faults
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, kind: str, status: int | str) -> None:
        with self.lock:
            self.statuses.setdefault(kind, Counter())[str(status)] += 1

    def served(self, client: str, seconds: float) -> None:
        with self.lock:
            self.longest_s[client] = max(self.longest_s.get(client, 0.0), round(seconds, 2))
            self.waiting_since.pop(client, None)

    def waiting(self, client: str) -> None:
        with self.lock:
            self.waiting_since.setdefault(client, time.monotonic())

    def longest(self) -> dict[str, float]:
        """Per client, its longest wait; a request still unserved counts until now."""
        now = time.monotonic()
        with self.lock:
            waits = dict(self.longest_s)
            for client, since in self.waiting_since.items():
                waits[client] = max(waits.get(client, 0.0), round(now - since, 2))
        return dict(sorted(waits.items()))


def until_served(
    record: Record, kind: str, client: str, attempt: Callable[[], requests.Response], stop
) -> requests.Response | None:
    """Repeat `attempt` (honouring Retry-After, reconnecting after connection errors) until
    it is not a 503; the time from the first attempt counts as the client's wait."""
    first = time.monotonic()
    record.waiting(client)
    while not stop.is_set():
        try:
            answer = attempt()
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            record.status(kind, "connection_error")
            stop.wait(RECONNECT_S)
            continue
        record.status(kind, answer.status_code)
        if answer.status_code == 503:
            stop.wait(float(answer.headers.get("Retry-After", "1")))
            continue
        record.served(client, time.monotonic() - first)  # answered (a 4xx/5xx is in statuses)
        return answer
    return None


def generation_client(url: str, name: str, body: dict, record: Record, stop) -> None:
    """Whole-file or streamed generations, one after the other on one keep-alive session."""
    kind = "streamed" if body.get("stream") else "whole_file"
    with requests.Session() as session:

        def attempt() -> requests.Response:
            answer = session.post(url + "/api/generate", json=body, timeout=300, stream=True)
            answer.content  # noqa: B018  (the whole body, streamed or not)
            return answer

        while not stop.is_set():
            until_served(record, kind, name, attempt, stop)


def churn_client(url: str, base_id: str, record: Record, stop, disk_full) -> None:
    """Register a new image, generate with it, delete it; look for phantoms and
    resurrections on fresh connections (either worker)."""
    stored = record.stored
    stored.add(base_id)
    with requests.Session() as session:
        for n in range(1_000_000):
            if stop.is_set():
                return
            kind = "register_disk_full" if disk_full.is_set() else "register"
            body = {"image": b64(variant(n)), "box": list(FACE_BOX)}
            answer = until_served(
                record,
                kind,
                "churn",
                lambda body=body: session.post(url + "/api/avatars", json=body, timeout=120),
                stop,
            )
            if answer is None:
                return
            if answer.status_code == 201:
                avatar_id = answer.json()["avatar_id"]
                stored.add(avatar_id)
                churn_use(url, session, avatar_id, record, stop)
                stored.discard(avatar_id)
                look_for_ghosts(url, avatar_id, stored, record)
            else:
                look_for_ghosts(url, None, stored, record)


def churn_use(url: str, session: requests.Session, avatar_id: str, record: Record, stop) -> None:
    body = {"avatar_id": avatar_id, "audio": b64(speech_wav(0.5))}
    until_served(
        record,
        "avatar_generate",
        "churn",
        lambda: session.post(url + "/api/generate", json=body, timeout=120),
        stop,
    )
    deleted = session.delete(f"{url}/api/avatars/{avatar_id}", timeout=60)
    record.status("avatar_delete", deleted.status_code)


def look_for_ghosts(url: str, deleted: str | None, stored: set[str], record: Record) -> None:
    """On 4 fresh connections: the deleted avatar answers 404 and is not listed; every
    listed avatar is one that is stored."""
    for _ in range(4):
        try:
            listed = requests.get(url + "/api/avatars", timeout=60, headers=CLOSE)
            ids = {a["avatar_id"] for a in listed.json().get("avatars", [])}
            if deleted is not None:
                got = requests.get(f"{url}/api/avatars/{deleted}", timeout=60, headers=CLOSE)
                record.status("avatar_get_deleted", got.status_code)
                if got.status_code == 200 or deleted in ids:
                    record.resurrected.append(deleted)
        except (requests.ConnectionError, ValueError):
            record.status("avatar_list", "connection_error")
            continue
        record.status("avatar_list", listed.status_code)
        record.phantoms.extend(sorted(ids - stored - {deleted}))


CLOSE = {"Connection": "close"}  # a fresh connection per check: either worker answers


def variant(n: int) -> bytes:
    """A distinct JPEG of the test face (one pixel row changed): a new avatar id."""
    image = cv2.imdecode(np.frombuffer(FACE, np.uint8), cv2.IMREAD_COLOR)
    image[0, :8] = [n % 256, (n // 256) % 256, 7]
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- live clients ----------------------------------------------------------------------------


def live_client(
    ws_url: str, name: str, avatar_id: str, fps: float, pcm, record: Record, stop
) -> None:
    """Utterance after utterance on one session; a new session when it breaks."""
    while not stop.is_set():
        first = time.monotonic()
        record.waiting(name)
        try:
            ws = open_live(ws_url, avatar_id, fps)
        except websocket.WebSocketBadStatusException as refused:
            record.status("live_open", refused.status_code)
            stop.wait(RECONNECT_S if refused.status_code != 503 else 1.0)
            continue
        except (OSError, websocket.WebSocketException):
            record.status("live_open", "connection_error")
            stop.wait(RECONNECT_S)
            continue
        record.status("live_open", 101)
        record.served(name, time.monotonic() - first)
        with contextlib.closing(ws):
            try:
                while not stop.is_set():
                    utterance(ws, fps, pcm, record)
            except (OSError, websocket.WebSocketException, ValueError):
                record.status("live_session", "broken")


def open_live(ws_url: str, avatar_id: str, fps: float) -> websocket.WebSocket:
    ws = websocket.create_connection(ws_url, timeout=LIVE_READ_TIMEOUT_S)
    start = {"avatar_id": avatar_id, "fps": fps, "output": {"jpeg_quality": 80}}
    ws.send(json.dumps({"type": "start", **start}))
    ready = json.loads(ws.recv())
    if ready.get("type") != "ready":
        ws.close()
        raise websocket.WebSocketException(f"no ready: {ready}")
    return ws


def utterance(ws: websocket.WebSocket, fps: float, pcm: np.ndarray, record: Record) -> None:
    """UTTERANCE_S of speech paced in real time, then flush; the frames' lags recorded."""
    arrivals: dict[int, float] = {}
    flushed: list[int] = []

    def read() -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            while True:
                opcode, data = ws.recv_data()
                if opcode != websocket.ABNF.OPCODE_TEXT:
                    arrivals.setdefault(p.unpack_frame(data)[0], time.perf_counter())
                elif (message := json.loads(data)).get("type") == "flushed":
                    flushed.append(message["frames"])
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent_at = send_paced(ws, pcm, UTTERANCE_S)
    ws.send(json.dumps({"type": "flush"}))
    reader.join(2 * LIVE_READ_TIMEOUT_S)
    if not flushed:
        raise websocket.WebSocketException("no flushed answer")
    with record.lock:
        record.frames_lost += flushed[0] - len(arrivals)
        for index, arrived in arrivals.items():
            if (chunk := completing_chunk(index, fps)) < len(sent_at):
                sent = sent_at[chunk]
                record.lags.append((sent, arrived - sent))
