"""The API's request and response models, declared once.

The app validates JSON and form requests with these models (`lipsync/server/parsing.py`)
and the OpenAPI document takes their JSON Schema (`lipsync/server/openapi.py`). A new
request field is one line in a request model (plus its handling in the route).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.config import JsonValue
from pydantic.json_schema import SkipJsonSchema

from lipsync.errors import ErrorCode
from lipsync.options import (
    BLEND_MODES,
    DEFAULT_PADS,
    DEFAULT_SILENCE_FADE_FRAMES,
    DEFAULT_SILENCE_THRESHOLD_DB,
    GENERATOR_NAMES,
    MAX_FPS,
    MAX_SILENCE_FADE_FRAMES,
    MAX_SILENCE_THRESHOLD_DB,
    MIN_SILENCE_THRESHOLD_DB,
    QUALITY_MODES,
    RenderOptions,
)
from lipsync.server.fields import (
    AVATAR_ID_REGEX,
    AvatarId,
    PathAvatarId,
    choice,
    flag,
    int_list,
    integer,
    media,
    number,
)
from lipsync.server.fields import refuse as _refuse
from lipsync.settings import FORMATS, Settings

MAX_FPS_DOC = int(MAX_FPS) if float(MAX_FPS).is_integer() else MAX_FPS
ONE_FACE: list[JsonValue] = [{"required": ["image"]}, {"required": ["video"]}]


def _missing(field: str, what: str) -> Exception:
    return _refuse(f"{field}: is required ({what})", code=ErrorCode.MISSING_FIELD)


class FaceOptions(BaseModel):
    """How the face is found and cropped; part of an avatar's identity."""

    model_config = ConfigDict(extra="ignore")

    pads: Annotated[
        list[int] | None,
        *int_list(
            "[top, bottom, left, right] extra pixels around the detected face",
            unsigned=True,
            default=list(DEFAULT_PADS),
        ),
    ] = None
    box: Annotated[
        list[int] | None,
        *int_list(
            "explicit face box [top, bottom, left, right]: skips detection; it must lie inside "
            "the image (else 422 `invalid_input`)",
            unsigned=False,
            default=None,
        ),
    ] = None
    smooth: Annotated[
        bool | None, *flag("average face boxes over 5 frames (videos)", default=True)
    ] = None
    quality: Annotated[
        str | None,
        *choice(
            QUALITY_MODES,
            "output size: `standard` fits within 1280×720 (portrait 720×1280), `high` within "
            "1920×1080, `original` keeps the input's size; never enlarged, aspect ratio kept, even "
            "sizes. Applied once per avatar, before face detection (default: the server's "
            "LIPSYNC_DEFAULT_QUALITY). With `avatar_id` it must match the avatar's.",
            default=QUALITY_MODES[0],
        ),
    ] = None


class RenderFields(BaseModel):
    """How the video is made; validated on registration too, but not stored."""

    fps: Annotated[
        float | None,
        *number(
            1,
            MAX_FPS_DOC,
            f"output frame rate for an image (1..{MAX_FPS_DOC}); a video (or video avatar) "
            "keeps its own rate",
            default=25,
        ),
    ] = None
    format: Annotated[
        str | None,
        *choice(
            FORMATS,
            "WebM = VP9 + Opus; MP4 = H.264 + AAC (faststart). Without it, a video `Accept` "
            "header chooses the container.",
            default=FORMATS[0],
        ),
    ] = None
    model: Annotated[
        str | None, *choice(GENERATOR_NAMES, "generator weights", default=GENERATOR_NAMES[0])
    ] = None
    blend: Annotated[
        str | None,
        *choice(
            BLEND_MODES,
            "`soft`: only the lower face (mouth, chin, cheeks below the nose) takes generated "
            "pixels, through a feathered mask colour-matched to the skin around it; everything "
            "else keeps the original pixels. `none`: the whole face box is replaced, as the "
            "reference Wav2Lip does (for parity checks). Default: LIPSYNC_DEFAULT_BLEND.",
            default=BLEND_MODES[0],
        ),
    ] = None
    silence_gate: Annotated[
        bool | None,
        *flag(
            "frames whose 0.2 s audio window peaks below `silence_threshold_db` show the avatar's "
            "own frame without inference; switches cross-fade over `silence_fade_frames` frames",
            default=False,
        ),
    ] = None
    silence_threshold_db: Annotated[
        float | None,
        *number(
            MIN_SILENCE_THRESHOLD_DB,
            MAX_SILENCE_THRESHOLD_DB,
            "dB on Wav2Lip's mel scale (-100 = digital silence; speech peaks around -25..-45)",
            default=DEFAULT_SILENCE_THRESHOLD_DB,
        ),
    ] = None
    silence_fade_frames: Annotated[
        int | None,
        *integer(
            0,
            MAX_SILENCE_FADE_FRAMES,
            "frames over which generated and original frames cross-fade",
            default=DEFAULT_SILENCE_FADE_FRAMES,
        ),
    ] = None

    def render_options(self, settings: Settings) -> RenderOptions:
        """The library's options: the given fields, the server's defaults, the rest default."""
        given = {
            name: getattr(self, name)
            for name in RENDER_OPTION_NAMES
            if getattr(self, name, None) is not None
        }
        for name in ("pads", "box"):
            if name in given:
                given[name] = tuple(given[name])
        server_defaults = {
            "quality": settings.default_quality,
            "blend": settings.default_blend,
            "fill_missing_faces": settings.fill_missing_faces,
        }
        return RenderOptions(**{**server_defaults, **given})


