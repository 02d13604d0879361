"""Image decoding with a pixel limit checked from the header first.

`read_image_size` reads width/height with Pillow, which parses the headers without
decoding pixels (PNG: the chunks up to the first IDAT; JPEG: the segments up to the first
scan; GIF: up to the first image descriptor; BMP: the DIB header; WebP: the RIFF chunks,
demuxed by libwebp); `decode_image` refuses images over `max_pixels` from that size, then
decodes with OpenCV to (H, W, 3) uint8 BGR.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from lipsync.errors import ErrorCode
from lipsync.media.checks import check_limit
from lipsync.media.errors import MediaTooLargeError, UnsupportedMediaError
from lipsync.media.sniff import ImageFormat, image_format

# Pillow's reader per sniffed format. Each is opened directly rather than through
# `Image.open`, which also applies Pillow's process-wide decompression-bomb limit
# (Image.MAX_IMAGE_PIXELS: a warning past ~89 M pixels, an error past twice that) before
# the size reaches us; the service's own `max_pixels` is the limit that applies.
_HEADER_READERS: dict[ImageFormat, type[ImageFile.ImageFile]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "gif": GifImagePlugin.GifImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
}
# What Pillow raises for a header it cannot parse (Image.open treats the first four as
# "not this format"; OSError covers truncation and unsupported variants).
_HEADER_ERRORS = (SyntaxError, IndexError, TypeError, struct.error, OSError, EOFError, ValueError)


def read_image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone (PNG, JPEG, WebP, GIF, BMP).

    Raises UnsupportedMediaError for any other format or a truncated or corrupt header.
    A few readers check Pillow's own decompression-bomb limit on the way (WebP before
    creating its decoder, GIF for frames outside the canvas); past it, this raises
    MediaTooLargeError (code "image_too_large"). Sizes may be 0; `decode_image` refuses those.
    """
    fmt = image_format(data)
    if fmt is None:
        raise UnsupportedMediaError("not a PNG, JPEG, WebP, GIF or BMP image")
    try:
        with _HEADER_READERS[fmt](io.BytesIO(data)) as image:
            return image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaTooLargeError(f"{fmt} image: {exc}", code=ErrorCode.IMAGE_TOO_LARGE) from exc
    except _HEADER_ERRORS as exc:
        raise UnsupportedMediaError(f"truncated or corrupt {fmt} header") from exc


def _jpeg_is_complete(data: bytes) -> bool:
    """True if an EOI marker follows the first scan. FF D9 cannot occur inside entropy-coded
    data (FF is always stuffed), so its absence means the file was cut short; libjpeg would
    only warn and return a half-grey image."""
    sos = data.find(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos + 2) >= 0


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode a PNG/JPEG/WebP/GIF/BMP image to (H, W, 3) uint8 BGR.

    The header is parsed first and images with width*height > max_pixels are refused
    (MediaTooLargeError, code "image_too_large") before any pixel is decoded. Grayscale and
    alpha images come out as 3-channel BGR (alpha dropped); EXIF orientation is applied.
    Unknown formats, truncated or corrupt files raise UnsupportedMediaError.
    """
    check_limit("max_pixels", max_pixels, integer=True)
    fmt = image_format(data)
    width, height = read_image_size(data)
    if width <= 0 or height <= 0:
        raise UnsupportedMediaError(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise MediaTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, limit is {max_pixels}",
            code=ErrorCode.IMAGE_TOO_LARGE,
        )
    if fmt == "jpeg" and not _jpeg_is_complete(data):
        raise UnsupportedMediaError("truncated JPEG image")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise UnsupportedMediaError(f"corrupt {fmt} image") from exc
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UnsupportedMediaError(f"corrupt or unreadable {fmt} image")
    if image.shape[0] * image.shape[1] > max_pixels:  # header lied about the size
        raise MediaTooLargeError(
            "decoded image exceeds the pixel limit", code=ErrorCode.IMAGE_TOO_LARGE
        )
    return np.ascontiguousarray(image)
