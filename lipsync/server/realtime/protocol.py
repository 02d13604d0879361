"""The /api/stream protocol, declared once: pydantic models of the JSON messages, the
binary frame header, the close codes, and the machine-readable document built from them.

Client -> server: a JSON `start` first, then audio (binary messages of raw PCM in the
start's encoding, any length that is a whole number of samples; or JSON `audio` with
base64 PCM) and JSON controls (`flush`, `interrupt`, `ping`, `end`).
Server -> client: JSON `ready`, `pong`, `flushed`, `interrupted`, `dropped`, `error`, and
each frame either as a binary message (FRAME_HEADER + JPEG; header type 1 speech, 2 idle)
or as a JSON `frame` (`idle` true for idle frames); with `output.format` "webm", one live
WebM stream instead, in binary messages of header type 3 (or JSON `webm`); with "patch",
each frame of the avatar once (type 4, JSON `base`) and then per frame only the region the
lips changed (type 5 speech, 6 idle: PATCH_HEADER + JPEG; JSON `patch`), drawn by the
client over its base frame.

Pacing (`pace`): "realtime" (the default) sends each speech frame no earlier than
`lead_ms` before its presentation time on the utterance's clock, so an `interrupt` finds
the rest of the reply still in the server; "asap" sends frames as soon as they are made.
"""

from __future__ import annotations

import struct
import zlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from lipsync.limits import (
    AUDIO_CHANNELS,
    AUDIO_SAMPLE_RATE_HZ,
    DEFAULT_LEAD_MS,
    FPS,
    JPEG_QUALITY,
    LEAD_MS,
    SILENCE_THRESHOLD_DB,
)
from lipsync.options import GENERATOR_NAMES
from lipsync.serving.faces import ambiguity
from lipsync.serving.options import LIBRARY_DEFAULTS

# Binary frame: little-endian magic, message type, reserved byte and u16, frame index,
# presentation time (ms from the utterance's start), payload length, CRC-32 of the payload.
FRAME_HEADER = struct.Struct("<4sBBHIIII")
FRAME_MAGIC = b"LSRT"
FRAME_TYPE_JPEG = 1  # a lip-synced frame: index and pts within the utterance
FRAME_TYPE_IDLE_JPEG = 2  # idle mode: the avatar's own frame; index and pts in the session
FRAME_TYPE_WEBM = 3  # webm output: the next bytes of the session's one WebM stream
FRAME_TYPE_BASE = 4  # patch output: a frame of the avatar, sent once, kept by the client
FRAME_TYPE_PATCH = 5  # patch output: a speech frame as a patch over its base frame
FRAME_TYPE_IDLE_PATCH = 6  # patch output: an idle frame (the base frame as it is)
FRAME_TYPES = {
    FRAME_TYPE_JPEG: "JPEG frame of speech (index, pts_ms: within the utterance)",
    FRAME_TYPE_IDLE_JPEG: "JPEG idle frame, the avatar's own (index: idle frames of the "
    "session from 0; pts_ms: since `ready`)",
    FRAME_TYPE_WEBM: "WebM bytes (append to a MediaSource SourceBuffer; index: video frames "
    "in the stream after this chunk, pts_ms: media time they reach)",
    FRAME_TYPE_BASE: "JPEG of a frame of the avatar (index: the avatar frame, which patches "
    "name as their base; pts_ms: 0): sent once, before the first patch over it; keep it for "
    "the session",
    FRAME_TYPE_PATCH: "a speech frame as a patch (index, pts_ms: as type 1): PATCH_HEADER "
    "(base frame, x, y, width, height) then a JPEG of that rectangle, drawn over the base "
    "frame; width 0 and no JPEG: the base frame as it is (e.g. the silence gate)",
    FRAME_TYPE_IDLE_PATCH: "an idle frame as a patch (index, pts_ms: as type 2): PATCH_HEADER "
    "naming the base frame, width 0, no JPEG",
}
# The payload of a patch message (types 5 and 6) starts with: the base frame's index, then
# the rectangle (x, y, width, height) in pixels of the frame that the JPEG after it covers.
PATCH_HEADER = struct.Struct("<IHHHH")

