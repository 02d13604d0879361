"""docker-compose.yml, checked without a Docker engine: the service and Redis, the service
started once Redis is healthy and pointed at it, every variable a real setting, and the
service's health check (/health/ready) run for real against stub servers."""

from __future__ import annotations

import dataclasses
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from helpers import ROOT

from lipsync import settings as config
from lipsync.settings import Settings

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_service_and_redis(compose):
    services = compose["services"]
    assert set(services) == {"lipsync", "redis"}
    app = services["lipsync"]
    assert app["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert "5001:5001" in app["ports"]
    assert app["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert services["redis"]["image"].startswith("redis:")
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--maxmemory-policy") + 1] in ("allkeys-lru", "volatile-lru")
    for volume in services["redis"]["volumes"]:
        assert volume.split(":")[0] in compose["volumes"]


def test_the_environment_is_valid_settings_pointing_at_redis(compose):
    environment = compose["services"]["lipsync"]["environment"]
    variables = {config.env_name(f) for f in dataclasses.fields(Settings)}
    assert set(environment) <= variables, set(environment) - variables
    resolved = {k: v.replace("${LIPSYNC_API_KEY:-}", "") for k, v in environment.items()}
    settings = Settings.load(environ=resolved)
    host = settings.avatar_store.removeprefix("redis://").split(":")[0]
    assert host == "redis" and settings.avatar_store.startswith("redis://redis:6379/")
    assert settings.avatar_ttl_s > 0 and settings.workers >= 2


def test_the_stop_grace_period_covers_gunicorns(compose):
    grace = compose["services"]["lipsync"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > Settings().graceful_timeout


class StubReady(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(self.status if self.path == "/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def run_healthcheck(compose, port: int, **env: str) -> int:
    kind, *command = compose["services"]["lipsync"]["healthcheck"]["test"]
    assert kind == "CMD" and command[0] == "python"
    environ = {k: v for k, v in os.environ.items() if k != "LIPSYNC_API_KEY"}
    environ.update(PORT=str(port), **env)
    python = str(Path(sys.executable))
    return subprocess.run([python, *command[1:]], env=environ, timeout=30).returncode


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_the_health_check_asks_readiness(compose, status, code, monkeypatch):
    monkeypatch.setattr(StubReady, "status", status)
    monkeypatch.setattr(StubReady, "seen", [])
    server = http.server.HTTPServer(("127.0.0.1", 0), StubReady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert run_healthcheck(compose, server.server_address[1]) == code
        assert run_healthcheck(compose, server.server_address[1], LIPSYNC_API_KEY="k") == code
    finally:
        server.shutdown()
        server.server_close()
    assert StubReady.seen == [("/health/ready", None), ("/health/ready", "Bearer k")]
    assert run_healthcheck(compose, server.server_address[1]) == 1  # nothing listening