# Request fields that are RenderOptions fields of the same name.
RENDER_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(RenderOptions))


FACE_DOC = "JPEG/PNG/WebP/BMP/GIF face image, or an MP4/WebM/MOV face video."


class RegisterAvatarRequest(RenderFields, FaceOptions):
    """An image or a short face video, and the face options. The render options (`fps`,
    `format`, `model`) are validated but not stored."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": ONE_FACE})

    image: Annotated[bytes | None, *media(FACE_DOC)] = None
    video: Annotated[
        bytes | None, *media("The same as `image` (either name works for either kind).")
    ] = None

    @property
    def face(self) -> bytes | None:
        return self.image or self.video

    @model_validator(mode="after")
    def _needs_a_face(self) -> RegisterAvatarRequest:
        if self.face is None and not self._face_optional():
            raise _missing("image", "base64 image/video, a file upload, or avatar_id")
        return self

    def _face_optional(self) -> bool:
        return False


class GenerateRequest(RegisterAvatarRequest):
    """Only `audio` and one of `image` / `video` / `avatar_id` are required; unknown fields
    are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "required": ["audio"],
            "anyOf": [*ONE_FACE, {"required": ["avatar_id"]}],
        },
    )

    audio: Annotated[
        bytes | None,
        *media(
            "Speech: WAV of any layout (8/16/24/32-bit int, float; mono or multi-channel; "
            "8..192 kHz), MP3, OGG, FLAC, WebM/Opus, M4A.",
            nullable=False,
        ),
    ] = None
    avatar_id: AvatarId = None
    response: Annotated[
        str | None,
        *choice(
            ("json", "binary"), "`binary`: the video itself (as with a video `Accept`)", "json"
        ),
    ] = None
    stream: Annotated[
        bool | None,
        *flag(
            "`true`: the video itself (whatever `response` and `Accept` say), sent while it is "
            "generated (live WebM or fragmented MP4, chunked), so playback starts after the "
            "first frames; its metadata in X-* "
            "headers (`X-Codecs` for a MediaSource type). Errors found before the first byte "
            "are JSON as usual; a failure after it ends the transfer without the chunked "
            "terminator, so the client sees a truncated body with fewer frames than "
            "`X-Num-Frames`.",
            default=False,
        ),
    ] = None

    def _face_optional(self) -> bool:
        return self.avatar_id is not None

    @model_validator(mode="after")
    def _needs_audio(self) -> GenerateRequest:
        if self.audio is None:
            raise _missing("audio", "base64 WAV, or a file upload")
        return self


class AvatarPath(BaseModel):
    avatar_id: PathAvatarId = Field(
        description="32 lowercase hex digits (anything else: 400 `invalid_avatar_id`)"
    )


# -- responses -----------------------------------------------------------------------------

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
    fps: float = Field(ge=1, le=MAX_FPS_DOC, description="frame rate")
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


# Sent with a streamed reply only: what a browser MediaSource needs besides the MIME type.
STREAM_HEADERS = {"X-Codecs": "the codecs, e.g. `vp9,opus` or `avc1.64001f,mp4a.40.2`"}
VIDEO_HEADER_NAMES = (*(header_name(f) for f in VideoMeta.model_fields), *STREAM_HEADERS)


class GenerateResult(VideoMeta):
    success: Literal[True]
    video: str = Field(
        description="base64 of the whole video file (`mime_type` says which)",
        json_schema_extra={"contentEncoding": "base64"},
    )


Box = list[int]


class Avatar(BaseModel):
    avatar_id: str = Field(pattern=AVATAR_ID_REGEX)
    kind: Literal["image", "video"]
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    num_frames: int = Field(ge=1)
    fps: float | None = Field(description="the clip's frame rate; null for an image")
    boxes: list[Box] = Field(description="the face box [top, bottom, left, right] per frame")
    pads: Box = Field(min_length=4, max_length=4)
    box: Box | None = Field(min_length=4, max_length=4)
    smooth: bool
    quality: Literal[QUALITY_MODES] = Field(  # type: ignore[valid-type]
        description="the output size mode its frames were fitted to"
    )
    created_at: float = Field(description="Unix time of registration")


class RegisteredAvatar(Avatar):
    created: bool = Field(
        description="true when this request registered the avatar (201), false when it was "
        "already known (200)"
    )


class AvatarList(BaseModel):
    avatars: list[Avatar]


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
    Avatar,
    RegisteredAvatar,
    AvatarList,
    Deleted,
    Health,
    Liveness,
    Readiness,
    Index,
    OpenAPIDocument,
)
REQUEST_MODELS = (GenerateRequest, RegisterAvatarRequest)
