"""Tests for lipsync.media.video: decoding face videos within frame, pixel and duration limits."""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest
from helpers import (
    BIG,
    encode_image,
    make_clip,
    smooth_image,
)

from lipsync.errors import ErrorCode
from lipsync.media import video as media_video
from lipsync.media.errors import MediaTooLargeError, UnsupportedMediaError
from lipsync.media.video import DecodedVideo, decode_video

# --------------------------------------------------------------------------- decode_video


@pytest.mark.parametrize(
    ("fmt", "codec"),
    [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4"), ("matroska", "libx264")],
)
def test_decode_video(fmt: str, codec: str) -> None:
    data, frames = make_clip(fmt, codec)
    video = decode_video(data, max_frames=12, max_pixels=64 * 48, max_duration_s=0.5)
    assert isinstance(video, DecodedVideo)
    assert video.num_frames == 12
    assert len(video.frames) == 12
    assert video.fps == pytest.approx(25.0)
    assert video.duration == pytest.approx(0.48)
    assert (video.width, video.height) == (64, 48)
    for decoded, original in zip(video.frames, frames, strict=True):
        assert decoded.shape == (48, 64, 3)
        assert decoded.dtype == np.uint8
        assert np.abs(decoded.astype(np.float32) - original).mean() < 12


def test_decode_video_ntsc_rate() -> None:
    data, _ = make_clip("webm", "libvpx-vp9", num_frames=6, fps=Fraction(30_000, 1001))
    video = decode_video(data, max_frames=6, max_pixels=BIG, max_duration_s=1)
    assert video.num_frames == 6
    assert video.fps == pytest.approx(29.97, abs=0.01)


def test_decode_video_too_many_frames_declared() -> None:
    data, _ = make_clip("mp4", "libx264")  # mp4 declares its frame count
    with pytest.raises(MediaTooLargeError) as info:
        decode_video(data, max_frames=11, max_pixels=BIG, max_duration_s=60)
    assert info.value.code is ErrorCode.VIDEO_TOO_LONG


def test_decode_video_too_many_frames_while_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = make_clip("webm", "libvpx-vp9")  # webm declares no frame count
    decoded = []
    original = media_video._upright

    def spy(image: np.ndarray, rotation: int) -> np.ndarray:
        decoded.append(1)
        return original(image, rotation)

    monkeypatch.setattr(media_video, "_upright", spy)
    with pytest.raises(MediaTooLargeError) as info:
        decode_video(data, max_frames=5, max_pixels=BIG, max_duration_s=60)
    assert info.value.code is ErrorCode.VIDEO_TOO_LONG
    assert len(decoded) == 5  # stopped right after the limit, not after decoding all


def test_decode_video_too_long() -> None:
    data, _ = make_clip("webm", "libvpx-vp9")
    with pytest.raises(MediaTooLargeError) as info:
        decode_video(data, max_frames=100, max_pixels=BIG, max_duration_s=0.2)
    assert info.value.code is ErrorCode.VIDEO_TOO_LONG


def test_decode_video_too_many_pixels() -> None:
    data, _ = make_clip("mp4", "libx264")
    with pytest.raises(MediaTooLargeError) as info:
        decode_video(data, max_frames=100, max_pixels=64 * 48 - 1, max_duration_s=60)
    assert info.value.code is ErrorCode.VIDEO_TOO_LARGE


def test_decode_video_applies_rotation_metadata() -> None:
    data, frames = make_clip("mp4", "libx264", num_frames=3)
    # Patch the track header matrix to a 90 degree clockwise display rotation (phone video).
    tkhd = data.find(b"tkhd")
    assert data[tkhd + 4] == 0  # version 0 box: matrix at offset 40 of the payload
    matrix = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 48 << 16, 0, 0x40000000)
    rotated = data[: tkhd + 44] + matrix + data[tkhd + 80 :]
    video = decode_video(rotated, max_frames=3, max_pixels=BIG, max_duration_s=1)
    assert (video.width, video.height) == (48, 64)
    assert video.frames[0].shape == (64, 48, 3)
    expected = np.rot90(frames[0], -1)  # clockwise
    assert np.abs(video.frames[0].astype(np.float32) - expected).mean() < 12


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00\x20ftypisom" + b"\x00" * 200,
        b"\x1a\x45\xdf\xa3" + np.random.default_rng(3).bytes(3000),
        np.random.default_rng(4).bytes(3000),
        b"RIFF\x00\x00\x00\x00AVI LIST" + b"\x00" * 64,
    ],
    ids=["empty", "ftyp-zeros", "ebml-random", "random", "avi-zeros"],
)
def test_decode_video_garbage(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaError) as info:
        decode_video(data, max_frames=100, max_pixels=BIG, max_duration_s=60)
    assert info.value.code is ErrorCode.UNSUPPORTED_MEDIA


def test_decode_video_truncated_mp4() -> None:
    data, _ = make_clip("mp4", "libx264")  # moov at the end: cut it off
    with pytest.raises(UnsupportedMediaError):
        decode_video(data[: len(data) // 2], max_frames=100, max_pixels=BIG, max_duration_s=60)


def test_decode_video_rejects_image() -> None:
    with pytest.raises(UnsupportedMediaError):
        decode_video(
            encode_image(".png", smooth_image(8, 8)),
            max_frames=100,
            max_pixels=BIG,
            max_duration_s=60,
        )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_frames": 0}, "max_frames"),
        ({"max_pixels": -1}, "max_pixels"),
        ({"max_duration_s": float("nan")}, "max_duration_s"),
        ({"max_duration_s": 0}, "max_duration_s"),
    ],
)
def test_decode_video_validates_limits(kwargs: dict[str, float], name: str) -> None:
    limits = {"max_frames": 10, "max_pixels": BIG, "max_duration_s": 10.0} | kwargs
    with pytest.raises(ValueError, match=name):
        decode_video(b"\x1a\x45\xdf\xa3", **limits)  # type: ignore[arg-type]
