"""Slow and stalled clients against the real gunicorn server (gevent worker): they must
cost no generation capacity, keep health checks answering and leave nothing behind."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import requests
from conftest import start_server, stop_server
from test_production import generate_body

from tools.local_server import stall_requests, worker_rss_kib, worker_threads

STALLED = 64
RSS_GROWTH_KIB = 32 * 1024


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.slow
def test_stalled_clients_cost_no_capacity_and_leave_nothing(untrained_models, tmp_path):
    # LIPSYNC_THREADS would be the whole capacity of a gthread worker; gevent ignores it
    server = start_server(untrained_models, tmp_path, LIPSYNC_THREADS="4")
    try:
        (pid,) = server.worker_pids()
        body = generate_body(1.0)
        assert requests.post(server.url + "/api/generate", json=body, timeout=120).ok
        threads, rss = worker_threads(pid), worker_rss_kib(pid)

        stalled = stall_requests(server.url, STALLED)
        try:
            time.sleep(0.5)  # every stalled request is inside the view, reading its body
            started = time.monotonic()
            live = requests.get(server.url + "/health/live", timeout=1)
            assert live.status_code == 200
            assert time.monotonic() - started < 1
            response = requests.post(server.url + "/api/generate", json=body, timeout=120)
            assert response.status_code == 200, response.text
            assert response.json()["num_frames"] == 25
            # 64 connections, not one thread more (idle pool threads may have exited: <=)
            assert worker_threads(pid) <= threads
        finally:
            for sock in stalled:
                sock.close()

        assert wait_for(lambda: worker_threads(pid) <= threads, 10)
        assert requests.get(server.url + "/health/live", timeout=1).status_code == 200
        assert not list(server.tmpdir.iterdir()), "temporary files left behind"
        assert worker_rss_kib(pid) - rss < RSS_GROWTH_KIB
        assert server.worker_pids() == {pid}  # never killed for silence
        log = server.log_path.read_text()
        assert "WORKER TIMEOUT" not in log and "Parent changed" not in log
    finally:
        stop_server(server)


@pytest.mark.slow
def test_sigterm_finishes_the_running_generation_then_stops(untrained_models, tmp_path):
    server = start_server(untrained_models, tmp_path, LIPSYNC_GRACEFUL_TIMEOUT="20")
    stalled = stall_requests(server.url, 8)  # they must not keep the worker past the limit
    try:
        outcome = {}

        def generate():
            outcome["response"] = requests.post(
                server.url + "/api/generate", json=generate_body(4.0), timeout=120
            )

        thread = threading.Thread(target=generate)
        thread.start()
        time.sleep(1.5)  # mid-generation
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert outcome["response"].status_code == 200  # the running request is finished
        assert outcome["response"].json()["num_frames"] == 100
        server.process.wait(40)  # the stalled ones are dropped at the graceful limit
        assert time.monotonic() - started < 20 + 10
        log = server.log_path.read_text()
        for trouble in ("Traceback", "WORKER TIMEOUT", "Parent changed"):
            assert trouble not in log  # "Parent changed": a forked copy ran the worker's loop
    finally:
        for sock in stalled:
            sock.close()
        stop_server(server)
