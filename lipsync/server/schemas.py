"""The API's request and response models, declared once.

The app validates JSON and form requests with these models (`lipsync/server/parsing.py`)
and the OpenAPI document takes their JSON Schema (`lipsync/server/openapi.py`). A new
request field is one line in a request model (plus its handling in the route).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonValue

from lipsync.errors import ErrorCode
from lipsync.limits import AUDIO_SAMPLE_RATE_HZ, FPS, SILENCE_FADE_FRAMES, SILENCE_THRESHOLD_DB
from lipsync.options import BLEND_MODES, GENERATOR_NAMES, QUALITY_MODES, RenderOptions
from lipsync.server.fields import (
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
from lipsync.serving.faces import ambiguity
from lipsync.serving.options import LIBRARY_DEFAULTS, render_options
from lipsync.settings import FORMATS, Settings

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
            default=list(LIBRARY_DEFAULTS.pads),
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
        bool | None,
        *flag("average face boxes over 5 frames (videos)", default=LIBRARY_DEFAULTS.smooth),
    ] = None
    quality: Annotated[
        str | None,
        *choice(
            QUALITY_MODES,
            "output size: `standard` fits within 1280×720 (portrait 720×1280), `high` within "
            "1920×1080, `original` keeps the input's size; never enlarged, aspect ratio kept, even "
            "sizes. Applied once per avatar, before face detection (default: the server's "
            "LIPSYNC_DEFAULT_QUALITY). With `avatar_id` it must match the avatar's.",
        ),
    ] = None


class RenderFields(BaseModel):
    """How the video is made; validated on registration too, but not stored."""

    fps: Annotated[
        float | None,
        *number(
            FPS,
            f"output frame rate for an image ({FPS.text}); a video (or video avatar) keeps "
            "its own rate",
            default=LIBRARY_DEFAULTS.fps,
        ),
    ] = None
    format: Annotated[
        str | None,
        *choice(
            FORMATS,
            "WebM = VP9 + Opus; MP4 = H.264 + AAC (faststart). Without it, a video `Accept` "
            "header chooses the container (default: LIPSYNC_DEFAULT_FORMAT).",
        ),
    ] = None
    model: Annotated[
        str | None,
        *choice(GENERATOR_NAMES, "generator weights", default=LIBRARY_DEFAULTS.model),
    ] = None
    blend: Annotated[
        str | None,
        *choice(
            BLEND_MODES,
            "`soft`: only the lower face (mouth, chin, cheeks below the nose) takes generated "
            "pixels, through a feathered mask colour-matched to the skin around it; everything "
            "else keeps the original pixels. `none`: the whole face box is replaced, as the "
            "reference Wav2Lip does (for parity checks). Default: LIPSYNC_DEFAULT_BLEND.",
        ),
    ] = None
    silence_gate: Annotated[
        bool | None,
        *flag(
            "frames whose 0.2 s audio window peaks below `silence_threshold_db` show the avatar's "
            "own frame without inference; switches cross-fade over `silence_fade_frames` frames",
            default=LIBRARY_DEFAULTS.silence_gate,
        ),
    ] = None
    silence_threshold_db: Annotated[
        float | None,
        *number(
            SILENCE_THRESHOLD_DB,
            f"dB on Wav2Lip's mel scale ({SILENCE_THRESHOLD_DB.minimum:g} = digital silence; "
            "speech peaks around -25..-45)",
            default=LIBRARY_DEFAULTS.silence_threshold_db,
        ),
    ] = None
    silence_fade_frames: Annotated[
        int | None,
        *integer(
            SILENCE_FADE_FRAMES,
            "frames over which generated and original frames cross-fade",
            default=LIBRARY_DEFAULTS.silence_fade_frames,
        ),
    ] = None

    def render_options(self, settings: Settings) -> RenderOptions:
        """The library's options: the given fields over the server's defaults."""
        return render_options(settings, **dict(self))


FACE_DOC = "JPEG/PNG/WebP/BMP/GIF face image, or an MP4/WebM/MOV face video."


class RegisterAvatarRequest(RenderFields, FaceOptions):
    """An image or a short face video (not both: 400 naming both), and the face options.
    The render options (`fps`, `format`, `model`) are validated but not stored."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": ONE_FACE})

    image: Annotated[bytes | None, *media(FACE_DOC)] = None
    video: Annotated[
        bytes | None, *media("The same as `image` (either name works for either kind).")
    ] = None

    @property
    def face(self) -> bytes | None:
        return self.image or self.video

    def _faces(self) -> dict[str, object]:
        """The faces the request names ({field: value or None}): it must name one."""
        return {"image": self.image, "video": self.video}

    @model_validator(mode="after")
    def _one_face(self) -> RegisterAvatarRequest:
        named = self._faces()
        reason = ambiguity(named)
        if reason is not None:
            raise _refuse(reason)
        if all(value is None for value in named.values()):
            raise _missing("image", "base64 image/video, a file upload, or avatar_id")
        return self


class GenerateRequest(RegisterAvatarRequest):
    """Only `audio` and one of `image` / `video` / `avatar_id` are required (two of them:
    400 naming both); unknown fields are ignored."""

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
            f"{AUDIO_SAMPLE_RATE_HZ.minimum / 1000:g}..{AUDIO_SAMPLE_RATE_HZ.maximum / 1000:g} "
            "kHz), MP3, OGG, FLAC, WebM/Opus, M4A.",
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

    def _faces(self) -> dict[str, object]:
        return {"avatar_id": self.avatar_id, **super()._faces()}

    @model_validator(mode="after")
    def _needs_audio(self) -> GenerateRequest:
        if self.audio is None:
            raise _missing("audio", "base64 WAV, or a file upload")
        return self


class AvatarPath(BaseModel):
    avatar_id: PathAvatarId = Field(
        description="32 lowercase hex digits (anything else: 400 `invalid_avatar_id`)"
    )


REQUEST_MODELS = (GenerateRequest, RegisterAvatarRequest)
