"""The shared store's avatar encoding: round trips, and every damaged or foreign blob is
refused with DamagedBlobError (which the store answers as a missing avatar)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from test_avatar_lru import BOX, decode, image_bytes, prepare

from lipsync.avatar_store import codec
from lipsync.avatar_store.model import Avatar, avatar_id_for
from lipsync.faces import PreparedFace, crop_faces
from lipsync.options import RenderOptions

FPS = 25.0


def image_avatar(seed: int = 0) -> tuple[Avatar, bytes]:
    source = image_bytes(seed)
    frames, _ = decode(source)
    avatar = Avatar(
        avatar_id=avatar_id_for(source, RenderOptions()),
        kind="image",
        fps=None,
        prepared=prepare(frames, RenderOptions(), None),
        pads=(0, 10, 0, 0),
        box=BOX,
        smooth=True,
        created=1234.5,
        quality="standard",
    )
    return avatar, source


def npy_clip(frames: np.ndarray) -> bytes:
    """A stand-in "video file": the frames as .npy (the codec keeps a source opaque)."""
    buf = io.BytesIO()
    np.save(buf, frames)
    return buf.getvalue()


def decode_npy_clip(data: bytes) -> tuple[np.ndarray, float]:
    return np.load(io.BytesIO(data), allow_pickle=False), FPS


def video_avatar() -> tuple[Avatar, bytes]:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    boxes = np.array([[4 + i, 40, 8, 56 - i] for i in range(5)], dtype=np.int64)
    source = npy_clip(frames)
    prepared = PreparedFace(frames=frames, boxes=boxes, crops=crop_faces(frames, boxes))
    avatar = Avatar(avatar_id_for(source, RenderOptions()), "video", FPS, prepared, (0, 0, 0, 0),
                    None, False, 99.0, "original")  # fmt: skip
    return avatar, source


def assert_same(decoded: Avatar, avatar: Avatar) -> None:
    assert decoded.meta() == avatar.meta()
    for name in ("frames", "boxes", "crops", "inputs"):
        np.testing.assert_array_equal(
            getattr(decoded.prepared, name), getattr(avatar.prepared, name), err_msg=name
        )


@pytest.mark.parametrize("frames_codec", [codec.FRAMES_PNG, codec.FRAMES_SOURCE])
def test_an_image_avatar_round_trips_exactly(frames_codec):
    avatar, source = image_avatar()
    blob = codec.encode(avatar, source, frames_codec)
    assert codec.HEADER.unpack_from(blob)[2] == frames_codec
    assert_same(codec.decode(blob, avatar.avatar_id, decode), avatar)


def test_a_video_avatar_round_trips_through_its_source_file():
    avatar, source = video_avatar()
    blob = codec.encode(avatar, source)
    assert codec.HEADER.unpack_from(blob)[2] == codec.FRAMES_SOURCE
    assert source in blob
    assert_same(codec.decode(blob, avatar.avatar_id, decode_npy_clip), avatar)


def test_an_image_is_stored_as_the_smaller_of_png_and_its_source():
    avatar, source = image_avatar()  # random pixels: the PNG is about the size of the file
    padded = source + b"\0" * 100_000  # a bigger upload (PNG ignores trailing bytes)
    blob = codec.encode(avatar, padded)
    assert codec.HEADER.unpack_from(blob)[2] == codec.FRAMES_PNG
    assert len(blob) < len(padded)
    tiny = image_avatar()[0]  # a "source" far smaller than the frames' PNG
    assert codec.HEADER.unpack_from(codec.encode(tiny, b"x" * 10))[2] == codec.FRAMES_SOURCE


def test_metadata_is_read_from_the_first_bytes_alone():
    avatar, source = video_avatar()
    blob = codec.encode(avatar, source)
    end = codec.meta_end(blob[: codec.HEADER.size])
    assert end < len(blob) - len(source)
    assert codec.read_meta(blob[:end], avatar.avatar_id) == avatar.meta()
    with pytest.raises(codec.DamagedBlobError, match="truncated"):
        codec.read_meta(blob[: end - 1], avatar.avatar_id)


def reseal(blob: bytes, meta: dict | None = None, body: bytes | None = None, **header) -> bytes:
    """The blob with another metadata/body/header field, its lengths and checksums redone."""
    fields = dict(zip(("magic", "version", "codec", "ml", "mc", "bl", "bc"),
                      codec.HEADER.unpack_from(blob), strict=True))  # fmt: skip
    old_meta = blob[codec.HEADER.size : codec.HEADER.size + fields["ml"]]
    new_meta = json.dumps(meta).encode() if meta is not None else old_meta
    new_body = body if body is not None else blob[codec.HEADER.size + fields["ml"] :]
    fields.update(ml=len(new_meta), mc=zlib.crc32(new_meta), bl=len(new_body))
    fields.update(bc=zlib.crc32(new_body), **header)
    return codec.HEADER.pack(*fields.values()) + new_meta + new_body


def boxes_record(boxes: np.ndarray) -> bytes:
    return codec._array_record(boxes.astype(codec.BOXES_DTYPE))


def damaged_blobs() -> dict[str, tuple[bytes, str]]:
    avatar, source = image_avatar()
    blob = codec.encode(avatar, source, codec.FRAMES_PNG)
    meta = avatar.meta()
    body = blob[codec.meta_end(blob) :]
    flipped = bytearray(blob)
    flipped[-40] ^= 0xFF
    outside = np.array([[4, 80, 8, 56]], dtype=np.int64)  # bottom 80 > 64 rows
    outside_body = boxes_record(outside) + body[len(boxes_record(avatar.prepared.boxes)) :]
    return {
        "empty": (b"", "shorter than the header"),
        "truncated": (blob[:-7], "body"),
        "flipped byte": (bytes(flipped), "crc|body"),
        "foreign": (b"PNG\0" + blob[4:], "magic"),
        "old version": (reseal(blob, version=0), "version 0"),
        "newer version": (reseal(blob, version=codec.VERSION + 1), "version"),
        "other id": (reseal(blob, {**meta, "avatar_id": "f" * 32}), "metadata"),
        "meta lacks keys": (reseal(blob, {"avatar_id": avatar.avatar_id}), "lacks"),
        "meta not json": (_raw_meta(blob, b"{nope"), "metadata"),
        "box outside": (reseal(blob, {**meta, "boxes": outside.tolist()}, outside_body), "outside"),
        "boxes differ": (reseal(blob, {**meta, "boxes": [[0, 9, 0, 9]]}), "differ"),
        "frame count": (reseal(blob, {**meta, "num_frames": 2}), "frames"),
        "frame size": (reseal(blob, {**meta, "width": 65}), "frames"),
        "unknown codec": (reseal(blob, codec=9), "codec"),
        "bad png": (reseal(blob, body=body[:-50] + b"\0" * 50), "PNG|frame"),
        "boxes dtype": (reseal(blob, body=_float_boxes(body, avatar)), "dtype"),
    }


def _raw_meta(blob: bytes, raw: bytes) -> bytes:
    """The blob with these metadata bytes (checksum right, content not JSON)."""
    fields = list(codec.HEADER.unpack_from(blob))
    body = blob[codec.HEADER.size + fields[3] :]
    fields[3:5] = [len(raw), zlib.crc32(raw)]
    return codec.HEADER.pack(*fields) + raw + body


def _float_boxes(body: bytes, avatar: Avatar) -> bytes:
    record = boxes_record(avatar.prepared.boxes)
    as_float = avatar.prepared.boxes.astype("<f8")
    dtype = as_float.dtype.str.encode()
    head = struct.pack(f"<B{len(dtype)}sB2I", len(dtype), dtype, 2, *as_float.shape)
    return head + as_float.tobytes() + body[len(record) :]


@pytest.mark.parametrize("name", sorted(damaged_blobs()))
def test_a_damaged_or_foreign_blob_is_refused(name):
    blob, reason = damaged_blobs()[name]
    avatar_id = image_avatar()[0].avatar_id
    with pytest.raises(codec.DamagedBlobError, match=reason):
        codec.decode(blob, avatar_id, decode)


def test_a_source_that_no_longer_decodes_is_damage():
    avatar, source = video_avatar()
    blob = codec.encode(avatar, source)

    def refuse(data: bytes):
        raise ValueError("not a video")

    with pytest.raises(codec.DamagedBlobError, match="not a video"):
        codec.decode(blob, avatar.avatar_id, refuse)
    other_size = npy_clip(np.zeros((5, 48, 66, 3), np.uint8))
    with pytest.raises(codec.DamagedBlobError, match="frames"):
        codec.decode(blob, avatar.avatar_id, lambda data: decode_npy_clip(other_size))
