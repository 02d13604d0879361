"""The design card's entry points in a checkout: `gunicorn app:app` serves the service."""

from __future__ import annotations

import requests

from tools.local_server import start_server, stop_server


def test_gunicorn_app_colon_app_serves(untrained_models, tmp_path):
    """`gunicorn app:app` with gunicorn's defaults: the root app.py's lazy `app` attribute
    is the service's WSGI app (the models come from LIPSYNC_MODELS_DIR)."""
    server = start_server(untrained_models, tmp_path, app="app:app")
    try:
        live = requests.get(server.url + "/health/live", timeout=60)
        health = requests.get(server.url + "/health", timeout=60).json()
    finally:
        stop_server(server)
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert all(model["present"] for model in health["models"].values()), health
    assert server.process.returncode == 0  # stopped gracefully
