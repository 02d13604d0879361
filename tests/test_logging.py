"""Logging: LIPSYNC_LOG_LEVEL reaches every logger; access lines are bare JSON documents."""

from __future__ import annotations

import io
import json
import logging

import pytest
import requests
from helpers import start_server

from lipsync.server import observability
from lipsync.util import configure_logging
from tools.local_server import stop_server


@pytest.fixture
def stderr():
    """A stream for configure_logging's handlers; the root logger restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_access_lines_are_bare_json_and_other_lines_text(stderr):
    configure_logging(level="info", stream=stderr)
    configure_logging(level="info", stream=stderr)  # again: still one handler per kind
    observability.log_request({"request_id": "r1", "route": "/health", "status": 200})
    logging.getLogger("app").info("plain %s", "text")
    access, text = stderr.getvalue().splitlines()
    record = json.loads(access)
    assert list(record)[:2] == ["time", "request_id"]
    assert record["time"].endswith("+00:00") and "T" in record["time"]
    assert (record["route"], record["status"]) == ("/health", 200)
    assert text.endswith(" INFO app: plain text")


def test_the_level_applies_to_every_logger(stderr):
    configure_logging(level="warning", stream=stderr)
    observability.log_request({"request_id": "r2"})
    logging.getLogger("lipsync.runtime.core").info("compiled")
    logging.getLogger("lipsync.engine").warning("careful")
    (line,) = stderr.getvalue().splitlines()
    assert line.endswith(" WARNING lipsync.engine: careful")
    configure_logging(verbose=True, stream=stderr)
    logging.getLogger("lipsync.avatars").debug("details")
    assert "DEBUG lipsync.avatars: details" in stderr.getvalue()


def server_log(untrained_models, tmp_path, **env: str) -> list[str]:
    """Start the real gunicorn server, make two requests, stop it: its stderr lines."""
    server = start_server(untrained_models, tmp_path, **env)
    try:
        requests.get(server.url + "/health/live", timeout=30, headers={"X-Request-ID": "log-1"})
        requests.get(server.url + "/nowhere", timeout=30)
    finally:
        stop_server(server)
    return server.log_path.read_text().splitlines()


@pytest.mark.slow
def test_server_access_lines_parse_as_json(untrained_models, tmp_path):
    lines = server_log(untrained_models, tmp_path)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    by_id = {r["request_id"]: r for r in records}
    assert by_id["log-1"]["route"] == "/health/live" and by_id["log-1"]["status"] == 200
    assert any(r["status"] == 404 for r in records)
    # Every line mentioning a request id is a whole JSON document.
    assert all(line.startswith("{") for line in lines if '"request_id"' in line)
    # The app's own loggers log at INFO by default (the model compile lines).
    assert any(" INFO lipsync.runtime.core: compiled " in line for line in lines)


@pytest.mark.slow
def test_server_log_level_reaches_the_app_loggers(untrained_models, tmp_path):
    lines = server_log(untrained_models, tmp_path, LIPSYNC_LOG_LEVEL="warning")
    assert not [line for line in lines if "INFO" in line or line.startswith("{")], lines
