"""Classify uploads from their magic bytes alone (nothing is decoded).

Images: PNG, JPEG, WebP, GIF, BMP. Videos: MP4/MOV, WebM/MKV, AVI. HEIF/AVIF stills (an
ISO-BMFF `ftyp` with an image brand) are neither.
"""

from __future__ import annotations

import struct
from typing import Literal

MediaKind = Literal["image", "video"]
ImageFormat = Literal["png", "jpeg", "webp", "gif", "bmp"]

# ISO-BMFF major brands that are still images (HEIF/AVIF), not videos.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif"})
# Top-level QuickTime atoms that may start a .mov without an `ftyp` box.
_MOV_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
# BMP DIB header sizes: OS/2 1.x core, Windows v1..v5, OS/2 2.x (16 and 64).
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def video_demuxer(data: bytes) -> str | None:
    """FFmpeg demuxer name for a video recognised from its magic bytes, else None."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return None if data[8:12] in _IMAGE_BRANDS else "mov"
    if len(data) >= 8 and data[4:8] in _MOV_ATOMS:
        return "mov"
    if data.startswith(_EBML_MAGIC):
        return "matroska"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def image_format(data: bytes) -> ImageFormat | None:
    """Image format recognised from its magic bytes: "png", "jpeg", "webp", "gif", "bmp"."""
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if (
        len(data) >= 18
        and data[:2] == b"BM"
        and struct.unpack_from("<I", data, 14)[0] in _BMP_DIB_SIZES
    ):
        return "bmp"
    return None


def sniff_media(data: bytes) -> MediaKind | None:
    """Classify bytes as "image" (PNG, JPEG, WebP, GIF, BMP), "video" (MP4/MOV, WebM/MKV,
    AVI) or None, from magic bytes only (nothing is decoded)."""
    if image_format(data) is not None:
        return "image"
    if video_demuxer(data) is not None:
        return "video"
    return None
