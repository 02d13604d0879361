"""The one place where exceptions become HTTP answers.

Domain errors (media errors included) carry an `ErrorCode`; its status is read here and
nowhere else. Anything else — a ValueError from numpy
included — is a bug: logged with the request id and answered 500 `internal_error`,
never blamed on the client and never shown to it.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from lipsync.engine import ModelNotFoundError
from lipsync.errors import AvatarStoreUnavailableError, ErrorCode, LipSyncError
from lipsync.face_detection import FaceNotDetectedError
from lipsync.server import observability as obs
from lipsync.server.admission import OverloadedError, end_connection

logger = logging.getLogger(__name__)

SETUP_COMMAND = "python convert_to_openvino.py --wav2lip CKPT --s3fd CKPT --output-dir MODELS_DIR"
FACE_HINT = "; send a clear, frontal face or an explicit box [top, bottom, left, right]"
# Refusals counted in the `rejected` metric (a missing model is not load; a full avatar
# store is not either, but an operator must act on it).
REJECTED_STATUSES = (499, 503, 504, 507)


def error_response(
    status: int, code: str, message: str, field: str | None = None
) -> tuple[Response, int]:
    """`{"success": false, "error": {"code", "message", "field"?}}` with `status`."""
    body: dict[str, Any] = {"success": False, "error": {"code": code, "message": message}}
    if field:
        body["error"]["field"] = field
    g.log_extra = {**g.get("log_extra", {}), "error_code": code}
    return jsonify(body), status


def domain_error(exc: LipSyncError) -> tuple[Response, int]:
    message = exc.message
    if isinstance(exc, ModelNotFoundError):
        message = f"{message}; install it with: {SETUP_COMMAND}"
    elif isinstance(exc, FaceNotDetectedError):
        message = f"{message}{FACE_HINT}"
    code = exc.code
    response, status = error_response(code.status, code.code, message, exc.field)
    if isinstance(exc, OverloadedError | AvatarStoreUnavailableError):
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, OverloadedError):  # the retry may reach another worker's capacity
        sock = request.environ.get("gunicorn.socket")
        response.call_on_close(lambda: end_connection(sock))
    if status in REJECTED_STATUSES and code is not ErrorCode.MODEL_UNAVAILABLE:
        obs.REJECTED.labels(code.code).inc()
    return response, status


def http_error(exc: HTTPException) -> tuple[Response, int]:
    """Werkzeug's own errors (unknown route, wrong method, body too large)."""
    if exc.code == 413:
        code = ErrorCode.PAYLOAD_TOO_LARGE.code
    else:
        code = (exc.name or "error").lower().replace(" ", "_")
    return error_response(exc.code or 500, code, exc.description or exc.name)


def unexpected_error(exc: Exception) -> tuple[Response, int]:
    request_id = g.get("request_id", "")
    logger.exception(
        "unhandled error on %s %s (request %s)",
        request.method,
        request.path,
        request_id,
        extra={"request_id": request_id},
    )
    return error_response(
        ErrorCode.INTERNAL_ERROR.status,
        ErrorCode.INTERNAL_ERROR.code,
        f"internal error (request {request_id}); see the server log",
    )


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(LipSyncError, domain_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
