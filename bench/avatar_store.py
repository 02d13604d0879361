"""What the avatar store costs: blob sizes, encode/decode times, and each lookup with the
local directory and with Redis (a real redis-server on loopback, tools/redis_server.py).

    python -m bench.avatar_store [--repeats 20] [--out bench/results/avatar_store.json]

Avatars: the test portrait at 1280x720 (an image) and a 4 s 1280x720 25 fps H.264 clip
made from it (a video). Preparation uses a fixed box (detection is not the store's cost).
For each avatar and backend, medians over `--repeats` of: storing it (Redis: encoding
included), loading it on a worker that does not have it (read, decode, crops), a use of a
cached avatar (memory plus the backend's confirmation: a `utime` or a Redis `TOUCH`), and
a metadata read. Run it from the project root; needs `redis-server` (scripts/test.sh
installs it).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync.avatar_store import codec
from lipsync.avatar_store.disk import DiskAvatars
from lipsync.avatar_store.shared import KEY_PREFIX, RedisAvatars
from lipsync.avatars import AvatarStore
from lipsync.faces import PreparedFace, crop_faces
from lipsync.generation import decode_face
from lipsync.media.sizing import fit_frames
from lipsync.options import RenderOptions
from lipsync.settings import Settings
from tools.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SIZE = (1280, 720)
CLIP_SECONDS = 4
FPS = 25


def portrait() -> np.ndarray:
    return cv2.resize(cv2.imread(str(ROOT / "test_assets" / "face.jpg")), SIZE)


def clip() -> bytes:
    """A 4 s H.264 clip of the portrait, gently panning (so frames differ)."""
    base = portrait()
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for i in range(CLIP_SECONDS * FPS):
            frame = np.roll(base, i, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode())
    return buf.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, float | None]:
    return decode_face(data, Settings())


def prepare(frames: np.ndarray, options: RenderOptions, timings) -> PreparedFace:
    """Fitted frames, a fixed central box, crops: preparation without a detector."""
    frames = fit_frames(frames, options.quality)
    height, width = frames.shape[1:3]
    box = (height // 4, 3 * height // 4, width // 4, 3 * width // 4)
    boxes = np.tile(np.array(box, dtype=np.int64), (len(frames), 1))
    return PreparedFace(frames=frames, boxes=boxes, crops=crop_faces(frames, boxes))


def median_ms(fn: Callable[[], object], repeats: int, before: Callable[[], object] | None = None):
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def measure(backend, source: bytes, repeats: int) -> dict:
    """Store, load, cached use and metadata read of one avatar on one backend."""
    store = AvatarStore(backend, 1 << 32, decode, prepare)
    avatar, _ = store.get_or_create(source, RenderOptions(), persist=True)
    avatar_id = avatar.avatar_id
    return {
        "store_ms": median_ms(
            lambda: backend.save(avatar, source), repeats, lambda: backend.delete(avatar_id)
        ),
        "load_ms": median_ms(lambda: backend.load(avatar_id), repeats),
        "cached_use_ms": median_ms(lambda: store.get(avatar_id), repeats),
        "meta_ms": median_ms(lambda: backend.meta(avatar_id), repeats),
    }


def encoding(source: bytes, repeats: int) -> dict:
    """Sizes (upload, memory, blob) and the codec's encode/decode times of one avatar."""
    store = AvatarStore(None, 1 << 32, decode, prepare)
    avatar, _ = store.get_or_create(source, RenderOptions(), persist=False)
    blob = codec.encode(avatar, source)
    codecs = {codec.FRAMES_PNG: "png", codec.FRAMES_SOURCE: "source"}
    return {
        "avatar_id": avatar.avatar_id,
        "source_bytes": len(source),
        "memory_bytes": avatar.nbytes,
        "blob_bytes": len(blob),
        "frames_codec": codecs[codec.HEADER.unpack_from(blob)[2]],
        "encode_ms": median_ms(lambda: codec.encode(avatar, source), repeats),
        "decode_ms": median_ms(lambda: codec.decode(blob, avatar.avatar_id, decode), repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "avatar_store.json"))
    args = parser.parse_args(argv)
    sources = {"image": cv2.imencode(".jpg", portrait())[1].tobytes(), "video": clip()}
    result: dict = {"frame_size": list(SIZE), "clip_frames": CLIP_SECONDS * FPS}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            redis_backend = RedisAvatars(server.url, decode, ttl_s=0, timeout_s=1, retry_after_s=5)
            disk = DiskAvatars(Path(tmp) / "avatars", decode, None)
            for kind, source in sources.items():
                row = encoding(source, args.repeats)
                row["redis"] = measure(redis_backend, source, args.repeats)
                row["disk"] = measure(disk, source, args.repeats)
                avatar_id = row.pop("avatar_id")
                row["redis_bytes"] = redis_backend.client().strlen(KEY_PREFIX + avatar_id)
                usage = disk.usage()
                row["disk_bytes"] = sum(size for _, size, i in usage if i == avatar_id)
                result[kind] = row
        finally:
            server.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
