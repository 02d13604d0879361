"""Helpers shared by the tests: paths and constants, request and media builders, decoding,
and the real server. Fixtures live in conftest.py; tests import plain helpers from here."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import requests
import soundfile as sf

from lipsync.media.errors import UnsupportedMediaError
from lipsync.media.video import reading_video, stream_fps
from tools import local_server
from tools.local_server import LocalServer, stop_server

__all__ = ["stop_server"]  # re-exported for tests that start their own servers

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "test_assets"
SEED = 0
# The test photo's face as (top, bottom, left, right), read off the image by eye.
FACE_BOX = (50, 180, 165, 280)


# Every project module the converter imports (tests/test_convert.py checks that the list is
# complete): an edit to any of them is a new cache key, so the test models are converted again.
CONVERTER_SOURCES = (
    "lipsync/__init__.py",
    "lipsync/util.py",
    "lipsync/conversion/__init__.py",
    "lipsync/conversion/checkpoint_download.py",
    "lipsync/conversion/checkpoints.py",
    "lipsync/conversion/convert.py",
    "lipsync/conversion/ir_export.py",
    "lipsync/conversion/random_init.py",
    "lipsync/networks/__init__.py",
    "lipsync/networks/s3fd.py",
    "lipsync/networks/wav2lip.py",
)


# -- requests ------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def assert_error(response, status: int, code: str, field: str | None = None):
    assert response.status_code == status, response.get_data(as_text=True)
    payload = response.get_json()
    assert payload["success"] is False
    assert payload["error"]["code"] == code
    assert payload["error"]["message"]
    if field:
        assert payload["error"]["field"] == field
        assert field in payload["error"]["message"]


# -- media ---------------------------------------------------------------------------------

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


def decode(video: bytes) -> dict:
    """Decode every frame and the audio with PyAV."""
    with av.open(io.BytesIO(video)) as container:
        vstream = container.streams.video[0]
        astream = container.streams.audio[0]
        info = {
            "video_codec": vstream.codec_context.name,
            "audio_codec": astream.codec_context.name,
            "fps": float(vstream.average_rate),
            "frames": [],
            "audio_samples": 0,
            "audio_rate": astream.rate,
        }
        for frame in container.decode(vstream, astream):
            if isinstance(frame, av.VideoFrame):
                info["frames"].append(frame.to_ndarray(format="bgr24"))
            else:
                info["audio_samples"] += frame.samples
    return info


# -- models and servers --------------------------------------------------------------------


class LiveServer(LocalServer):
    """The server with `requests` helpers for tests."""

    def get(self, path: str, **kwargs):
        return requests.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, **kwargs):
        return requests.post(self.url + path, timeout=300, **kwargs)


def generator_from(xml: Path, precision: str = "f32"):
    """A Wav2LipGenerator (whole network, face encoder, decoder) compiled from one IR."""
    import openvino as ov

    from lipsync.runtime.core import CompiledNetwork
    from lipsync.runtime.wav2lip import Wav2LipGenerator

    core = ov.Core()
    return Wav2LipGenerator.from_ir(
        lambda make: CompiledNetwork(core, xml, device="CPU", precision=precision, preprocess=make)
    )


def start_server(models_dir: Path, work_dir: Path, **env: str) -> LiveServer:
    server = local_server.start_server(models_dir, work_dir, **env)
    return LiveServer(server.url, server.process, server.tmpdir, server.log_path)
