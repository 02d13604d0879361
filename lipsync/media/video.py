"""Decoding of uploaded face videos (MP4/MOV, WebM/MKV, AVI) from memory with PyAV.

Oversized or overlong videos are refused from the stream headers first and again while
decoding. Frames come out as (H, W, 3) uint8 BGR, rotated upright.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from lipsync.errors import ErrorCode
from lipsync.media.checks import check_limit
from lipsync.media.errors import MediaError, MediaTooLargeError, UnsupportedMediaError
from lipsync.media.sniff import video_demuxer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedVideo:
    """Decoded frames: `frames` are (height, width, 3) uint8 BGR, upright (rotation
    metadata applied); `fps` is the stream's average frame rate."""

    frames: list[np.ndarray]
    fps: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("frames must not be empty")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be positive and finite, got {self.fps!r}")

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def duration(self) -> float:
        """num_frames / fps, in seconds."""
        return len(self.frames) / self.fps


def _refuse_io_open(url: str, flags: int, options: dict[str, Any]) -> Any:
    """io_open hook for demuxing: uploads may not make FFmpeg open other resources
    (e.g. QuickTime external data references)."""
    raise PermissionError(f"refusing to open {url!r} referenced by the uploaded media")


def _open_video(data: bytes) -> av.container.InputContainer:
    demuxer = video_demuxer(data)
    if demuxer is None:
        raise UnsupportedMediaError("not an MP4/MOV, WebM/MKV or AVI video")
    try:
        return av.open(io.BytesIO(data), mode="r", format=demuxer, io_open=_refuse_io_open)
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        logger.debug("cannot open %s video: %s", demuxer, exc)
        raise UnsupportedMediaError(f"unreadable {demuxer} video") from exc


@contextlib.contextmanager
def reading_video(data: bytes) -> Iterator[av.container.InputContainer]:
    """An open input container for a sniffed video; FFmpeg's errors while reading it
    become UnsupportedMediaError."""
    container = _open_video(data)
    try:
        yield container
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        logger.debug("cannot decode video: %s", exc)
        raise UnsupportedMediaError("corrupt or undecodable video") from exc
    finally:
        container.close()


def stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    """The stream's average frame rate, else its guessed or base rate; None if none is
    positive and finite."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0 and math.isfinite(float(rate)):
            return float(rate)
    return None


def _declared_duration(container: av.container.InputContainer, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply display-matrix rotation (degrees counter-clockwise) in multiples of 90."""
    quarter_turns = round(rotation / 90) % 4
    if quarter_turns == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, quarter_turns))


def decode_video(
    data: bytes, *, max_frames: int, max_pixels: int, max_duration_s: float
) -> DecodedVideo:
    """Decode the first video stream of an MP4/MOV, WebM/MKV or AVI file held in memory.

    Limits are checked on the stream header (frame size, declared frame count and
    duration) before decoding, and again while decoding, so an oversized or overlong
    upload is refused early with MediaTooLargeError ("video_too_large" for pixels per
    frame, "video_too_long" for frames/duration). Frames are converted to BGR at the size
    of the first frame and rotated upright per the display matrix. Anything unreadable
    raises UnsupportedMediaError.
    """
    check_limit("max_frames", max_frames, integer=True)
    check_limit("max_pixels", max_pixels, integer=True)
    check_limit("max_duration_s", max_duration_s)
    with reading_video(data) as container:
        return _decode_frames(container, max_frames, max_pixels, max_duration_s)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaTooLargeError(
            f"video frames are {width}x{height} = {width * height} pixels, limit is {max_pixels}",
            code=ErrorCode.VIDEO_TOO_LARGE,
        )


def _too_long(what: str) -> MediaTooLargeError:
    return MediaTooLargeError(f"video is too long: {what}", code=ErrorCode.VIDEO_TOO_LONG)


def _decode_frames(
    container: av.container.InputContainer,
    max_frames: int,
    max_pixels: int,
    max_duration_s: float,
) -> DecodedVideo:
    if not container.streams.video:
        raise UnsupportedMediaError("no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None:
        raise UnsupportedMediaError("the video codec is not supported")
    if ctx.width and ctx.height:
        _check_pixels(ctx.width, ctx.height, max_pixels)
    if stream.frames and stream.frames > max_frames:
        raise _too_long(f"{stream.frames} frames declared, limit is {max_frames}")
    declared = _declared_duration(container, stream)
    if declared is not None and declared > max_duration_s:
        raise _too_long(f"{declared:.2f} s declared, limit is {max_duration_s:.2f} s")
    stream.thread_type = "AUTO"

    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    first_time: float | None = None
    for frame in container.decode(stream):
        if len(frames) >= max_frames:
            raise _too_long(f"more than {max_frames} frames")
        _check_pixels(frame.width, frame.height, max_pixels)
        if frame.time is not None:
            first_time = frame.time if first_time is None else first_time
            if frame.time - first_time > max_duration_s:
                raise _too_long(f"frames past {max_duration_s:.2f} s")
        if size is None:
            size = (frame.width, frame.height)
        image = frame.to_ndarray(format="bgr24", width=size[0], height=size[1])
        frames.append(_upright(image, frame.rotation))
    if not frames:
        raise UnsupportedMediaError("video has no decodable frames")
    fps = stream_fps(stream)
    if fps is None:
        fps = len(frames) / declared if declared else 25.0
    height, width = frames[0].shape[:2]
    logger.debug("decoded %d frames %dx%d at %.3f fps", len(frames), width, height, fps)
    return DecodedVideo(frames=frames, fps=fps, width=width, height=height)
