"""POST /api/generate: lip-sync a face (image, video or avatar) to speech."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TypeVar

from flask import Response, g, jsonify, request
from flask_openapi3 import APIBlueprint

from lipsync import generation
from lipsync.media.encode_options import ContainerName
from lipsync.options import RenderOptions
from lipsync.server import observability as obs
from lipsync.server.admission import Deadline
from lipsync.server.offload import run_in_thread
from lipsync.server.openapi import LIMITS, errors, ok, operation
from lipsync.server.parsing import parse_request, response_mode
from lipsync.server.responses import VIDEO_HEADER_NAMES, GenerateResult, meta_headers
from lipsync.server.schemas import GenerateRequest
from lipsync.server.service import Service, service
from lipsync.server.streaming import streamed_reply
from lipsync.serving.faces import Face, resolve_face
from lipsync.serving.producing import produce, video_meta

generate = APIBlueprint("generate", __name__)
R = TypeVar("R")

BINARY = {"schema": {"type": "string", "format": "binary"}}
VIDEO_200 = ok(
    "The lip-synced video. JSON by default; the video file itself when `Accept` prefers "
    "`video/webm` / `video/mp4` (the container follows unless `format` is given) or "
    "`response` is `binary`, with its metadata in `X-*` headers; with `stream: true` that file "
    "is sent while it is generated (chunked, no `Content-Length`, no `X-Timings-Ms`).",
    content={
        "application/json": {"schema": {"$ref": "#/components/schemas/GenerateResult"}},
        "video/webm": BINARY,
        "video/mp4": BINARY,
    },
    headers=VIDEO_HEADER_NAMES,
)


@generate.post(
    "/api/generate",
    **operation(
        "generate",
        "Lip-sync a face (image, video or avatar) to speech",
        "generate",
        body=GenerateRequest,
    ),
    description="The video has `ceil(speech_seconds × fps)` frames and the speech as its audio "
    "track. Odd image sizes lose their last row/column. Requests beyond the worker's "
    "generation slots and queue get 503 `overloaded` with `Retry-After`; a generation over "
    "the time limit gets 504 `timeout`. " + LIMITS,
    responses={"200": VIDEO_200, **errors(400, 404, 413, 415, 422, 500, 503, 504)},
)
def generate_video():
    svc = service()
    settings = svc.settings
    svc.admission.refuse_if_saturated()  # before spending time on a body we would refuse
    deadline = Deadline(settings.request_timeout_s, request.environ.get("gunicorn.socket"))
    req = parse_request(request, GenerateRequest)
    binary, accepted_container = response_mode(request, req.response)
    fmt = req.format or accepted_container or settings.default_format
    options = req.render_options(settings)
    speech = run_in_thread(generation.decode_speech, req.audio, settings)
    if req.stream:
        return streamed_reply(
            svc,
            lambda: make_video(
                generation.generate_stream, svc, req, options, fmt, speech, deadline.check
            ),
            deadline,
        )
    with svc.admission.slot():  # waited for on the greenlet: a queued request costs no thread
        deadline.check()
        face, result = run_in_thread(
            make_video,
            generation.generate,
            svc,
            req,
            options,
            fmt,
            speech,
            deadline.check,
            watch=deadline,
        )
    obs.observe_generation(result.timings_ms, result.video.num_frames)
    return answer(result, face.avatar.avatar_id, binary)


def make_video(
    make: Callable[..., R],
    svc: Service,
    req: GenerateRequest,
    options: RenderOptions,
    fmt: ContainerName,
    speech: generation.Speech,
    check: Callable[[], None],
) -> tuple[Face, R]:
    """The request's face (detection unless registered or boxed) and `make(...)` of its
    video: `generation.generate` (the whole file) or `generation.generate_stream` (checked
    and ready, nothing generated yet). Runs on a native thread: no Flask context here."""
    timings: dict[str, float] = {}
    face = resolve_face(
        svc.store,
        options,
        avatar_id=req.avatar_id,
        face=req.face,
        quality=req.quality,
        timings=timings,
    )
    return face, produce(make, svc.engine, face, speech, fmt, timings, check=check)


def answer(result: generation.GenerationResult, avatar_id: str, binary: bool) -> Response:
    """The video as JSON (base64 and metadata) or as a file with X-* metadata headers."""
    meta = video_meta(result, avatar_id)
    g.log_extra = {
        "avatar_id": avatar_id,
        "num_frames": meta["num_frames"],
        "timings_ms": result.timings_ms,
    }
    if binary:
        headers = meta_headers(meta)
        return Response(result.video.data, mimetype=result.video.mime_type, headers=headers)
    video = base64.b64encode(result.video.data).decode("ascii")
    return jsonify(GenerateResult(success=True, video=video, **meta).model_dump())
