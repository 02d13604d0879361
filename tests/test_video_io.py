"""Tests for video_io: header sniffing, image/video decoding limits, in-memory encoding."""

from __future__ import annotations

import gc
import io
import pathlib
import struct
import weakref
import zlib
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from lipsync.media import video_io
from lipsync.media.video_io import (
    DecodedVideo,
    EncodedVideo,
    EncodeOptions,
    MediaError,
    MediaTooLargeError,
    UnsupportedMediaError,
    VideoEncoder,
    bgr_to_i420,
    decode_image,
    decode_video,
    encode_video,
    frame_rate,
    is_image,
    is_video,
    probe_video,
    read_image_size,
    sniff_media,
)

BIG = 10**8
BLUE = (255, 0, 0)  # BGR
RED = (0, 0, 255)


# --------------------------------------------------------------------------- helpers


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
    """A valid PNG signature + IHDR (correct CRC) and nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


def jpeg_header_only(width: int, height: int) -> bytes:
    """SOI + JFIF APP0 + SOF0 (3 components), no tables or scan."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
    sof += b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof


def sine(seconds: float, sample_rate: int = 16_000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_clip(
    fmt: str,
    codec: str,
    *,
    num_frames: int = 12,
    width: int = 64,
    height: int = 48,
    fps: Fraction = Fraction(25),
) -> tuple[bytes, list[np.ndarray]]:
    """Encode a synthetic clip with PyAV directly (independent of video_io's encoder)."""
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


def top_level_boxes(data: bytes) -> list[bytes]:
    """Types of the top-level ISO-BMFF boxes, in file order."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
        elif size == 0:
            size = len(data) - pos
        assert size >= 8
        boxes.append(kind)
        pos += size
    return boxes


def assert_audio_duration(container: str, measured: float, expected: float) -> None:
    """Within one 25 fps frame; tighter per codec: Opus in WebM is trimmed to the exact
    sample count, AAC in MP4 may add up to one 1024-sample frame of tail padding."""
    assert measured == pytest.approx(expected, abs=0.04)
    if container == "webm":
        assert measured == pytest.approx(expected, abs=1e-3)
    else:
        assert expected - 1e-3 <= measured <= expected + 1024 / 48_000 + 1e-3


def decode_first_frame(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="bgr24")


def decode_audio(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(chunks)


# --------------------------------------------------------------------------- errors, sniffing


def test_error_classes_and_codes() -> None:
    assert issubclass(MediaError, ValueError)
    assert issubclass(UnsupportedMediaError, MediaError)
    assert issubclass(MediaTooLargeError, MediaError)
    assert UnsupportedMediaError("x").code == "unsupported_media"
    assert MediaTooLargeError("x", code="video_too_long").code == "video_too_long"
    assert MediaTooLargeError("x").code == "media_too_large"
    assert MediaError("x").code == "invalid_media"
    assert str(MediaTooLargeError("too big", code="image_too_large")) == "too big"


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".gif", ".bmp"])
def test_sniff_images(ext: str) -> None:
    data = encode_image(ext, smooth_image(16, 20))
    assert sniff_media(data) == "image"
    assert is_image(data)
    assert not is_video(data)


@pytest.mark.parametrize(
    ("fmt", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4")]
)
def test_sniff_videos(fmt: str, codec: str) -> None:
    data, _ = make_clip(fmt, codec, num_frames=2)
    assert sniff_media(data) == "video"
    assert is_video(data)
    assert not is_image(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world, not media at all",
        bytes(range(256)),
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",  # HEIF still image
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1",  # AVIF still image
        b"BM\x00\x00",  # too short for a BMP header
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
    ],
)
def test_sniff_rejects(data: bytes) -> None:
    assert sniff_media(data) is None
    assert not is_image(data)
    assert not is_video(data)


def test_sniff_magic_bytes_only() -> None:
    assert sniff_media(b"\x00\x00\x00\x20ftypisom" + b"\x00" * 20) == "video"
    assert sniff_media(b"\x00\x00\x00\x08moov") == "video"
    assert sniff_media(b"\x1a\x45\xdf\xa3" + b"\x00" * 8) == "video"
    assert sniff_media(b"RIFF\x00\x00\x00\x00AVI LIST") == "video"
    assert sniff_media(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image"
    assert sniff_media(b"GIF89a\x01\x00\x01\x00") == "image"


# --------------------------------------------------------------------------- decode_image


@pytest.mark.parametrize(
    ("ext", "params", "tolerance"),
    [
        (".png", [], 0.0),
        (".bmp", [], 0.0),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], 0.0),  # lossless (VP8L)
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 95], 4.0),  # lossy (VP8)
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95], 3.0),  # baseline (SOF0)
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, 1], 3.0),  # SOF2
    ],
)
def test_decode_image_round_trip(ext: str, params: list[int], tolerance: float) -> None:
    image = smooth_image(37, 53)
    data = encode_image(ext, image, params)
    assert read_image_size(data) == (53, 37)
    out = decode_image(data, max_pixels=BIG)
    assert out.shape == (37, 53, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    diff = np.abs(out.astype(np.float32) - image).mean()
    assert diff <= tolerance, diff
    # colour order: the red channel must stay the red channel
    assert np.abs(out[..., 2].astype(np.float32) - image[..., 2]).mean() <= tolerance + 1


def test_decode_gif() -> None:
    image = np.zeros((24, 32, 3), np.uint8)
    image[:12, :16], image[:12, 16:], image[12:, :16], image[12:, 16:] = BLUE, RED, 255, 0
    data = encode_image(".gif", image)
    assert read_image_size(data) == (32, 24)
    out = decode_image(data, max_pixels=BIG)
    assert out.shape == (24, 32, 3)
    # OpenCV's GIF encoder quantises/dithers the palette; compare quadrant centres
    for y, x in [(5, 8), (5, 24), (18, 8), (18, 24)]:
        assert np.abs(out[y, x].astype(int) - image[y, x]).max() <= 8
    assert np.abs(out.astype(np.float32) - image).mean() < 4


def test_decode_grayscale_png_is_bgr() -> None:
    gray = smooth_image(20, 30)[..., 1].copy()
    out = decode_image(encode_image(".png", gray), max_pixels=BIG)
    assert out.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


@pytest.mark.parametrize(
    ("ext", "params"), [(".png", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])]
)
def test_decode_alpha_image_drops_alpha(ext: str, params: list[int]) -> None:
    bgr = smooth_image(20, 30)
    # alpha >= 1: lossless WebP may zero the colour of fully transparent pixels
    alpha = np.linspace(1, 255, 30 * 20).reshape(20, 30).astype(np.uint8)
    out = decode_image(encode_image(ext, np.dstack([bgr, alpha]), params), max_pixels=BIG)
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, bgr)


def test_decode_webp_vp8x_with_alpha() -> None:
    bgra = np.dstack([smooth_image(20, 30), np.full((20, 30), 200, np.uint8)])
    data = encode_image(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 90])
    assert data[12:16] == b"VP8X"
    assert read_image_size(data) == (30, 20)
    assert decode_image(data, max_pixels=BIG).shape == (20, 30, 3)


def test_decode_top_down_bmp() -> None:
    image = smooth_image(6, 8)
    data = bytearray(encode_image(".bmp", image))
    # Flip to a top-down BMP: negative height and rows stored first-to-last.
    offset = struct.unpack_from("<I", data, 10)[0]
    stride = (8 * 3 + 3) // 4 * 4
    rows = [bytes(data[offset + r * stride : offset + (r + 1) * stride]) for r in range(6)]
    data[offset : offset + 6 * stride] = b"".join(reversed(rows))
    struct.pack_into("<i", data, 22, -6)
    assert read_image_size(bytes(data)) == (8, 6)
    np.testing.assert_array_equal(decode_image(bytes(data), max_pixels=BIG), image)


def test_decode_image_exact_pixel_limit() -> None:
    data = encode_image(".png", smooth_image(10, 10))
    assert decode_image(data, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(MediaTooLargeError) as info:
        decode_image(data, max_pixels=99)
    assert info.value.code == "image_too_large"


@pytest.mark.parametrize(
    "data",
    [
        png_header_only(20_000, 20_000),
        jpeg_header_only(60_000, 60_000),
        b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00"
        + (16_000).to_bytes(3, "little")
        + (16_000).to_bytes(3, "little"),
        b"GIF89a" + struct.pack("<HH", 65_535, 65_535) + b"\x00\x00\x00",
        b"BM" + b"\x00" * 12 + struct.pack("<Iii", 40, 30_000, -30_000) + b"\x00" * 28,
    ],
    ids=["png", "jpeg", "webp", "gif", "bmp"],
)
def test_decompression_bomb_refused_from_header(data: bytes) -> None:
    # The data is a header alone: only a refusal from the header can give this code.
    with pytest.raises(MediaTooLargeError) as info:
        decode_image(data, max_pixels=4096 * 4096)
    assert info.value.code == "image_too_large"


def test_png_header_parser_matches_crafted_header() -> None:
    assert read_image_size(png_header_only(20_000, 20_000)) == (20_000, 20_000)
    assert read_image_size(jpeg_header_only(640, 480)) == (640, 480)


def test_jpeg_parser_skips_segments_before_sof() -> None:
    image = smooth_image(33, 45)
    data = encode_image(".jpg", image)
    # Insert an APP1 segment whose payload contains fake SOF bytes before the real SOF.
    fake = b"Exif\x00\x00" + b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff" + b"\x00" * 20
    app1 = b"\xff\xe1" + struct.pack(">H", len(fake) + 2) + fake
    data = data[:2] + app1 + data[2:]
    assert read_image_size(data) == (45, 33)
    assert decode_image(data, max_pixels=45 * 33).shape == (33, 45, 3)


def test_jpeg_parser_ignores_dht_before_sof() -> None:
    data = encode_image(".jpg", smooth_image(33, 45))
    # Copy the first Huffman table segment (FFC4, not a SOF) in front of everything else.
    start = data.find(b"\xff\xc4")
    length = struct.unpack_from(">H", data, start + 2)[0]
    data = data[:2] + data[start : start + 2 + length] + data[2:]
    assert read_image_size(data) == (45, 33)
    assert decode_image(data, max_pixels=45 * 33).shape == (33, 45, 3)


def test_jpeg_completeness_check() -> None:
    data = encode_image(".jpg", smooth_image(64, 64))
    assert video_io._jpeg_is_complete(data)
    assert video_io._jpeg_is_complete(data + b"trailing bytes after EOI")
    assert not video_io._jpeg_is_complete(data[:-2])
    assert not video_io._jpeg_is_complete(data[: data.find(b"\xff\xda") + 100])


@pytest.mark.parametrize("data", [png_header_only(0, 10), jpeg_header_only(10, 0)])
def test_zero_size_image_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaError) as info:
        decode_image(data, max_pixels=BIG)
    assert info.value.code == "unsupported_media"


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".gif"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_image_is_unsupported(ext: str, fraction: float) -> None:
    data = encode_image(ext, smooth_image(64, 64))
    with pytest.raises(UnsupportedMediaError):
        decode_image(data[: int(len(data) * fraction)], max_pixels=BIG)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG",
        b"\xff\xd8\xff",
        np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).bytes(4000),
        png_header_only(64, 64) + png_chunk(b"IDAT", b"not zlib data") + png_chunk(b"IEND", b""),
        jpeg_header_only(64, 64) + b"\xff\xda\x00\x08garbage\xff\xd9",
        b"II*\x00" + b"\x00" * 100,  # TIFF: cv2 could read it, but we have no header check
    ],
    ids=[
        "empty",
        "png-sig",
        "jpeg-soi",
        "random",
        "png-random",
        "png-bad-idat",
        "jpeg-bad",
        "tiff",
    ],
)
def test_corrupt_or_unknown_image_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaError) as info:
        decode_image(data, max_pixels=BIG)
    assert info.value.code == "unsupported_media"


def test_video_bytes_are_not_an_image() -> None:
    data, _ = make_clip("mp4", "libx264", num_frames=2)
    with pytest.raises(UnsupportedMediaError):
        decode_image(data, max_pixels=BIG)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, None])
def test_decode_image_validates_limit(bad: object) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(encode_image(".png", smooth_image(4, 4)), max_pixels=bad)  # type: ignore[arg-type]


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
    assert info.value.code == "video_too_long"


def test_decode_video_too_many_frames_while_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = make_clip("webm", "libvpx-vp9")  # webm declares no frame count
    decoded = []
    original = video_io._upright

    def spy(image: np.ndarray, rotation: int) -> np.ndarray:
        decoded.append(1)
        return original(image, rotation)

    monkeypatch.setattr(video_io, "_upright", spy)
    with pytest.raises(MediaTooLargeError) as info:
        decode_video(data, max_frames=5, max_pixels=BIG, max_duration_s=60)
    assert info.value.code == "video_too_long"
    assert len(decoded) == 5  # stopped right after the limit, not after decoding all


def test_decode_video_too_long() -> None:
    data, _ = make_clip("webm", "libvpx-vp9")
    with pytest.raises(MediaTooLargeError) as info:
        decode_video(data, max_frames=100, max_pixels=BIG, max_duration_s=0.2)
    assert info.value.code == "video_too_long"


def test_decode_video_too_many_pixels() -> None:
    data, _ = make_clip("mp4", "libx264")
    with pytest.raises(MediaTooLargeError) as info:
        decode_video(data, max_frames=100, max_pixels=64 * 48 - 1, max_duration_s=60)
    assert info.value.code == "video_too_large"


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
    assert info.value.code == "unsupported_media"


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


# --------------------------------------------------------------------------- encode_video

CODECS = {"webm": ("vp9", "opus", "video/webm"), "mp4": ("h264", "aac", "video/mp4")}


@pytest.mark.parametrize("container", ["webm", "mp4"])
def test_encode_with_audio(container: str) -> None:
    frames = [smooth_image(48, 64, seed=i) for i in range(25)]
    audio = sine(1.0)
    out = encode_video(
        frames,
        width=64,
        height=48,
        fps=25,
        audio=audio,
        sample_rate=16_000,
        options=EncodeOptions(container=container),
    )
    video_codec, audio_codec, mime = CODECS[container]
    assert isinstance(out, EncodedVideo)
    assert out.mime_type == mime
    assert (out.num_frames, out.width, out.height) == (25, 64, 48)
    assert out.duration == pytest.approx(1.0)
    assert out.fps == 25.0
    assert out.audio_duration == pytest.approx(1.0)
    info = probe_video(out.data)
    assert info["video_codec"] == video_codec
    assert info["audio_codec"] == audio_codec
    assert (info["width"], info["height"]) == (64, 48)
    assert info["fps"] == pytest.approx(25.0)
    assert info["num_frames"] == 25
    assert info["video_duration"] == pytest.approx(1.0, abs=1e-3)
    assert_audio_duration(container, info["audio_duration"], 1.0)
    assert info["audio_sample_rate"] == 48_000
    assert info["audio_channels"] == 1
    # the audio is the input signal, not silence: RMS of a 0.5 sine is 0.354
    decoded = decode_audio(out.data)
    rms = float(np.sqrt(np.mean(decoded[4800:-4800].astype(np.float64) ** 2)))
    assert rms == pytest.approx(0.354, abs=0.05)


@pytest.mark.parametrize("container", ["webm", "mp4"])
def test_encode_without_audio(container: str) -> None:
    frames = [smooth_image(48, 64)] * 10
    out = encode_video(
        frames, width=64, height=48, fps=25, options=EncodeOptions(container=container)
    )
    info = probe_video(out.data)
    assert info["video_codec"] == CODECS[container][0]
    assert info["audio_codec"] is None
    assert info["audio_duration"] is None
    assert out.audio_duration is None
    assert info["num_frames"] == 10
    assert info["video_duration"] == pytest.approx(0.4, abs=1e-3)


@pytest.mark.parametrize("container", ["webm", "mp4"])
@pytest.mark.parametrize("audio_seconds", [0.5, 2.0])
def test_audio_length_independent_of_video(container: str, audio_seconds: float) -> None:
    out = encode_video(
        [smooth_image(48, 64)] * 25,
        width=64,
        height=48,
        fps=25,
        audio=sine(audio_seconds, 22_050),
        sample_rate=22_050,
        options=EncodeOptions(container=container),
    )
    info = probe_video(out.data)
    assert info["num_frames"] == 25
    assert info["video_duration"] == pytest.approx(1.0, abs=1e-3)
    assert_audio_duration(container, info["audio_duration"], audio_seconds)


@pytest.mark.parametrize("container", ["webm", "mp4"])
def test_encode_ntsc_fps(container: str) -> None:
    frames = (smooth_image(48, 64, seed=i % 3) for i in range(30))
    out = encode_video(
        frames,
        width=64,
        height=48,
        fps=29.97,
        audio=sine(30 / 29.97),
        sample_rate=16_000,
        options=EncodeOptions(container=container),
    )
    assert out.fps == pytest.approx(29.97)
    assert out.duration == pytest.approx(30 / 29.97)
    info = probe_video(out.data)
    assert info["fps"] == pytest.approx(29.97, abs=1e-3)
    assert info["num_frames"] == 30
    # WebM stores millisecond timestamps
    assert info["video_duration"] == pytest.approx(30 / 29.97, abs=2e-3)
    assert_audio_duration(container, info["audio_duration"], round(16_000 * 30 / 29.97) / 16_000)


@pytest.mark.parametrize("container", ["webm", "mp4"])
@pytest.mark.parametrize(("size", "encoded"), [((65, 49), (64, 48)), ((66, 50), (66, 50))])
def test_encode_odd_sizes(container: str, size: tuple[int, int], encoded: tuple[int, int]) -> None:
    width, height = size
    image = smooth_image(height, width)
    out = encode_video(
        [image] * 3,
        width=width,
        height=height,
        fps=25,
        options=EncodeOptions(container=container),
    )
    assert (out.width, out.height) == encoded
    info = probe_video(out.data)
    assert (info["width"], info["height"]) == encoded
    decoded = decode_first_frame(out.data)
    assert decoded.shape == (encoded[1], encoded[0], 3)
    crop = image[: encoded[1], : encoded[0]].astype(np.float32)
    assert np.abs(decoded - crop).mean() < 8


@pytest.mark.parametrize("container", ["webm", "mp4"])
def test_encoded_colours_match_input(container: str) -> None:
    image = smooth_image(96, 128)
    out = encode_video(
        [image] * 2, width=128, height=96, fps=25, options=EncodeOptions(container=container)
    )
    decoded = decode_first_frame(out.data).astype(np.float32)
    assert np.abs(decoded - image).mean() < 8
    for channel in range(3):  # each channel individually, so a BGR/RGB swap cannot pass
        assert np.abs(decoded[..., channel] - image[..., channel]).mean() < 8


@pytest.mark.parametrize("container", ["webm", "mp4"])
@pytest.mark.parametrize("colour", [BLUE, RED])
def test_pure_colour_is_not_swapped(container: str, colour: tuple[int, int, int]) -> None:
    image = np.full((48, 64, 3), colour, np.uint8)
    out = encode_video(
        [image] * 2, width=64, height=48, fps=25, options=EncodeOptions(container=container)
    )
    decoded = decode_first_frame(out.data).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(decoded, colour, atol=12)


def test_bgr_to_i420_matches_swscale() -> None:
    image = smooth_image(50, 66)  # 25 chroma rows: odd
    ours = bgr_to_i420(image)
    assert ours.shape == (75, 66)
    reference = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
    reference = reference.to_ndarray()
    assert np.abs(ours[:50].astype(int) - reference[:50]).max() <= 2  # luma
    assert np.abs(ours[50:].astype(int) - reference[50:]).mean() < 1.5  # chroma
    # chroma is the 2x2 mean, not a point sample: alternating red/black columns average
    stripes = np.zeros((4, 4, 3), np.uint8)
    stripes[:, ::2] = RED
    v_plane = bgr_to_i420(stripes)[-1]
    assert np.all(np.abs(v_plane.astype(int) - (128 + 240) // 2) <= 1)


def test_generator_frames_are_streamed_not_held() -> None:
    refs: list[weakref.ref[np.ndarray]] = []
    alive_when_yielding: list[int] = []

    def frames():
        for i in range(20):
            gc.collect()
            alive_when_yielding.append(sum(ref() is not None for ref in refs))
            frame = smooth_image(48, 64, seed=i)
            refs.append(weakref.ref(frame))
            yield frame

    out = encode_video(frames(), width=64, height=48, fps=25)
    assert out.num_frames == 20
    assert max(alive_when_yielding) <= 1  # at most the previous frame is still referenced


def test_encoder_push_api_and_batches() -> None:
    batch = np.stack([smooth_image(48, 64, seed=i) for i in range(5)])
    with VideoEncoder(width=64, height=48, fps=25, audio=sine(0.6), sample_rate=16_000) as encoder:
        encoder.write(batch[0])
        encoder.write_batch(batch[1:])  # (k, H, W, 3) array
        encoder.write_batch([batch[0], batch[1]])  # list of frames
        assert encoder.num_frames == 7
        out = encoder.finish()
    assert out.num_frames == 7
    assert probe_video(out.data)["num_frames"] == 7
    with pytest.raises(RuntimeError):
        encoder.write(batch[0])


def test_encoded_video_decodes_with_decode_video() -> None:
    frames = [smooth_image(48, 64, seed=i) for i in range(8)]
    for container in ("webm", "mp4"):
        out = encode_video(
            frames, width=64, height=48, fps=12.5, options=EncodeOptions(container=container)
        )
        video = decode_video(out.data, max_frames=8, max_pixels=64 * 48, max_duration_s=1)
        assert video.num_frames == 8
        assert video.fps == pytest.approx(12.5)
        assert np.abs(video.frames[-1].astype(np.float32) - frames[-1]).mean() < 8


def test_mp4_is_faststart() -> None:
    out = encode_video(
        [smooth_image(48, 64)] * 5,
        width=64,
        height=48,
        fps=25,
        audio=sine(0.2),
        sample_rate=16_000,
        options=EncodeOptions(container="mp4"),
    )
    boxes = top_level_boxes(out.data)
    assert boxes[0] == b"ftyp"
    assert boxes.index(b"moov") < boxes.index(b"mdat")


def test_int16_audio_is_accepted() -> None:
    audio = (sine(0.4) * 32767).astype(np.int16)
    out = encode_video(
        [smooth_image(48, 64)] * 10, width=64, height=48, fps=25, audio=audio, sample_rate=16_000
    )
    assert probe_video(out.data)["audio_duration"] == pytest.approx(0.4, abs=0.04)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"width": 1}, "width"),
        ({"height": 0}, "height"),
        ({"width": 64.0}, "width"),
        ({"fps": 0}, "fps"),
        ({"fps": float("inf")}, "fps"),
        ({"fps": -25}, "fps"),
        ({"audio": np.zeros((10, 2), np.float32), "sample_rate": 16_000}, "audio"),
        ({"audio": np.zeros(0, np.float32), "sample_rate": 16_000}, "audio"),
        ({"audio": np.zeros(100, np.int32), "sample_rate": 16_000}, "audio"),
        ({"audio": np.zeros(100, np.float32)}, "sample_rate"),
        ({"audio": np.zeros(100, np.float32), "sample_rate": 0}, "sample_rate"),
        ({"options": "webm"}, "options"),
    ],
)
def test_encode_validates_arguments(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"width": 64, "height": 48, "fps": 25} | kwargs
    with pytest.raises(ValueError, match=name):
        encode_video([smooth_image(48, 64)], **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((48, 64), np.uint8),
        np.zeros((48, 64, 4), np.uint8),
        np.zeros((64, 48, 3), np.uint8),
        np.zeros((48, 64, 3), np.float32),
        [[0] * 3] * 10,
    ],
    ids=["gray", "bgra", "transposed", "float", "list"],
)
def test_encode_rejects_bad_frames(frame: object) -> None:
    with pytest.raises(ValueError, match="frame 1"):
        encode_video([np.zeros((48, 64, 3), np.uint8), frame], width=64, height=48, fps=25)  # type: ignore[list-item]


def test_encode_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="no frames"):
        encode_video([], width=64, height=48, fps=25)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"container": "avi"}, "container"),
        ({"vp9_crf": 64}, "vp9_crf"),
        ({"vp9_crf": 30.5}, "vp9_crf"),
        ({"vp9_cpu_used": 9}, "vp9_cpu_used"),
        ({"vp9_deadline": "fast"}, "vp9_deadline"),
        ({"x264_crf": 52}, "x264_crf"),
        ({"x264_crf": "23"}, "x264_crf"),
        ({"x264_preset": "warp"}, "x264_preset"),
        ({"x264_profile": "high10"}, "x264_profile"),
        ({"audio_bitrate": 0}, "audio_bitrate"),
        ({"keyframe_interval_s": 0}, "keyframe_interval_s"),
        ({"keyframe_interval_s": float("nan")}, "keyframe_interval_s"),
        ({"threads": 0}, "threads"),
    ],
)
def test_encode_options_validation(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        EncodeOptions(**kwargs)  # type: ignore[arg-type]


def test_encode_options_defaults_and_frozen() -> None:
    options = EncodeOptions()
    assert options.container == "webm"
    assert options.mime_type == "video/webm"
    assert EncodeOptions(container="mp4").mime_type == "video/mp4"
    with pytest.raises(AttributeError):
        options.container = "mp4"  # type: ignore[misc]


def test_frame_rate() -> None:
    assert frame_rate(25) == Fraction(25)
    assert frame_rate(29.97) == Fraction(2997, 100)
    assert frame_rate(30_000 / 1001) == Fraction(30_000, 1001)
    assert frame_rate(12.5) == Fraction(25, 2)


def test_probe_video_garbage() -> None:
    with pytest.raises(UnsupportedMediaError):
        probe_video(b"not a video")


@pytest.mark.parametrize("container", ["webm", "mp4"])
def test_encode_and_decode_touch_no_files(
    container: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = encode_video(
        [smooth_image(48, 64)] * 3,
        width=64,
        height=48,
        fps=25,
        audio=sine(0.1),
        sample_rate=16_000,
        options=EncodeOptions(container=container),
    )
    decode_video(out.data, max_frames=3, max_pixels=BIG, max_duration_s=1)
    probe_video(out.data)
    assert list(tmp_path.iterdir()) == []


def test_audio_feed_resamples_lazily_and_like_one_pass() -> None:
    """The encoder's audio is resampled a second at a time as the video advances; the
    frames are the ones a single pass over the whole speech gives."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format = 48_000, "mono", "flt"
    ctx.open()
    speech = np.random.default_rng(3).uniform(-0.5, 0.5, 44_100 * 5 + 123).astype(np.float32)
    feed = video_io._AudioFeed(speech, 44_100, ctx)

    head = list(feed.frames_before(Fraction(48_000 // 10)))
    assert [f.pts for f in head] == [960 * i for i in range(5)]
    assert feed._fed <= 44_100  # 0.1 s asked: at most one second resampled so far
    frames = head + list(feed.frames_before(None))

    whole = av.AudioFrame.from_ndarray(speech[None], format="flt", layout="mono")
    whole.sample_rate, whole.pts, whole.time_base = 44_100, 0, Fraction(1, 44_100)
    one_pass = av.AudioResampler(format="flt", layout="mono", rate=48_000, frame_size=960)
    expected = one_pass.resample(whole) + one_pass.resample(None)
    assert [f.samples for f in frames] == [f.samples for f in expected]
    assert [f.pts for f in frames] == list(np.cumsum([0] + [f.samples for f in frames])[:-1])
    np.testing.assert_allclose(
        np.concatenate([f.to_ndarray()[0] for f in frames]),
        np.concatenate([f.to_ndarray()[0] for f in expected]),
        atol=1e-6,
    )
