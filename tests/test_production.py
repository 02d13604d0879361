"""Overload, time limits, disconnects, health probes, metrics, logs, API key, CORS, worker loss."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from helpers import ASSETS, FACE_BOX, assert_error, b64, start_server, stop_server, wav_bytes

from lipsync.server.admission import (
    AdmissionController,
    ClientDisconnectedError,
    Deadline,
    OverloadedError,
    peer_closed,
)
from lipsync.server.app import create_app


def make_client(models, **overrides):
    app = create_app({"models_dir": models, "cache_dir": None, "avatar_dir": None, **overrides})
    return app, app.test_client()


def generate_body(seconds: float = 0.4) -> dict:
    return {
        "image": b64((ASSETS / "face.jpg").read_bytes()),
        "audio": b64(wav_bytes(seconds)),
        "box": list(FACE_BOX),
    }


# -- admission -----------------------------------------------------------------------------


def test_admission_queue_and_wait_limits():
    seen = []
    ctl = AdmissionController(
        1, 1, 1.0, retry_after_s=7, on_change=lambda a, w: seen.append((a, w))
    )
    with ctl.slot():
        assert (ctl.active, ctl.waiting) == (1, 0)
        refusals = []

        def wait_for_a_slot():
            try:
                with ctl.slot():
                    pass
            except OverloadedError as exc:
                refusals.append(exc)

        waiter = threading.Thread(target=wait_for_a_slot)
        waiter.start()
        deadline = time.monotonic() + 0.9  # within the waiter's 1 s limit
        while ctl.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ctl.waiting == 1 and ctl.saturated
        with pytest.raises(OverloadedError, match="busy") as refused:  # queue full: refused at once
            ctl.slot().__enter__()
        assert refused.value.retry_after == 7
        waiter.join()
        assert "within 1 s" in str(refusals[0])  # waited, then refused
    assert (ctl.active, ctl.waiting) == (0, 0) and not ctl.saturated
    assert (1, 1) in seen and seen[-1] == (0, 0)
    with pytest.raises(ValueError, match="max_concurrent"):
        AdmissionController(0, 1, 1, 1)


def test_overloaded_is_503_with_retry_after(untrained_models):
    app, client = make_client(untrained_models, max_queue=0, retry_after_s=9)
    with app.extensions["lipsync"].admission.slot():  # another generation holds the only slot
        response = client.post("/api/generate", json=generate_body())
    assert_error(response, 503, "overloaded")
    assert response.headers["Retry-After"] == "9"
    assert client.post("/api/generate", json=generate_body()).status_code == 200  # slot free again


def test_time_limit_is_504(untrained_models):
    _, client = make_client(untrained_models, request_timeout_s=1e-6)
    assert_error(client.post("/api/generate", json=generate_body()), 504, "timeout")


def test_deadline_notices_a_closed_client():
    ours, theirs = socket.socketpair()
    deadline = Deadline(60, ours)
    deadline.check()  # connection open, nothing pending
    assert not peer_closed(ours)
    theirs.close()
    assert peer_closed(ours)
    with pytest.raises(ClientDisconnectedError):
        deadline.check()
    ours.close()


# -- probes, ids, logs, access -------------------------------------------------------------


def test_live_and_ready(untrained_models, tmp_path):
    app, client = make_client(untrained_models)
    assert client.get("/health/live").get_json() == {"status": "alive"}
    not_ready = client.get("/health/ready")
    assert (
        not_ready.status_code == 503
        and "model wav2lip not compiled" in not_ready.get_json()["reasons"]
    )
    app.extensions["lipsync"].engine.compile()
    assert client.get("/health/ready").get_json() == {"status": "ready"}
    _, empty = make_client(tmp_path)
    assert empty.get("/health/live").status_code == 200
    assert empty.get("/health/ready").status_code == 503


def test_request_ids_and_one_json_log_line_without_media(untrained_models, caplog):
    _, client = make_client(untrained_models)
    body = generate_body()
    with caplog.at_level(logging.INFO, logger="lipsync.access"):
        given = client.post("/api/generate", json=body, headers={"X-Request-ID": "chat-42"})
        fresh = client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert given.headers["X-Request-ID"] == "chat-42"
    assert len(fresh.headers["X-Request-ID"]) == 32 and " " not in fresh.headers["X-Request-ID"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lipsync.access"]
    assert [line["request_id"] for line in lines] == ["chat-42", fresh.headers["X-Request-ID"]]
    record = lines[0]
    assert (record["route"], record["status"], record["num_frames"]) == ("/api/generate", 200, 10)
    assert record["request_bytes"] > 10_000 and record["response_bytes"] > 1000
    assert {"infer", "encode"} <= set(record["timings_ms"])
    text = " ".join(r.getMessage() for r in caplog.records)
    assert body["audio"][:64] not in text and body["image"][:64] not in text


def test_api_key(untrained_models):
    _, client = make_client(untrained_models, api_key="s3cret")
    assert client.get("/health/live").status_code == 200
    assert_error(client.get("/health"), 401, "unauthorized")
    assert_error(client.post("/api/generate", json={}), 401, "unauthorized")
    assert_error(
        client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized"
    )
    assert client.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/avatars", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert "s3cret" not in repr(create_app({"api_key": "s3cret"}).extensions["lipsync"].settings)


def test_cors_allow_list(untrained_models):
    _, client = make_client(
        untrained_models, cors_origins="https://chat.example, https://admin.example"
    )
    allowed = client.get("/health/live", headers={"Origin": "https://chat.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://chat.example"
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]
    other = client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options(
        "/api/generate",
        headers={"Origin": "https://admin.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_metrics_in_process(untrained_models):
    _, client = make_client(untrained_models)
    client.post("/api/generate", json=generate_body())
    text = client.get("/metrics").get_data(as_text=True)
    assert 'lipsync_requests_total{method="POST",route="/api/generate",status="200"}' in text
    assert 'lipsync_stage_duration_seconds_count{stage="infer"}' in text
    assert "lipsync_frames_generated_total" in text


# -- against real gunicorn servers ---------------------------------------------------------


def metric_value(text: str, line_prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix)
    )


@pytest.mark.slow
def test_metrics_add_up_across_two_workers(untrained_models, tmp_path):
    server = start_server(
        untrained_models,
        tmp_path,
        LIPSYNC_WORKERS="2",
        LIPSYNC_METRICS_DIR=str(tmp_path / "metrics"),
    )
    try:
        deadline = time.monotonic() + 60
        while len(compiled_worker_pids(tmp_path / "metrics")) < 2:  # both compiled
            assert time.monotonic() < deadline, "second worker never recorded its compile time"
            time.sleep(0.2)
        for _ in range(12):
            assert requests.get(server.url + "/health/live", timeout=10).status_code == 200
        text = requests.get(server.url + "/metrics", timeout=10).text
        assert (
            metric_value(
                text, 'lipsync_requests_total{method="GET",route="/health/live",status="200"}'
            )
            == 12
        )
        assert "lipsync_model_compile_seconds" in text
        # the workers share their live flags (live work first on every worker) in it
        flags = {path.name for path in (tmp_path / "metrics").rglob("peers/*.lock")}
        assert flags == {"live-batches.lock", "live-sessions.lock"}
    finally:
        stop_server(server)
    assert not any((tmp_path / "metrics").iterdir()), "the master removes its metrics directory"


def compiled_worker_pids(directory: Path) -> set[int]:
    """Workers that recorded their compile time in a multiprocess metrics dir.

    Unlabelled metrics get their sample file (<kind>_<pid>.db) when a worker imports them;
    the labelled compile-time gauge's file (gauge_max_<pid>.db) appears only once it is set.
    """
    return {int(p.stem.rsplit("_", 1)[1]) for p in directory.rglob("gauge_max_*.db")}


def raw_generate_then_hang_up(url: str, seconds: float) -> None:
    """Send a long generation request and close the connection without reading the answer."""
    payload = json.dumps(generate_body(seconds)).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        time.sleep(1.5)


@pytest.mark.slow
def test_client_disconnect_stops_the_generation(untrained_models, tmp_path):
    server = start_server(untrained_models, tmp_path)
    try:
        started = time.monotonic()
        raw_generate_then_hang_up(server.url, seconds=120.0)  # ~3000 frames: a minute of work
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = requests.get(server.url + "/metrics", timeout=10).text
            if (
                metric_value(text, 'lipsync_rejected_requests_total{reason="client_disconnected"}')
                == 1
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the abandoned generation did not stop")
        assert time.monotonic() - started < 30
        assert metric_value(text, "lipsync_frames_generated_total") == 0
        assert (
            requests.post(
                server.url + "/api/generate", json=generate_body(), timeout=120
            ).status_code
            == 200
        )
    finally:
        stop_server(server)


@pytest.mark.slow
def test_killed_worker_is_replaced(untrained_models, tmp_path):
    server = start_server(untrained_models, tmp_path)
    try:
        (old,) = server.worker_pids()
        outcome = {}

        def long_request():
            try:
                outcome["status"] = requests.post(
                    server.url + "/api/generate", json=generate_body(60), timeout=120
                )
            except requests.RequestException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(2.0)  # mid-generation
        os.kill(old, signal.SIGKILL)
        thread.join(60)
        assert "error" in outcome or outcome["status"].status_code >= 500  # that request is lost
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            pids = server.worker_pids()
            if pids and old not in pids:
                try:
                    if requests.get(server.url + "/health/ready", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
            time.sleep(0.5)
        else:
            pytest.fail("no replacement worker became ready")
        response = requests.post(server.url + "/api/generate", json=generate_body(), timeout=120)
        assert response.status_code == 200
        assert base64.b64decode(response.json()["video"])[:4] == b"\x1a\x45\xdf\xa3"  # WebM (EBML)
    finally:
        stop_server(server)
