"""Avatars: faces registered once (detection runs then), reused by id.

With a shared store (Redis) every route here may answer `503 avatar_store_unavailable`
(with Retry-After) while Redis cannot be reached; registering answers `507 storage_full`
when the store has no room left (a full disk, a Redis out of memory)."""

from __future__ import annotations

from flask import g, jsonify, request
from flask_openapi3 import APIBlueprint

from lipsync.avatars import Avatar, AvatarStore
from lipsync.options import RenderOptions
from lipsync.server.offload import run_in_thread
from lipsync.server.openapi import LIMITS, errors, ok, operation
from lipsync.server.parsing import parse_request
from lipsync.server.responses import AvatarInfo, AvatarList, Deleted, RegisteredAvatar
from lipsync.server.schemas import AvatarPath, RegisterAvatarRequest
from lipsync.server.service import service
from lipsync.serving.faces import not_found

avatars = APIBlueprint("avatars", __name__)


@avatars.post(
    "/api/avatars",
    **operation(
        "registerAvatar",
        "Register a face once (detection runs now), reuse it by id",
        "avatars",
        body=RegisterAvatarRequest,
    ),
    description="The id is derived from the file's bytes and the face options, so registering "
    "the same file again returns the same id (200, `registered_now` false). Both `image` and "
    "`video`: 400 naming both. " + LIMITS,
    responses={
        "200": ok("Already registered (same bytes and options).", RegisteredAvatar),
        "201": ok("Registered.", RegisteredAvatar),
        **errors(400, 413, 415, 422, 500, 503, 504, 507),
    },
)
def register_avatar():
    svc = service()
    svc.admission.refuse_if_saturated()
    req = parse_request(request, RegisterAvatarRequest)
    options = req.render_options(svc.settings)
    with svc.admission.slot():  # detection on a video is as costly as a generation
        avatar, registered_now = run_in_thread(_register, svc.store, req.face, options)
    g.log_extra = {"avatar_id": avatar.avatar_id}
    reply = RegisteredAvatar.of(AvatarInfo(**avatar.meta()), registered_now)
    return jsonify(reply.model_dump()), 201 if registered_now else 200


def _register(store: AvatarStore, face: bytes, options: RenderOptions) -> tuple[Avatar, bool]:
    """Decode and detect on a native thread (see lipsync.server.offload)."""
    return store.get_or_create(face, options, persist=True)


@avatars.get(
    "/api/avatars",
    **operation("listAvatars", "Every stored avatar, newest first", "avatars"),
    responses={"200": ok("The avatars.", AvatarList), **errors(500, 503)},
)
def list_avatars():
    infos = [AvatarInfo(**meta) for meta in service().store.list()]
    return jsonify(AvatarList(avatars=infos).model_dump())


@avatars.get(
    "/api/avatars/<avatar_id>",
    **operation("getAvatar", "One avatar's metadata", "avatars"),
    responses={"200": ok("The avatar.", AvatarInfo), **errors(400, 404, 500, 503)},
)
def get_avatar(path: AvatarPath):
    meta = service().store.meta(path.avatar_id)  # metadata only: no frames decoded
    if meta is None:
        raise not_found(path.avatar_id)
    return jsonify(AvatarInfo(**meta).model_dump())


@avatars.delete(
    "/api/avatars/<avatar_id>",
    **operation("deleteAvatar", "Forget an avatar (memory and the avatar store)", "avatars"),
    responses={"200": ok("Deleted.", Deleted), **errors(400, 404, 500, 503)},
)
def delete_avatar(path: AvatarPath):
    if not service().store.delete(path.avatar_id):
        raise not_found(path.avatar_id)
    return jsonify(Deleted(success=True, avatar_id=path.avatar_id, deleted=True).model_dump())
