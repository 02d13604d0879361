"""The service itself: index, health probes, metrics, the OpenAPI document and its UI."""

from __future__ import annotations

import os
from typing import Any

import flask_openapi3_swagger
import openvino as ov
from flask import Response, current_app, jsonify, redirect, render_template_string, request
from flask_openapi3 import APIBlueprint
from flask_openapi3_swagger.templates import swagger_html_string

from lipsync.engine import DETECTOR_NAME
from lipsync.errors import ErrorCode
from lipsync.options import GENERATOR_NAMES
from lipsync.server import observability as obs
from lipsync.server import openapi
from lipsync.server.error_mapping import SETUP_COMMAND
from lipsync.server.openapi import errors, ok, operation
from lipsync.server.responses import Health, Index, Liveness, OpenAPIDocument, Readiness
from lipsync.server.service import service
from lipsync.server.web import PAGE_PATH
from lipsync.settings import FORMATS

REQUIRED_MODELS = (DETECTOR_NAME, "wav2lip")
# Swagger UI's files as the flask-openapi3-swagger package ships them: served from here,
# so /docs/ works offline (no CDN).
SWAGGER_ASSETS = os.path.join(
    os.path.dirname(flask_openapi3_swagger.__file__), "templates", "swagger"
)

meta = APIBlueprint("meta", __name__, static_folder=SWAGGER_ASSETS, static_url_path="/docs/swagger")


@meta.get(
    "/",
    **operation("index", "What this service is and its main endpoints", "meta"),
    description="API clients get this JSON index; a browser (an `Accept` preferring "
    "text/html) is redirected to the page for people, /web/.",
    responses={
        "200": ok("Service name and endpoints.", Index),
        "302": {"description": "A browser: redirected to /web/.", "headers": {}},
        **errors(500),
    },
)
def index():
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        response = redirect(PAGE_PATH.lstrip("/"), code=302)  # relative: works behind a prefix
    else:
        response = jsonify(
            {
                "service": "wav2lip-openvino",
                "endpoints": {
                    "POST /api/generate": "lip-sync a face (image, video or avatar_id) to speech",
                    "POST /api/avatars": "register a face once; reuse it by avatar_id",
                    "GET /api/avatars": "list avatars",
                    "GET|DELETE /api/avatars/<avatar_id>": "one avatar",
                    "GET /health": "status; /health/live and /health/ready for orchestrators",
                    "GET /metrics": "Prometheus metrics",
                    "GET /openapi.json": "OpenAPI description of this API",
                    "GET /docs/": "interactive API documentation (Swagger UI)",
                    "GET /web/": "the page for people: faces, streamed replies, live mode",
                },
            }
        )
    response.headers["Vary"] = "Accept"
    return response


@meta.get(
    "/health",
    **operation("health", "Models, device and capabilities", "health"),
    responses={
        "200": ok("The service can generate.", Health),
        "503": ok(
            "`status` is `degraded`: the detector or the Wav2Lip model is missing; "
            "`error.fix` is the command that installs them.",
            Health,
        ),
        **errors(500),
    },
)
def health():
    svc = service()
    status = svc.engine.model_status()
    can_generate = all(status[name]["present"] for name in REQUIRED_MODELS)
    body: dict[str, Any] = {
        "status": "ok" if can_generate else "degraded",
        "openvino_version": ov.get_version(),
        "device": svc.engine.device,
        "precision": svc.engine.precision,
        "models": {
            name: {"present": s["present"], "compiled": s["compiled"]} for name, s in status.items()
        },
        "capabilities": {
            "formats": list(FORMATS),
            "models": [name for name in GENERATOR_NAMES if status[name]["present"]],
            "max_audio_seconds": svc.settings.max_audio_seconds,
            "max_body_mb": svc.settings.max_body_mb,
        },
    }
    if not can_generate:
        missing = [name for name in REQUIRED_MODELS if not status[name]["present"]]
        body["error"] = {
            "code": ErrorCode.MODELS_MISSING.code,
            "message": f"models not installed in {svc.settings.models_dir}: {', '.join(missing)}",
            "fix": SETUP_COMMAND.replace("MODELS_DIR", str(svc.settings.models_dir)),
        }
    return jsonify(body), 200 if can_generate else 503


@meta.get(
    "/health/live",
    **operation(
        "liveness",
        "Liveness probe: the process answers (never needs an API key)",
        "health",
        public=True,
    ),
    responses={"200": ok("Alive.", Liveness)},
)
def live():
    return jsonify({"status": "alive"})


@meta.get(
    "/health/ready",
    **operation(
        "readiness",
        "Readiness probe: models installed and compiled, a generation slot free",
        "health",
    ),
    responses={
        "200": ok("Ready for generations.", Readiness),
        "503": ok(
            "`status` is `not_ready`; `reasons` say why.", Readiness, headers=("Retry-After",)
        ),
        **errors(500),
    },
)
def ready():
    """Ready when the required models are compiled and the generation queue has room."""
    svc = service()
    status = svc.engine.model_status()
    reasons = [
        f"model {name} not compiled" for name in REQUIRED_MODELS if not status[name]["compiled"]
    ]
    if svc.admission.saturated:
        reasons.append("generation queue is full")
    if reasons:
        return jsonify({"status": "not_ready", "reasons": reasons}), 503
    return jsonify({"status": "ready"})


@meta.get(
    "/metrics",
    **operation("metrics", "Prometheus metrics (all workers)", "meta"),
    responses={
        "200": ok(
            "Prometheus text exposition format 0.0.4.",
            content={"text/plain": {"schema": {"type": "string"}}},
        ),
        **errors(500),
    },
)
def metrics():
    payload, content_type = obs.metrics_payload()
    return Response(payload, content_type=content_type)


@meta.get(
    "/openapi.json",
    **operation("openapi", "This document", "meta"),
    responses={"200": ok("The OpenAPI 3.1 document.", OpenAPIDocument), **errors(500)},
)
def openapi_spec():
    return jsonify(openapi.document(current_app))


@meta.get(
    "/docs/",
    **operation("docs", "Interactive API documentation (Swagger UI, served locally)", "meta"),
    responses={
        "200": ok("The Swagger UI page.", content={"text/html": {"schema": {"type": "string"}}}),
        **errors(500),
    },
)
def docs():
    return render_template_string(
        swagger_html_string,
        doc_url="/openapi.json",
        swagger_config={"validatorUrl": None},  # no call to the public validator
        oauth_config=None,
    )
