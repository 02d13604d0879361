"""Media helpers shared by the tests: synthetic images, headers and clips, and
`probe_video`, which decodes a result and reports codecs, sizes, frame count and durations."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np

from lipsync.media.errors import UnsupportedMediaError
from lipsync.media.video import reading_video, stream_fps

BIG = 10**8  # a pixel/frame limit no test input reaches
BLUE = (255, 0, 0)  # BGR
RED = (0, 0, 255)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth, strongly coloured (H, W, 3) uint8 BGR test image (gradients + blurred noise)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            40 + 180 * xx / max(width - 1, 1),
            60 + 150 * yy / max(height - 1, 1),
            200 - 120 * (xx + yy) / max(width + height - 2, 1),
        ],
        axis=2,
    )
    noise = np.random.default_rng(seed).normal(0, 40, (height, width, 3)).astype(np.float32)
    image += cv2.GaussianBlur(noise, (0, 0), 4)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_image(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG's headers and no pixel data: signature, IHDR (correct CRC) and an empty IDAT
    (a header reader reads the chunks up to the first IDAT)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"")


def jpeg_header_only(width: int, height: int) -> bytes:
    """SOI + JFIF APP0 + SOF0 (3 components), no tables or scan."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
    sof += b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof


def make_clip(
    fmt: str,
    codec: str,
    *,
    num_frames: int = 12,
    width: int = 64,
    height: int = 48,
    fps: Fraction = Fraction(25),
) -> tuple[bytes, list[np.ndarray]]:
    """Encode a synthetic clip with PyAV directly (independent of lipsync.media.encode)."""
    frames = [np.roll(smooth_image(height, width), 3 * i, axis=1).copy() for i in range(num_frames)]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue(), frames


def probe_video(data: bytes) -> dict[str, Any]:
    """Decode every frame/sample of a video file and describe it.

    Keys: format, video_codec, width, height, fps (stream average rate), num_frames
    (decoded), video_duration (first frame start to last frame end, s), audio_codec,
    audio_sample_rate, audio_channels, audio_duration (decoded samples / rate, s); audio
    keys are None without an audio stream. Raises UnsupportedMediaError if unreadable.
    """
    with reading_video(data) as container:
        return _probe(container)


def _probe(container: av.container.InputContainer) -> dict[str, Any]:
    if not container.streams.video:
        raise UnsupportedMediaError("no video stream")
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    fps = stream_fps(video)
    num_frames = audio_samples = 0
    start = end = None
    for frame in container.decode(*([video] if audio is None else [video, audio])):
        if isinstance(frame, av.AudioFrame):
            audio_samples += frame.samples
            continue
        num_frames += 1
        if frame.pts is None or frame.time_base is None:
            continue
        begin = float(frame.pts * frame.time_base)
        length = float(frame.duration * frame.time_base) if frame.duration else 1 / (fps or 25)
        start = begin if start is None else min(start, begin)
        end = begin + length if end is None else max(end, begin + length)
    ctx = video.codec_context
    return {
        "format": container.format.name,
        "video_codec": ctx.name,
        "width": ctx.width,
        "height": ctx.height,
        "fps": fps,
        "num_frames": num_frames,
        "video_duration": None if start is None else end - start,
        "audio_codec": None if audio is None else audio.codec_context.name,
        "audio_sample_rate": None if audio is None else audio.codec_context.sample_rate,
        "audio_channels": None if audio is None else audio.codec_context.channels,
        "audio_duration": (
            None if audio is None else audio_samples / audio.codec_context.sample_rate
        ),
    }
