"""The design card's entry points in a checkout: `python app.py` and `gunicorn app:app`
serve the service."""

from __future__ import annotations

import sys

import pytest
import requests

from tools.local_server import GUNICORN, start_server, stop_server

COMMANDS = {
    # lipsync serve: gunicorn with the service's config (HOST, PORT from the environment)
    "python app.py": (sys.executable, "app.py"),
    # gunicorn's own defaults; the root app.py's lazy `app` attribute is the WSGI app
    "gunicorn app:app": (GUNICORN, "--bind", "127.0.0.1:{port}", "--no-control-socket", "app:app"),
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_an_entry_point_serves_the_service(untrained_models, tmp_path, command):
    """The models come from LIPSYNC_MODELS_DIR; the server stops gracefully on SIGTERM."""
    server = start_server(untrained_models, tmp_path, command=command)
    try:
        live = requests.get(server.url + "/health/live", timeout=60)
        health = requests.get(server.url + "/health", timeout=60).json()
    finally:
        stop_server(server)
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert all(model["present"] for model in health["models"].values()), health
    assert server.process.returncode == 0