# WebSocket subprotocols: a browser (which cannot set headers on a WebSocket) offers
# [SUBPROTOCOL, KEY_SUBPROTOCOL_PREFIX + key]; the server answers SUBPROTOCOL when the key
# is right and refuses the upgrade (401) like a wrong X-API-Key when it is not.
SUBPROTOCOL = "lipsync"
KEY_SUBPROTOCOL_PREFIX = "lipsync-key."

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002  # a frame that breaks RFC 6455 (answered by the WebSocket layer)
CLOSE_UNSUPPORTED_DATA = 1003  # binary audio before `start`, an unknown message type
CLOSE_INVALID_PAYLOAD = 1007  # bad JSON, base64 or PCM length; a start that does not validate
CLOSE_POLICY = 1008  # session too long, client idle, reader stalled
CLOSE_TOO_BIG = 1009  # a message over the size limit
CLOSE_INTERNAL = 1011  # a bug: the server log has it
CLOSE_TRY_AGAIN = 1013  # over capacity after the upgrade

# The old name of Output.jpeg_quality, still accepted.
OLD_JPEG_QUALITY = "quality"

Encoding = Literal["pcm_s16le", "f32le"]
SAMPLE_BYTES = {"pcm_s16le": 2, "f32le": 4}
Model = Literal[GENERATOR_NAMES]  # type: ignore[valid-type]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioFormat(_Message):
    sample_rate: int = Field(
        default=16000,
        ge=AUDIO_SAMPLE_RATE_HZ.minimum,
        le=AUDIO_SAMPLE_RATE_HZ.maximum,
        description="Hz; the server's LIPSYNC_MIN/MAX_AUDIO_SAMPLE_RATE may narrow the range",
    )
    encoding: Encoding = "pcm_s16le"
    channels: int = Field(
        default=1,
        ge=AUDIO_CHANNELS.minimum,
        le=AUDIO_CHANNELS.maximum,
        description="interleaved; averaged to mono",
    )


def _old_jpeg_quality(schema: dict[str, Any]) -> None:
    """The published schema accepts the old name too (deprecated), with the same bounds."""
    new = schema["properties"]["jpeg_quality"]
    old = {key: value for key, value in new.items() if key not in ("default", "title")}
    old.update(deprecated=True, description="the old name of jpeg_quality (not both)")
    schema["properties"][OLD_JPEG_QUALITY] = old


