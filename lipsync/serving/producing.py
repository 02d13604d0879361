"""Producing the video of a request: the whole file or its chunks, and its metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lipsync import generation
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.media.encode_options import ContainerName, EncodeOptions
from lipsync.serving.faces import Face

R = TypeVar("R")


def produce(
    make: Callable[..., R],
    engine: Wav2LipInferenceEngine,
    face: Face,
    speech: generation.Speech,
    container: ContainerName,
    timings: dict[str, float] | None = None,
    **options: Any,
) -> R:
    """`make` of `speech` on `face` in `container`: `generation.generate` (the whole video,
    a GenerationResult) or `generation.generate_stream` (its chunks while it is made, a
    GenerationStream: checked and ready, nothing generated yet). `options`: theirs
    (`check`, `include_audio`, `on_frames`)."""
    encode = EncodeOptions(container=container)
    return make(engine, face.avatar.prepared, speech, face.options, encode, timings, **options)


def video_meta(
    video: generation.GenerationResult | generation.GenerationStream, avatar_id: str
) -> dict[str, Any]:
    """A video's metadata (the fields of the API's `VideoMeta`): of a finished video, or of
    a stream before its first frame (then without `timings_ms`)."""
    if isinstance(video, generation.GenerationStream):
        mime_type, num_frames, duration = video.mime_type, video.num_frames, video.duration
        width, height, timings = video.width, video.height, None
    else:
        encoded = video.video
        mime_type, num_frames, duration = encoded.mime_type, encoded.num_frames, encoded.duration
        width, height, timings = encoded.width, encoded.height, video.timings_ms
    meta = {
        "mime_type": mime_type,
        "num_frames": num_frames,
        "duration": round(duration, 3),
        "fps": video.fps,
        "width": width,
        "height": height,
        "avatar_id": avatar_id,
        "silent_frames": video.silent_frames,
    }
    return meta if timings is None else {**meta, "timings_ms": timings}
