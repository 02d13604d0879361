"""The API's response models, declared once: routes build their answers from them
(`lipsync/server/routes/`) and the OpenAPI document takes their JSON Schema
(`lipsync/server/openapi.py`)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from lipsync.errors import ErrorCode
from lipsync.limits import FACE_SIDES, FPS
from lipsync.options import QUALITY_MODES
from lipsync.server.fields import AVATAR_ID_REGEX

# A response field that may be left out (`field: str | Absent = None`): absent from the
# answer, never null, so the schema does not offer null (openapi drops its null default).
Absent = SkipJsonSchema[None]


ERROR_CODE_SCHEMA = {
    "type": "string",
    "enum": sorted(member.code for member in ErrorCode),
    "description": "Stable, machine-readable reason: "
    + "; ".join(f"`{m.code}` ({m.status}): {m.description}" for m in ErrorCode)
    + ". `client_disconnected` (499) is only logged: the client has gone.",
}


class ErrorDetail(BaseModel):
    code: Annotated[str, WithJsonSchema(ERROR_CODE_SCHEMA)]
    message: str = Field(min_length=1)
    field: str | Absent = Field(
        default=None, description="the request field at fault, when there is one"
    )


class Error(BaseModel):
    success: Literal[False]
    error: ErrorDetail


class VideoMeta(BaseModel):
    """A video's metadata: in the JSON answer, and as `X-<Field-Name>` headers of a binary or
    streamed one (`X-Timings-Ms` as JSON text, and only when the whole file was made)."""

    mime_type: Literal["video/webm", "video/mp4"] = Field(description="the container")
    num_frames: int = Field(ge=1, description="ceil(speech seconds × fps)")
    duration: float = Field(ge=0, description="seconds")
    fps: float = Field(ge=FPS.minimum, le=FPS.maximum, description="frame rate")
    width: int = Field(ge=1, description="encoded width (even)")
    height: int = Field(ge=1, description="encoded height (even)")
    avatar_id: str = Field(
        pattern=AVATAR_ID_REGEX, description="the avatar the video was made from"
    )
    silent_frames: int = Field(
        ge=0, description="frames the silence gate showed as the avatar's own (no inference)"
    )
    timings_ms: dict[str, float] = Field(
        description="milliseconds per stage (decode_face, resize, detect, mel, gate, infer, "
        "paste, encode; absent stages were skipped, e.g. detect for a known avatar)"
    )


def header_name(field: str) -> str:
    """The header carrying a `VideoMeta` field: "num_frames" -> "X-Num-Frames"."""
    return "X-" + field.title().replace("_", "-")


def meta_headers(meta: dict[str, Any]) -> dict[str, str]:
    """`VideoMeta` fields as the headers of a binary or streamed answer (objects as JSON)."""
    return {
        header_name(field): json.dumps(value, separators=(",", ":"))
        if isinstance(value, dict)
        else str(value)
        for field, value in meta.items()
    }


# Sent with a streamed reply only: what a browser MediaSource needs besides the MIME type.
STREAM_ONLY_HEADERS = {"X-Codecs": "the codecs, e.g. `vp9,opus` or `avc1.64001f,mp4a.40.2`"}
VIDEO_HEADER_NAMES = (*(header_name(f) for f in VideoMeta.model_fields), *STREAM_ONLY_HEADERS)


class GenerateResult(VideoMeta):
    success: Literal[True]
    video: str = Field(
        description="base64 of the whole video file (`mime_type` says which)",
        json_schema_extra={"contentEncoding": "base64"},
    )


Box = list[int]


class AvatarInfo(BaseModel):
    """A registered avatar's description."""

    avatar_id: str = Field(pattern=AVATAR_ID_REGEX)
    kind: Literal["image", "video"]
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    num_frames: int = Field(ge=1)
    fps: float | None = Field(description="the clip's frame rate; null for an image")
    boxes: list[Box] = Field(description="the face box [top, bottom, left, right] per frame")
    pads: Box = Field(min_length=FACE_SIDES, max_length=FACE_SIDES)
    box: Box | None = Field(min_length=FACE_SIDES, max_length=FACE_SIDES)
    smooth: bool
    quality: Literal[QUALITY_MODES] = Field(  # type: ignore[valid-type]
        description="the output size mode its frames were fitted to"
    )
    created_at: float = Field(description="Unix time of registration")


class RegisteredAvatar(AvatarInfo):
    """The answer to a registration: the avatar, and whether this request registered it."""

    registered_now: bool = Field(
        description="true when this request registered the avatar (201), false when it was "
        "already known (200)"
    )
    created: bool = Field(
        description="deprecated: the same as `registered_now` (kept for existing clients; "
        "`created_at` is the registration time)",
        json_schema_extra={"deprecated": True},
    )

    @classmethod
    def of(cls, info: AvatarInfo, registered_now: bool) -> RegisteredAvatar:
        return cls(**dict(info), registered_now=registered_now, created=registered_now)


class AvatarList(BaseModel):
    avatars: list[AvatarInfo]


class Deleted(BaseModel):
    success: Literal[True]
    avatar_id: str = Field(pattern=AVATAR_ID_REGEX)
    deleted: Literal[True]


class ModelState(BaseModel):
    present: bool
    compiled: bool


class Capabilities(BaseModel):
    formats: list[str] | Absent = None
    models: list[str] | Absent = None
    max_audio_seconds: float | Absent = None
    max_body_mb: float | Absent = None


class HealthError(BaseModel):
    """When degraded: what is missing and the command that fixes it."""

    code: Literal["models_missing"]  # ErrorCode.MODELS_MISSING.code
    message: str
    fix: str | Absent = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    openvino_version: str | Absent = None
    device: str | Absent = None
    precision: str | Absent = None
    models: dict[str, ModelState] | Absent = None
    capabilities: Capabilities | Absent = None
    error: HealthError | Absent = None


class Liveness(BaseModel):
    status: Literal["alive"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    reasons: list[str] | Absent = Field(
        default=None, description="why the worker cannot take generations (when not_ready)"
    )


class Index(BaseModel):
    service: str
    endpoints: dict[str, str] | Absent = None


class OpenAPIDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


RESPONSE_MODELS = (
    Error,
    GenerateResult,
    AvatarInfo,
    RegisteredAvatar,
    AvatarList,
    Deleted,
    Health,
    Liveness,
    Readiness,
    Index,
    OpenAPIDocument,
)