class Output(_Message):
    model_config = ConfigDict(json_schema_extra=_old_jpeg_quality)

    format: Literal["jpeg", "webm", "patch"] = Field(
        default="jpeg",
        description="jpeg: a message per frame; webm: one live WebM stream (VP9 + Opus, the "
        "speech muxed in) for MediaSource, in binary messages of type 3 (JSON `webm`); "
        "patch: each avatar frame once (type 4, JSON `base`), then per frame a JPEG of the "
        "region the lips changed (types 5 and 6, JSON `patch`), a tenth of the bytes",
    )
    jpeg_quality: int = Field(
        default=85,
        ge=JPEG_QUALITY.minimum,
        le=JPEG_QUALITY.maximum,
        description="JPEG quality of the frames (jpeg and patch formats); `quality` is its "
        "old name, still accepted (not both)",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        """`quality` (the old name of jpeg_quality; the request field `quality` of HTTP is
        the output size) is read as jpeg_quality."""
        if isinstance(data, dict) and OLD_JPEG_QUALITY in data:
            if "jpeg_quality" in data:
                raise ValueError(f"give jpeg_quality or its old name {OLD_JPEG_QUALITY}, not both")
            data = {**data, "jpeg_quality": data[OLD_JPEG_QUALITY]}
            del data[OLD_JPEG_QUALITY]
        return data


class Start(_Message):
    """Opens the session: the face, the audio's format, the frames wanted."""

    type: Literal["start"]
    avatar_id: str | None = Field(
        None, description="a registered avatar (POST /api/avatars); not with `image`"
    )
    image: str | None = Field(
        None, description="base64 face image or video, when no avatar_id (not both: 1007)"
    )
    box: tuple[int, int, int, int] | None = Field(
        None, description="face box (top, bottom, left, right) for `image`"
    )
    audio: AudioFormat = AudioFormat()
    fps: float = Field(
        LIBRARY_DEFAULTS.fps,
        ge=FPS.minimum,
        le=FPS.maximum,
        description="frame rate for an image (a video avatar keeps its own)",
    )
    model: Model = LIBRARY_DEFAULTS.model
    output: Output = Output()
    protocol: Literal["binary", "json"] = "binary"
    pace: Literal["realtime", "asap"] = Field(
        default="realtime",
        description="realtime: each speech frame leaves no earlier than lead_ms before its "
        "presentation time (the utterance's clock starts with its first frame), so an "
        "interrupt drops the rest of a reply fed faster than real time; asap: as soon as made",
    )
    lead_ms: int = Field(
        default=DEFAULT_LEAD_MS,
        ge=LEAD_MS.minimum,
        le=LEAD_MS.maximum,
        description="realtime pace: how long before its presentation time a frame may leave "
        "(the client's jitter buffer)",
    )
    silence_gate: bool = Field(
        default=LIBRARY_DEFAULTS.silence_gate,
        description="frames whose 0.2 s audio window is silent are the avatar's own, "
        "without inference (a hard switch: no cross-fade live)",
    )
    silence_threshold_db: float = Field(
        default=LIBRARY_DEFAULTS.silence_threshold_db,
        ge=SILENCE_THRESHOLD_DB.minimum,
        le=SILENCE_THRESHOLD_DB.maximum,
        description="dB on Wav2Lip's mel scale (-100 = digital silence)",
    )
    idle: bool = Field(
        default=False,
        description="idle mode: while no speech frame is being made, the avatar's own frames "
        "at fps (binary type 2, JSON frame with idle=true); a video avatar loops forward and "
        "backward, speech continuing where the loop is",
    )

    @model_validator(mode="after")
    def _one_face(self) -> Start:
        """One face: avatar_id or image."""
        reason = ambiguity({"avatar_id": self.avatar_id, "image": self.image})
        if reason is not None:
            raise ValueError(reason)
        if self.avatar_id is None and self.image is None:
            raise ValueError("start needs avatar_id or image")
        return self


class Audio(_Message):
    type: Literal["audio"]
    data: str = Field(description="base64 PCM in the start's encoding")


class Flush(_Message):
    """End of utterance: the tail's frames, then `flushed`; the next audio starts afresh."""

    type: Literal["flush"]


class Interrupt(_Message):
    """Barge-in: queued audio and unsent frames are dropped, then `interrupted`."""

    type: Literal["interrupt"]


class Ping(_Message):
    type: Literal["ping"]
    id: int | str | None = None


class End(_Message):
    """Close the session (code 1000) without waiting for more frames."""

    type: Literal["end"]


ClientMessage = Annotated[
    Start | Audio | Flush | Interrupt | Ping | End, Field(discriminator="type")
]
CLIENT_MESSAGE = TypeAdapter(ClientMessage)


class Ready(_Message):
    type: Literal["ready"] = "ready"
    session_id: str
    width: int
    height: int
    fps: float
    protocol: Literal["binary", "json"]
    mime_type: str | None = Field(
        None, description='webm output: the MediaSource type, e.g. video/webm; codecs="vp9,opus"'
    )


# The fields a frame message (`frame`, `patch`) has in both forms.
FrameIndex = Annotated[int, Field(description="frame number within the utterance, from 0")]
FramePts = Annotated[int, Field(description="presentation time in the utterance, ms")]
ProcessingMs = Annotated[
    float,
    Field(description="from the audio completing it to its encoding (before any wait to be sent)"),
]
IdleFlag = Annotated[
    bool,
    Field(
        description="an idle frame (the avatar's own): index counts the session's idle "
        "frames, pts_ms is from `ready`"
    ),
]


class Frame(_Message):
    """A frame in the JSON protocol (the binary protocol sends FRAME_HEADER + JPEG)."""

    type: Literal["frame"] = "frame"
    index: FrameIndex
    pts_ms: FramePts
    processing_ms: ProcessingMs
    data: str = Field(description="base64 JPEG")
    idle: IdleFlag = False


class WebmChunk(_Message):
    """webm output in the JSON protocol (the binary protocol: header type 3 + the bytes)."""

    type: Literal["webm"] = "webm"
    frames: int = Field(description="video frames in the stream after this chunk")
    pts_ms: int = Field(description="media time those frames reach, ms")
    data: str = Field(description="base64 WebM bytes: append them in order")


class Base(_Message):
    """patch output in the JSON protocol: a frame of the avatar (binary: type 4)."""

    type: Literal["base"] = "base"
    index: int = Field(description="the avatar frame; patches name it as their base")
    data: str = Field(description="base64 JPEG")


class Patch(_Message):
    """patch output in the JSON protocol: a frame as a patch over a base frame (binary:
    types 5 and 6)."""

    type: Literal["patch"] = "patch"
    index: FrameIndex
    pts_ms: FramePts
    processing_ms: ProcessingMs
    base: int = Field(description="the base frame it is drawn over")
    x: int
    y: int
    width: int = Field(description="0: no JPEG, the base frame as it is")
    height: int
    data: str = Field(description="base64 JPEG of the rectangle (empty when width is 0)")
    idle: IdleFlag = False


class Pong(_Message):
    type: Literal["pong"] = "pong"
    id: int | str | None = None


class Flushed(_Message):
    type: Literal["flushed"] = "flushed"
    frames: int = Field(description="frames of the utterance just ended")


class Interrupted(_Message):
    type: Literal["interrupted"] = "interrupted"
    dropped_frames: int


class Dropped(_Message):
    """Frames a slow reader missed (the oldest waiting ones were dropped)."""

    type: Literal["dropped"] = "dropped"
    count: int = Field(description="dropped since the last `dropped` message")
    total: int


class ErrorMessage(_Message):
    type: Literal["error"] = "error"
    code: str
    message: str


ServerMessage = Annotated[
    Ready
    | Frame
    | WebmChunk
    | Base
    | Patch
    | Pong
    | Flushed
    | Interrupted
    | Dropped
    | ErrorMessage,
    Field(discriminator="type"),
]


def pack_frame(index: int, pts_ms: int, payload: bytes, kind: int = FRAME_TYPE_JPEG) -> bytes:
    """A binary message: FRAME_HEADER then the payload (a JPEG, or WebM bytes)."""
    crc = zlib.crc32(payload) & 0xFFFFFFFF
    header = FRAME_HEADER.pack(FRAME_MAGIC, kind, 0, 0, index, pts_ms, len(payload), crc)
    return header + payload


def unpack_message(message: bytes) -> tuple[int, int, int, bytes]:
    """(type, index, pts_ms, payload) of a binary message; ValueError if it is malformed."""
    if len(message) < FRAME_HEADER.size:
        raise ValueError("shorter than the frame header")
    magic, kind, _, _, index, pts_ms, length, crc = FRAME_HEADER.unpack_from(message)
    payload = message[FRAME_HEADER.size :]
    if magic != FRAME_MAGIC or kind not in FRAME_TYPES or length != len(payload):
        raise ValueError("bad magic, type or length")
    if zlib.crc32(payload) & 0xFFFFFFFF != crc:
        raise ValueError("CRC mismatch")
    return kind, index, pts_ms, payload


def pack_patch(base: int, rect: tuple[int, int, int, int], jpeg: bytes) -> bytes:
    """The payload of a patch message: PATCH_HEADER (base, x, y, width, height) + JPEG."""
    return PATCH_HEADER.pack(base, *rect) + jpeg


def unpack_patch(payload: bytes) -> tuple[int, tuple[int, int, int, int], bytes]:
    """(base, (x, y, width, height), jpeg) of a patch payload; ValueError if malformed."""
    if len(payload) < PATCH_HEADER.size:
        raise ValueError("shorter than the patch header")
    base, *rect = PATCH_HEADER.unpack_from(payload)
    jpeg = payload[PATCH_HEADER.size :]
    if (rect[2] == 0) != (not jpeg):
        raise ValueError("a patch has a JPEG exactly when its width is not 0")
    return base, (rect[0], rect[1], rect[2], rect[3]), jpeg


def unpack_frame(message: bytes) -> tuple[int, int, bytes]:
    """(index, pts_ms, jpeg) of a binary speech-frame message; ValueError otherwise."""
    kind, index, pts_ms, payload = unpack_message(message)
    if kind != FRAME_TYPE_JPEG:
        raise ValueError(f"bad magic, type or length: type {kind}")
    return index, pts_ms, payload
