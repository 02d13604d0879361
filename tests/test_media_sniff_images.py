"""Tests for lipsync.media errors, sniffing and image decoding (header limits first)."""

from __future__ import annotations

import math
import struct
import warnings

import cv2
import numpy as np
import pytest
from helpers import (
    BIG,
    BLUE,
    RED,
    encode_image,
    jpeg_header_only,
    make_clip,
    png_chunk,
    png_header_only,
    smooth_image,
)
from PIL import Image

from lipsync.errors import ErrorCode
from lipsync.media import images
from lipsync.media.errors import MediaError, MediaTooLargeError, UnsupportedMediaError
from lipsync.media.images import decode_image, read_image_size
from lipsync.media.sniff import sniff_media

# --------------------------------------------------------------------------- errors, sniffing


def test_error_classes_and_codes() -> None:
    assert issubclass(MediaError, ValueError)
    assert issubclass(UnsupportedMediaError, MediaError)
    assert issubclass(MediaTooLargeError, MediaError)
    assert UnsupportedMediaError("x").code is ErrorCode.UNSUPPORTED_MEDIA
    assert MediaTooLargeError("x", code=ErrorCode.VIDEO_TOO_LONG).code is ErrorCode.VIDEO_TOO_LONG
    assert MediaTooLargeError("x").code is ErrorCode.MEDIA_TOO_LARGE
    assert MediaError("x").code is ErrorCode.INVALID_MEDIA
    assert str(MediaTooLargeError("too big", code=ErrorCode.IMAGE_TOO_LARGE)) == "too big"


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".gif", ".bmp"])
def test_sniff_images(ext: str) -> None:
    data = encode_image(ext, smooth_image(16, 20))
    assert sniff_media(data) == "image"


@pytest.mark.parametrize(
    ("fmt", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4")]
)
def test_sniff_videos(fmt: str, codec: str) -> None:
    data, _ = make_clip(fmt, codec, num_frames=2)
    assert sniff_media(data) == "video"


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
    assert info.value.code is ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize(
    "data",
    [
        png_header_only(20_000, 20_000),
        jpeg_header_only(60_000, 60_000),
        b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00"
        + (16_000).to_bytes(3, "little")
        + (16_000).to_bytes(3, "little"),
        # Logical screen, then an image descriptor with an empty data block.
        b"GIF89a"
        + struct.pack("<HHBBB", 65_535, 65_535, 0, 0, 0)
        + b","
        + struct.pack("<HHHHB", 0, 0, 65_535, 65_535, 0)
        + b"\x08\x00;",
        # BITMAPINFOHEADER of a top-down 24-bit image, no pixel rows.
        b"BM" + b"\x00" * 12 + struct.pack("<IiiHH", 40, 30_000, -30_000, 1, 24) + b"\x00" * 24,
    ],
    ids=["png", "jpeg", "webp", "gif", "bmp"],
)
def test_decompression_bomb_refused_from_header(data: bytes) -> None:
    # The data is headers without pixel data: only a refusal from the header can give this
    # code (decoding would fail as unsupported_media).
    with pytest.raises(MediaTooLargeError) as info:
        decode_image(data, max_pixels=4096 * 4096)
    assert info.value.code is ErrorCode.IMAGE_TOO_LARGE


def gif_with_frame_outside_canvas(width: int, height: int) -> bytes:
    """A 16x16 GIF canvas whose first frame descriptor is width x height (no pixel data)."""
    descriptor = struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0, 0, 0) + b"," + descriptor + b"\x08\x00;"


@pytest.mark.parametrize("action", ["ignore", "error"])
def test_pillow_bomb_limit_is_not_the_limit(action: str) -> None:
    # 10000x10000 is past Image.MAX_IMAGE_PIXELS (Pillow warns there) but under twice it.
    data = gif_with_frame_outside_canvas(10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        if action == "ignore":
            assert read_image_size(data) == (10_000, 10_000)
        with pytest.raises(MediaTooLargeError) as info:
            decode_image(data, max_pixels=4096 * 4096)
    assert info.value.code is ErrorCode.IMAGE_TOO_LARGE


def test_pillow_bomb_error_is_image_too_large() -> None:
    # WebP: Pillow refuses a canvas over 2 * MAX_IMAGE_PIXELS before creating its decoder.
    side = math.isqrt(2 * Image.MAX_IMAGE_PIXELS) + 1
    data = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00"
    data += (side - 1).to_bytes(3, "little") * 2
    with pytest.raises(MediaTooLargeError) as info:
        read_image_size(data)
    assert info.value.code is ErrorCode.IMAGE_TOO_LARGE


def test_read_image_size_of_crafted_headers() -> None:
    assert read_image_size(png_header_only(20_000, 20_000)) == (20_000, 20_000)
    assert read_image_size(jpeg_header_only(640, 480)) == (640, 480)


def test_jpeg_header_read_skips_segments_before_sof() -> None:
    image = smooth_image(33, 45)
    data = encode_image(".jpg", image)
    # Insert an APP1 segment whose payload contains fake SOF bytes before the real SOF.
    fake = b"Exif\x00\x00" + b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff" + b"\x00" * 20
    app1 = b"\xff\xe1" + struct.pack(">H", len(fake) + 2) + fake
    data = data[:2] + app1 + data[2:]
    assert read_image_size(data) == (45, 33)
    assert decode_image(data, max_pixels=45 * 33).shape == (33, 45, 3)


def test_jpeg_header_read_ignores_dht_before_sof() -> None:
    data = encode_image(".jpg", smooth_image(33, 45))
    # Copy the first Huffman table segment (FFC4, not a SOF) in front of everything else.
    start = data.find(b"\xff\xc4")
    length = struct.unpack_from(">H", data, start + 2)[0]
    data = data[:2] + data[start : start + 2 + length] + data[2:]
    assert read_image_size(data) == (45, 33)
    assert decode_image(data, max_pixels=45 * 33).shape == (33, 45, 3)


def test_jpeg_completeness_check() -> None:
    data = encode_image(".jpg", smooth_image(64, 64))
    assert images._jpeg_is_complete(data)
    assert images._jpeg_is_complete(data + b"trailing bytes after EOI")
    assert not images._jpeg_is_complete(data[:-2])
    assert not images._jpeg_is_complete(data[: data.find(b"\xff\xda") + 100])


@pytest.mark.parametrize("data", [png_header_only(0, 10), jpeg_header_only(10, 0)])
def test_zero_size_image_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaError) as info:
        decode_image(data, max_pixels=BIG)
    assert info.value.code is ErrorCode.UNSUPPORTED_MEDIA


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
    assert info.value.code is ErrorCode.UNSUPPORTED_MEDIA


def test_video_bytes_are_not_an_image() -> None:
    data, _ = make_clip("mp4", "libx264", num_frames=2)
    with pytest.raises(UnsupportedMediaError):
        decode_image(data, max_pixels=BIG)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, None])
def test_decode_image_validates_limit(bad: object) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(encode_image(".png", smooth_image(4, 4)), max_pixels=bad)  # type: ignore[arg-type]
