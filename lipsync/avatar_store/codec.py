"""The shared store's avatar encoding: one compact, versioned, self-checking blob.

    header  struct `<4sHHIIQI`: magic b"LSAV", format version, frames codec, metadata
            length, metadata crc32, body length, body crc32
    meta    UTF-8 JSON, `Avatar.meta()`: first, so a reader fetches it alone (a range read)
    body    the boxes as an array record (dtype, ndim, shape, raw bytes), then the frames:
            FRAMES_PNG, each frame as a lossless PNG, or FRAMES_SOURCE, the uploaded file
            itself, decoded and fitted to the avatar's quality on load as on registration

An image avatar is stored as PNG unless its uploaded file is smaller; a video avatar as
its uploaded file (a 30 s 720p clip is a few MB as uploaded, hundreds as PNG frames, past
Redis's 512 MB value limit). The 96x96 crops are not stored: they are
`crop_faces(frames, boxes)`, recomputed on load (~0.2 ms a frame; stored, a 720p clip's
blob would be 20 times larger).
`decode` checks everything (magic, version, lengths, checksums, metadata keys, shapes,
boxes inside the frames) and raises DamagedBlobError for anything that is not a valid
avatar of the current version, which the store treats as missing.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import cv2
import numpy as np

from lipsync.avatar_store.model import (
    Avatar,
    Decoder,
    avatar_from_meta,
    check_meta,
    check_prepared,
)
from lipsync.faces import PreparedFace, crop_faces
from lipsync.media.sizing import fit_frames

MAGIC = b"LSAV"
VERSION = 1
HEADER = struct.Struct("<4sHHIIQI")
FRAMES_PNG = 1
FRAMES_SOURCE = 2
PNG_LEVEL = 3  # zlib level of the PNG frames: most of level 9's size, a fraction of its time
# A photo's lossless PNG is rarely under a quarter of its raw pixels (a 720p portrait's is
# 1/3): an image upload smaller than that is kept as it is, without trying PNG (~0.1 s).
PNG_MIN_RATIO = 4
BOXES_DTYPE = np.dtype("<i8")
COUNT = struct.Struct("<I")
LENGTH = struct.Struct("<Q")


class DamagedBlobError(ValueError):
    """Bytes that are not a valid avatar of this format version (the reason says why)."""


def encode(avatar: Avatar, source: bytes, frames_codec: int | None = None) -> bytes:
    """The blob of an avatar prepared from the uploaded file `source`.

    `frames_codec` (default: PNG for an image unless the source is smaller, else the source)."""
    codec = frames_codec or _default_codec(avatar, source)
    frames = _png_frames(avatar.prepared.frames) if codec == FRAMES_PNG else b""
    smaller = frames_codec is None and len(frames) > len(source) + LENGTH.size
    if codec == FRAMES_SOURCE or smaller:
        codec, frames = FRAMES_SOURCE, LENGTH.pack(len(source)) + source
    meta = json.dumps(avatar.meta(), separators=(",", ":")).encode()
    body = _array_record(avatar.prepared.boxes.astype(BOXES_DTYPE)) + frames
    header = HEADER.pack(
        MAGIC, VERSION, codec, len(meta), zlib.crc32(meta), len(body), zlib.crc32(body)
    )
    return header + meta + body


def _default_codec(avatar: Avatar, source: bytes) -> int:
    """A video's source; an image's PNG (then kept if smaller than the source), unless the
    source is already smaller than a PNG of it could be (a JPEG photo): no PNG encoding."""
    if avatar.kind == "video" or len(source) * PNG_MIN_RATIO < avatar.prepared.frames.nbytes:
        return FRAMES_SOURCE
    return FRAMES_PNG


def meta_end(head: bytes) -> int:
    """How many leading bytes of a blob hold its metadata (read from its header)."""
    return HEADER.size + _header(head)[3]


def blob_length(head: bytes) -> int:
    """The whole blob's length, read from its header (a shorter blob is truncated)."""
    fields = _header(head)
    return HEADER.size + fields[3] + fields[5]


def read_meta(head: bytes, avatar_id: str) -> dict[str, Any]:
    """The metadata of avatar `avatar_id` from the blob's first `meta_end` bytes or more."""
    try:
        _, _, _, meta_length, meta_crc, _, _ = _header(head)
        meta = head[HEADER.size : HEADER.size + meta_length]
        if len(meta) != meta_length or zlib.crc32(meta) != meta_crc:
            raise ValueError("metadata truncated or its checksum differs")
        return check_meta(json.loads(meta), avatar_id)
    except (ValueError, KeyError, TypeError) as exc:
        raise DamagedBlobError(f"metadata: {exc}") from exc


