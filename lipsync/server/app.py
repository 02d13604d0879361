"""Flask application factory: /api/generate, /api/avatars, /health (+ live, ready), /metrics,
/openapi.json and /docs/ (Swagger UI).

`create_app()` builds the app and does no heavy work: the engine (and OpenVINO) is created
per worker process on first use or by `warm_up()` (called by gunicorn after fork). The
routes are blueprints in lipsync/server/routes/, the request and response models in
lipsync/server/schemas.py, the error mapping in lipsync/server/error_mapping.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from flask_openapi3 import OpenAPI

from lipsync.engine import Wav2LipInferenceEngine
from lipsync.server import observability as obs
from lipsync.server.error_mapping import register_error_handlers
from lipsync.server.parsing import field_error
from lipsync.server.realtime import route as realtime
from lipsync.server.routes import BLUEPRINTS
from lipsync.server.service import EXTENSION, Service, begin_request, finish_request
from lipsync.settings import Settings


def _refuse_path(exc):
    """flask-openapi3's path-parameter validation failures, as the API reports them."""
    raise field_error(exc)


def create_app(
    overrides: Mapping[str, Any] | None = None,
    *,
    engine: Wav2LipInferenceEngine | None = None,
    settings: Settings | None = None,
) -> Flask:
    """Application factory. Settings: defaults, then LIPSYNC_* env vars, then `overrides`
    (or exactly `settings` when given)."""
    settings = settings if settings is not None else Settings.load(overrides)
    app = OpenAPI(__name__, doc_ui=False, validation_error_callback=_refuse_path)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes  # base64 media in form fields
    if isinstance(app.json, DefaultJSONProvider):  # Flask's, which flask-openapi3 keeps
        app.json.sort_keys = False  # answers keep the order the handlers build them in
    app.extensions[EXTENSION] = Service(settings, engine)
    register_error_handlers(app)
    app.before_request(begin_request)
    app.after_request(finish_request)
    for blueprint in BLUEPRINTS:
        app.register_api(blueprint)
    realtime.register(app)
    return app


def warm_up(app: Flask) -> None:
    """Create the engine and compile the installed models (gunicorn calls this per worker)."""
    svc: Service = app.extensions[EXTENSION]
    if svc.settings.compile_on_start:
        svc.engine.compile()
        obs.observe_compile(svc.engine.model_status())