def decode(blob: bytes, avatar_id: str, decode_source: Decoder) -> Avatar:
    """The avatar `avatar_id` from its blob (`decode_source` reads a FRAMES_SOURCE file)."""
    _, _, codec, meta_length, _, body_length, body_crc = _header(blob)
    meta = read_meta(blob, avatar_id)
    body = memoryview(blob)[HEADER.size + meta_length :]
    if len(body) != body_length or zlib.crc32(body) != body_crc:
        raise DamagedBlobError(f"body of {len(body)} bytes, header says {body_length} (or crc)")
    try:
        boxes, offset = _read_array(body)
        if codec == FRAMES_PNG:
            frames = _read_png_frames(body[offset:])
        elif codec == FRAMES_SOURCE:
            frames = _read_source(body[offset:], meta["quality"], decode_source)
        else:
            raise ValueError(f"unknown frames codec {codec}")
        check_prepared(meta, frames, boxes, None)
        prepared = PreparedFace(frames=frames, boxes=boxes, crops=crop_faces(frames, boxes))
        return avatar_from_meta(meta, prepared)
    except (ValueError, KeyError, TypeError, struct.error, cv2.error) as exc:
        raise DamagedBlobError(f"{type(exc).__name__}: {exc}") from exc


def _header(blob: bytes) -> tuple[bytes, int, int, int, int, int, int]:
    if len(blob) < HEADER.size:
        raise DamagedBlobError(f"{len(blob)} bytes: shorter than the header")
    fields = HEADER.unpack_from(blob)
    if fields[0] != MAGIC:
        raise DamagedBlobError(f"magic {fields[0]!r} is not {MAGIC!r}")
    if fields[1] != VERSION:
        raise DamagedBlobError(f"format version {fields[1]}, this service reads {VERSION}")
    return fields


def _array_record(array: np.ndarray) -> bytes:
    """dtype string (length-prefixed), ndim, shape, then the C-order bytes."""
    dtype = array.dtype.str.encode()
    shape = struct.pack(
        f"<B{len(dtype)}sB{array.ndim}I", len(dtype), dtype, array.ndim, *array.shape
    )
    return shape + np.ascontiguousarray(array).tobytes()


def _read_array(data: memoryview) -> tuple[np.ndarray, int]:
    """(the array, where the record ends); only BOXES_DTYPE arrays are expected."""
    (dtype_length,) = struct.unpack_from("<B", data)
    dtype, ndim = struct.unpack_from(f"<{dtype_length}sB", data, 1)
    if np.dtype(dtype.decode()) != BOXES_DTYPE:
        raise ValueError(f"array dtype {dtype!r}, expected {BOXES_DTYPE.str}")
    start = 2 + dtype_length
    shape = struct.unpack_from(f"<{ndim}I", data, start)
    start += 4 * ndim
    end = start + int(np.prod(shape)) * BOXES_DTYPE.itemsize
    if end > len(data):
        raise ValueError(f"array of shape {shape} runs past the blob")
    return np.frombuffer(data[start:end], BOXES_DTYPE).reshape(shape).copy(), end


def _png_frames(frames: np.ndarray) -> bytes:
    parts = [COUNT.pack(len(frames))]
    for frame in frames:
        ok, png = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
        if not ok:
            raise ValueError(f"PNG encoding of a {frame.shape} frame failed")
        parts += [COUNT.pack(len(png)), png.tobytes()]
    return b"".join(parts)


def _read_png_frames(data: memoryview) -> np.ndarray:
    (count,) = COUNT.unpack_from(data)
    frames: list[np.ndarray] = []
    offset = COUNT.size
    for _ in range(count):
        (length,) = COUNT.unpack_from(data, offset)
        offset += COUNT.size
        png = np.frombuffer(data[offset : offset + length], np.uint8)
        frame = cv2.imdecode(png, cv2.IMREAD_UNCHANGED) if len(png) == length else None
        if frame is None or frame.ndim != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame {len(frames)} is not a colour PNG")
        frames.append(frame)
        offset += length
    if offset != len(data) or not frames or len({f.shape for f in frames}) != 1:
        raise ValueError(f"{count} PNG frames do not fill the body or differ in size")
    return np.stack(frames)


def _read_source(data: memoryview, quality: str, decode_source: Decoder) -> np.ndarray:
    (length,) = LENGTH.unpack_from(data)
    if LENGTH.size + length != len(data):
        raise ValueError(f"source of {length} bytes in {len(data) - LENGTH.size}")
    frames, _ = decode_source(bytes(data[LENGTH.size :]))
    return fit_frames(frames, quality)
