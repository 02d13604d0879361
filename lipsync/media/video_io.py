"""Media decoding and in-memory encoding for the lip-sync service. Never touches the disk.

Conventions: every frame is a BGR uint8 numpy array of shape (H, W, 3) (OpenCV order);
audio is mono float PCM (N,) in [-1, 1] at a given sample rate.

- `sniff_media` / `is_image` / `is_video`: classify uploads from their magic bytes.
- `read_image_size` + `decode_image`: read width/height from the image header, refuse
  decompression bombs, then decode with OpenCV.
- `decode_video`: demux/decode with PyAV from memory, refusing oversized or overlong
  videos from the stream headers first and again while decoding.
- `VideoEncoder` / `encode_video`: streaming encode (one frame at a time, never holding
  the clip) to WebM (VP9 + Opus) or MP4 (H.264 + AAC, faststart) in a BytesIO.
- `probe_video`: decode a result and report codecs, sizes, frame count and durations.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import struct
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av
import cv2
import numpy as np

logger = logging.getLogger(__name__)

MediaKind = Literal["image", "video"]
ContainerName = Literal["webm", "mp4"]

# Output audio rate for both containers: Opus only runs at 48 kHz, and 48 kHz AAC is the
# most widely supported rate for MP4 in browsers.
AUDIO_RATE = 48_000
MIME_TYPES: dict[str, str] = {"webm": "video/webm", "mp4": "video/mp4"}
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
X264_PROFILES = ("baseline", "main", "high")
VP9_DEADLINES = ("realtime", "good", "best")

# FFmpeg enum values (libavutil/pixfmt.h) tagging the output matrix and range: BT.601
# (SMPTE 170M) limited range, the conversion `bgr_to_i420` performs.
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_RANGE_MPEG = 1
# BGR -> limited-range BT.601 Y, Cb, Cr (rows), last column the offset, for cv2.transform.
_BGR_TO_YCBCR = (
    np.array(
        [
            [24.966, 128.553, 65.481, 16 * 255],
            [112.0, -74.203, -37.797, 128 * 255],
            [-18.214, -93.786, 112.0, 128 * 255],
        ],
        dtype=np.float32,
    )
    / 255
)

# ISO-BMFF major brands that are still images (HEIF/AVIF), not videos.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif"})
# Top-level QuickTime atoms that may start a .mov without an `ftyp` box.
_MOV_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
# BMP DIB header sizes: OS/2 1.x core, Windows v1..v5, OS/2 2.x (16 and 64).
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# JPEG start-of-frame markers: C0..CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0..RST7.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


# --------------------------------------------------------------------------- errors


class MediaError(ValueError):
    """A client-supplied medium was rejected; `code` is a stable machine-readable reason."""

    code: str = "invalid_media"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnsupportedMediaError(MediaError):
    """Not an image/video we can read: unknown format, corrupt, truncated or empty."""

    code = "unsupported_media"


class MediaTooLargeError(MediaError):
    """Within the limits no more: codes "image_too_large", "video_too_large" (pixels per
    frame) or "video_too_long" (frames or duration)."""

    code = "media_too_large"


# --------------------------------------------------------------------------- sniffing


def _video_demuxer(data: bytes) -> str | None:
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


def _image_format(data: bytes) -> str | None:
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
    if _image_format(data) is not None:
        return "image"
    if _video_demuxer(data) is not None:
        return "video"
    return None


def is_image(data: bytes) -> bool:
    """True if `data` starts like an image format `decode_image` reads."""
    return sniff_media(data) == "image"


def is_video(data: bytes) -> bool:
    """True if `data` starts like a video container `decode_video` reads."""
    return sniff_media(data) == "video"


# --------------------------------------------------------------------------- image headers


def _truncated(fmt: str) -> UnsupportedMediaError:
    return UnsupportedMediaError(f"truncated or corrupt {fmt} header")


def _png_size(data: bytes) -> tuple[int, int]:
    # Signature, then the IHDR chunk: length (4), b"IHDR", width (4), height (4), ...
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise _truncated("PNG")
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Width/height from the first SOFn segment before the first scan."""
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise _truncated("JPEG")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any SOF
            break
        if i + 2 > n:
            break
        length = struct.unpack_from(">H", data, i)[0]
        if length < 2:
            break
        if marker in _JPEG_SOF_MARKERS:
            # length (2), precision (1), height (2), width (2)
            if length < 7 or i + 7 > n:
                break
            height, width = struct.unpack_from(">HH", data, i + 3)
            return width, height
        i += length
    raise _truncated("JPEG")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = struct.unpack_from("<I", data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise _truncated("WebP")


def _gif_size(data: bytes) -> tuple[int, int]:
    if len(data) < 10:
        raise _truncated("GIF")
    width, height = struct.unpack_from("<HH", data, 6)
    return width, height


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 core header: 16-bit sizes
        if len(data) < 22:
            raise _truncated("BMP")
        width, height = struct.unpack_from("<HH", data, 18)
        return width, height
    if len(data) < 26:
        raise _truncated("BMP")
    width, height = struct.unpack_from("<ii", data, 18)
    return width, abs(height)  # negative height = top-down rows


_SIZE_READERS = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "webp": _webp_size,
    "gif": _gif_size,
    "bmp": _bmp_size,
}


def read_image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone (PNG, JPEG, WebP, GIF, BMP).

    Raises UnsupportedMediaError for any other format or a truncated header. Sizes may be
    0 or negative for malformed files; `decode_image` refuses those.
    """
    fmt = _image_format(data)
    if fmt is None:
        raise UnsupportedMediaError("not a PNG, JPEG, WebP, GIF or BMP image")
    return _SIZE_READERS[fmt](data)


def _jpeg_is_complete(data: bytes) -> bool:
    """True if an EOI marker follows the first scan. FF D9 cannot occur inside entropy-coded
    data (FF is always stuffed), so its absence means the file was cut short; libjpeg would
    only warn and return a half-grey image."""
    sos = data.find(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos + 2) >= 0


def _check_limit(name: str, value: float, *, integer: bool = False) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode a PNG/JPEG/WebP/GIF/BMP image to (H, W, 3) uint8 BGR.

    The header is parsed first and images with width*height > max_pixels are refused
    (MediaTooLargeError, code "image_too_large") before any pixel is decoded. Grayscale and
    alpha images come out as 3-channel BGR (alpha dropped); EXIF orientation is applied.
    Unknown formats, truncated or corrupt files raise UnsupportedMediaError.
    """
    _check_limit("max_pixels", max_pixels, integer=True)
    fmt = _image_format(data)
    width, height = read_image_size(data)
    if width <= 0 or height <= 0:
        raise UnsupportedMediaError(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise MediaTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, limit is {max_pixels}",
            code="image_too_large",
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
        raise MediaTooLargeError("decoded image exceeds the pixel limit", code="image_too_large")
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------- video decoding


@dataclass(frozen=True)
class DecodedVideo:
    """Decoded frames: `frames` are (height, width, 3) uint8 BGR, upright (rotation
    metadata applied); `fps` is the stream's average frame rate."""

    frames: list[np.ndarray]
    fps: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("frames must not be empty")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be positive and finite, got {self.fps!r}")

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def duration(self) -> float:
        """num_frames / fps, in seconds."""
        return len(self.frames) / self.fps


def _refuse_io_open(url: str, flags: int, options: dict[str, Any]) -> Any:
    """io_open hook for demuxing: uploads may not make FFmpeg open other resources
    (e.g. QuickTime external data references)."""
    raise PermissionError(f"refusing to open {url!r} referenced by the uploaded media")


def _open_video(data: bytes) -> av.container.InputContainer:
    demuxer = _video_demuxer(data)
    if demuxer is None:
        raise UnsupportedMediaError("not an MP4/MOV, WebM/MKV or AVI video")
    try:
        return av.open(io.BytesIO(data), mode="r", format=demuxer, io_open=_refuse_io_open)
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        logger.debug("cannot open %s video: %s", demuxer, exc)
        raise UnsupportedMediaError(f"unreadable {demuxer} video") from exc


@contextlib.contextmanager
def _reading_video(data: bytes) -> Iterator[av.container.InputContainer]:
    """An open input container; FFmpeg's errors while reading become UnsupportedMediaError."""
    container = _open_video(data)
    try:
        yield container
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        logger.debug("cannot decode video: %s", exc)
        raise UnsupportedMediaError("corrupt or undecodable video") from exc
    finally:
        container.close()


def _stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0 and math.isfinite(float(rate)):
            return float(rate)
    return None


def _declared_duration(container: av.container.InputContainer, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply display-matrix rotation (degrees counter-clockwise) in multiples of 90."""
    quarter_turns = round(rotation / 90) % 4
    if quarter_turns == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, quarter_turns))


def decode_video(
    data: bytes, *, max_frames: int, max_pixels: int, max_duration_s: float
) -> DecodedVideo:
    """Decode the first video stream of an MP4/MOV, WebM/MKV or AVI file held in memory.

    Limits are checked on the stream header (frame size, declared frame count and
    duration) before decoding, and again while decoding, so an oversized or overlong
    upload is refused early with MediaTooLargeError ("video_too_large" for pixels per
    frame, "video_too_long" for frames/duration). Frames are converted to BGR at the size
    of the first frame and rotated upright per the display matrix. Anything unreadable
    raises UnsupportedMediaError.
    """
    _check_limit("max_frames", max_frames, integer=True)
    _check_limit("max_pixels", max_pixels, integer=True)
    _check_limit("max_duration_s", max_duration_s)
    with _reading_video(data) as container:
        return _decode_frames(container, max_frames, max_pixels, max_duration_s)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaTooLargeError(
            f"video frames are {width}x{height} = {width * height} pixels, limit is {max_pixels}",
            code="video_too_large",
        )


def _too_long(what: str) -> MediaTooLargeError:
    return MediaTooLargeError(f"video is too long: {what}", code="video_too_long")


def _decode_frames(
    container: av.container.InputContainer,
    max_frames: int,
    max_pixels: int,
    max_duration_s: float,
) -> DecodedVideo:
    if not container.streams.video:
        raise UnsupportedMediaError("no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None:
        raise UnsupportedMediaError("the video codec is not supported")
    if ctx.width and ctx.height:
        _check_pixels(ctx.width, ctx.height, max_pixels)
    if stream.frames and stream.frames > max_frames:
        raise _too_long(f"{stream.frames} frames declared, limit is {max_frames}")
    declared = _declared_duration(container, stream)
    if declared is not None and declared > max_duration_s:
        raise _too_long(f"{declared:.2f} s declared, limit is {max_duration_s:.2f} s")
    stream.thread_type = "AUTO"

    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    first_time: float | None = None
    for frame in container.decode(stream):
        if len(frames) >= max_frames:
            raise _too_long(f"more than {max_frames} frames")
        _check_pixels(frame.width, frame.height, max_pixels)
        if frame.time is not None:
            first_time = frame.time if first_time is None else first_time
            if frame.time - first_time > max_duration_s:
                raise _too_long(f"frames past {max_duration_s:.2f} s")
        if size is None:
            size = (frame.width, frame.height)
        image = frame.to_ndarray(format="bgr24", width=size[0], height=size[1])
        frames.append(_upright(image, frame.rotation))
    if not frames:
        raise UnsupportedMediaError("video has no decodable frames")
    fps = _stream_fps(stream)
    if fps is None:
        fps = len(frames) / declared if declared else 25.0
    height, width = frames[0].shape[:2]
    logger.debug("decoded %d frames %dx%d at %.3f fps", len(frames), width, height, fps)
    return DecodedVideo(frames=frames, fps=fps, width=width, height=height)


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncodeOptions:
    """Output container and encoder settings.

    container: "webm" (VP9 + Opus) or "mp4" (H.264 + AAC, moov before mdat).
    vp9_crf: 0..63 constant quality (b:v 0). vp9_cpu_used: libvpx speed, -8..8.
    vp9_deadline: "realtime" | "good" | "best". x264_crf: 0..51. x264_preset / x264_profile:
    libx264 preset and profile. audio_bitrate: bits/s (6 k..510 k). keyframe_interval_s:
    max seconds between keyframes. threads: encoder threads (1..64).
    """

    container: ContainerName = "webm"
    vp9_crf: int = 30
    vp9_cpu_used: int = 8
    vp9_deadline: str = "realtime"
    x264_crf: float = 23.0
    x264_preset: str = "veryfast"
    x264_profile: str = "high"
    audio_bitrate: int = 64_000
    keyframe_interval_s: float = 4.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.container not in MIME_TYPES:
            raise ValueError(f"container must be 'webm' or 'mp4', got {self.container!r}")
        _check_int_range("vp9_crf", self.vp9_crf, 0, 63)
        _check_int_range("vp9_cpu_used", self.vp9_cpu_used, -8, 8)
        if self.vp9_deadline not in VP9_DEADLINES:
            raise ValueError(
                f"vp9_deadline must be one of {VP9_DEADLINES}, got {self.vp9_deadline!r}"
            )
        if not (
            isinstance(self.x264_crf, int | float)
            and not isinstance(self.x264_crf, bool)
            and 0 <= self.x264_crf <= 51
        ):
            raise ValueError(f"x264_crf must be in [0, 51], got {self.x264_crf!r}")
        if self.x264_preset not in X264_PRESETS:
            raise ValueError(f"x264_preset must be one of {X264_PRESETS}, got {self.x264_preset!r}")
        if self.x264_profile not in X264_PROFILES:
            raise ValueError(
                f"x264_profile must be one of {X264_PROFILES}, got {self.x264_profile!r}"
            )
        _check_int_range("audio_bitrate", self.audio_bitrate, 6_000, 510_000)
        if not (
            isinstance(self.keyframe_interval_s, int | float)
            and math.isfinite(self.keyframe_interval_s)
            and self.keyframe_interval_s > 0
        ):
            raise ValueError(
                f"keyframe_interval_s must be positive, got {self.keyframe_interval_s!r}"
            )
        _check_int_range("threads", self.threads, 1, 64)

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.container]


def _check_int_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class EncodedVideo:
    """An encoded file in memory. width/height are the encoded (even) size; duration is
    num_frames / fps of the video track; audio_duration is None without audio."""

    data: bytes
    mime_type: str
    num_frames: int
    duration: float
    width: int
    height: int
    fps: float
    audio_duration: float | None


def bgr_to_i420(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR, H and W even -> (H * 3 / 2, W) uint8 I420 (yuv420p planes Y, U,
    V stacked), BT.601 limited range like swscale's default; chroma is the 2x2 mean
    (cv2's COLOR_BGR2YUV_I420 point-samples it, which aliases on coloured edges)."""
    height, width = frame.shape[:2]
    ycbcr = cv2.transform(frame, _BGR_TO_YCBCR)
    chroma = cv2.resize(ycbcr, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    luma_size = height * width
    chroma_size = luma_size // 4
    out = np.empty(luma_size + 2 * chroma_size, dtype=np.uint8)
    out[:luma_size].reshape(height, width)[:] = ycbcr[:, :, 0]
    out[luma_size : luma_size + chroma_size].reshape(height // 2, width // 2)[:] = chroma[:, :, 1]
    out[luma_size + chroma_size :].reshape(height // 2, width // 2)[:] = chroma[:, :, 2]
    return out.reshape(height * 3 // 2, width)


def frame_rate(fps: float) -> Fraction:
    """Exact rational frame rate for `fps`: 25 -> 25/1, 29.97 -> 2997/100,
    30000/1001 (29.97002997...) -> 30000/1001."""
    if isinstance(fps, bool) or not isinstance(fps, int | float | Fraction):
        raise ValueError(f"fps must be a number, got {fps!r}")
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise ValueError(f"fps must be in (0, 1000], got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps too small: {fps!r}")
    return rate


def _prepare_audio(audio: np.ndarray | None, sample_rate: int | None) -> np.ndarray | None:
    """Validate mono audio (N,) float or int16 -> contiguous float32 in [-1, 1]."""
    if audio is None:
        return None
    if not isinstance(audio, np.ndarray) or audio.ndim != 1:
        raise ValueError(
            f"audio must be a 1-D (mono) numpy array, got {getattr(audio, 'shape', audio)!r}"
        )
    if audio.size == 0:
        raise ValueError("audio is empty")
    if sample_rate is None:
        raise ValueError("sample_rate is required when audio is given")
    _check_int_range("sample_rate", sample_rate, 1_000, 384_000)
    if audio.dtype == np.int16:
        samples = audio.astype(np.float32) / 32768.0
    elif np.issubdtype(audio.dtype, np.floating):
        samples = np.nan_to_num(audio.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    else:
        raise ValueError(f"audio dtype must be float or int16, got {audio.dtype}")
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0))


class _AudioFeed:
    """Speech resampled for the encoder a second at a time, as the video reaches it.

    Yields encoder-ready frames (codec format, 48 kHz, codec frame size, the last one
    short) with consecutive pts in 1/48000 units. Only about one second of resampled audio
    is held at a time, so memory does not grow with the length of the speech.
    """

    def __init__(
        self, samples: np.ndarray, sample_rate: int, ctx: av.audio.codeccontext.AudioCodecContext
    ) -> None:
        self._samples, self._rate = samples, sample_rate
        self._resampler = av.AudioResampler(
            format=ctx.format.name,
            layout=ctx.layout.name,
            rate=ctx.sample_rate,
            frame_size=ctx.frame_size or None,
        )
        self._time_base = Fraction(1, ctx.sample_rate)
        self._fed = 0  # source samples given to the resampler
        self._flushed = False
        self._pts = 0
        self._ready: deque[av.AudioFrame] = deque()

    def frames_before(self, limit: Fraction | None) -> Iterator[av.AudioFrame]:
        """The frames starting before output sample `limit` (all remaining if None)."""
        while True:
            while self._ready and (limit is None or self._ready[0].pts < limit):
                yield self._ready.popleft()
            if self._ready or not self._resample_more():
                return

    def _resample_more(self) -> bool:
        """Resample the next second of speech (or flush). False once everything is out."""
        if self._flushed:
            return False
        if self._fed < len(self._samples):
            chunk = self._samples[self._fed : self._fed + self._rate]
            source = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            source.sample_rate, source.pts = self._rate, self._fed
            source.time_base = Fraction(1, self._rate)
            self._fed += len(chunk)
            frames = self._resampler.resample(source)
        else:
            self._flushed = True
            frames = self._resampler.resample(None)
        for frame in frames:
            frame.pts, frame.time_base = self._pts, self._time_base
            self._pts += frame.samples
            self._ready.append(frame)
        return True


class _SharedReader(io.RawIOBase):
    """Independent read-only cursor over the output BytesIO.

    FFmpeg's mp4 muxer re-opens its output for reading to move the moov atom to the front
    (movflags=+faststart); this serves that re-open from memory instead of a file.
    """

    def __init__(self, target: io.BytesIO) -> None:
        super().__init__()
        self._target = target
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        saved = self._target.tell()
        try:
            self._target.seek(self._pos)
            count = self._target.readinto(buffer)
        finally:
            self._target.seek(saved)
        self._pos += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._target.getbuffer().nbytes + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


class VideoEncoder:
    """Streaming encoder into an in-memory WebM or MP4.

    Push frames one at a time with `write` (or several with `write_batch`) as they are
    produced, then call `finish`; only the encoder's own lookahead is buffered, never the
    clip. Use as a context manager (or call `close`) so an aborted encode frees FFmpeg.

    Frames are (height, width, 3) uint8 BGR exactly as given to the constructor. yuv420p
    needs even sizes, so an odd width/height is encoded with the last column/row cropped;
    the encoded size is `encoded_width` x `encoded_height`. Frames are converted with
    `bgr_to_i420` (BT.601 limited range, ~0.5 ms per 720x576 frame; swscale's bgr24 path
    via `VideoFrame.from_ndarray(..., "bgr24")` took 2.5-5 ms here) and the streams are
    tagged BT.601 / limited range so players use the same matrix.

    Audio, if given, is mono (N,) float in [-1, 1] (or int16) at `sample_rate`; it is
    resampled to 48 kHz and written whole, independently of the number of video frames,
    interleaved with the video by timestamp. Opus in WebM decodes to exactly the input
    length (pre-skip and end trimming are signalled); AAC in MP4 may decode up to one
    1024-sample frame (21 ms) longer. Frame k has pts k in time base 1/fps, fps a Fraction
    (29.97 -> 2997/100), so the video lasts exactly num_frames / fps (WebM rounds
    timestamps to the millisecond).

    Encoder choices (speed first: this runs per request on 2 CPU cores):
    - VP9: `deadline=realtime`, `cpu-used=8` (the fastest speed libvpx-vp9 accepts),
      `lag-in-frames=0` (no lookahead buffering), one thread by default: Wav2Lip keeps
      both cores busy while frames are encoded, and a second encoder thread (`row-mt=1`
      lets it split rows) made 5 s requests 5-7 % slower here; constant quality `crf=30`
      with `b:v 0`. On a 720x576 talking head this gives ~34 dB PSNR on the mouth region
      at ~0.5 Mbit/s; CRF 26 adds ~1 dB for +20 % size, and the speed setting, not CRF,
      dominates encode time (~0.3 s for 125 frames).
    - H.264: libx264 `preset=veryfast`, `crf=23` (x264's default quality point), no tune
      (film/animation tunes only shift grain/deblocking), profile high, yuv420p,
      `movflags=+faststart` so browsers can start playback before the whole file loads.
      FFmpeg re-reads the file to move the moov atom; `_SharedReader` serves that from
      the same BytesIO.
    - Audio: Opus 64 kbit/s (WebM) or AAC-LC 64 kbit/s (MP4), both mono 48 kHz.
    - A keyframe at least every `keyframe_interval_s` seconds for seeking.
    """

    def __init__(
        self,
        *,
        width: int,
        height: int,
        fps: float,
        audio: np.ndarray | None = None,
        sample_rate: int | None = None,
        options: EncodeOptions | None = None,
    ) -> None:
        _check_int_range("width", width, 2, 16384)
        _check_int_range("height", height, 2, 16384)
        self.options = options if options is not None else EncodeOptions()
        if not isinstance(self.options, EncodeOptions):
            raise ValueError(f"options must be EncodeOptions, got {type(self.options).__name__}")
        self.width, self.height = width, height
        self.encoded_width, self.encoded_height = width - width % 2, height - height % 2
        self.rate = frame_rate(fps)
        samples = _prepare_audio(audio, sample_rate)
        self._audio_duration = None if samples is None else samples.size / sample_rate
        self.num_frames = 0
        self._closed = False
        self._started = time.perf_counter()
        self._buffer = io.BytesIO()
        self._container = av.open(
            self._buffer,
            mode="w",
            format=self.options.container,
            container_options={"movflags": "+faststart"} if self.options.container == "mp4" else {},
            io_open=self._io_open,
        )
        try:
            self._video = self._add_video_stream()
            self._audio = None if samples is None else self._add_audio_stream()
            self._container.start_encoding()  # opens the codecs: audio frame_size is known
            self._audio_feed = (
                None
                if self._audio is None
                else _AudioFeed(samples, sample_rate, self._audio.codec_context)
            )
        except BaseException:
            self.close()
            raise

    # -- setup

    def _io_open(self, url: str, flags: int, options: dict[str, Any]) -> Any:
        if flags != 1:  # AVIO_FLAG_READ only: the faststart re-read of our own output
            raise PermissionError(f"refusing to open {url!r} for writing")
        return _SharedReader(self._buffer)

    def _add_video_stream(self) -> av.video.stream.VideoStream:
        opts = self.options
        if opts.container == "webm":
            codec = "libvpx-vp9"
            codec_options = {
                "deadline": opts.vp9_deadline,
                "cpu-used": str(opts.vp9_cpu_used),
                "row-mt": "1",
                "lag-in-frames": "0",
                "crf": str(opts.vp9_crf),
                "b": "0",
            }
        else:
            codec = "libx264"
            codec_options = {
                "preset": opts.x264_preset,
                "crf": f"{opts.x264_crf:g}",
                "profile": opts.x264_profile,
            }
        stream = self._container.add_stream(codec, rate=self.rate, options=codec_options)
        ctx = stream.codec_context
        ctx.width, ctx.height = self.encoded_width, self.encoded_height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = 1 / self.rate
        ctx.gop_size = max(1, round(opts.keyframe_interval_s * self.rate))
        ctx.thread_count = opts.threads
        ctx.colorspace = _AVCOL_SPC_SMPTE170M
        ctx.color_range = _AVCOL_RANGE_MPEG
        return stream

    def _add_audio_stream(self) -> av.audio.stream.AudioStream:
        codec = "libopus" if self.options.container == "webm" else "aac"
        stream = self._container.add_stream(codec, rate=AUDIO_RATE, layout="mono")
        stream.codec_context.bit_rate = self.options.audio_bitrate
        return stream

    # -- writing

    def write(self, frame: np.ndarray) -> None:
        """Encode one (height, width, 3) uint8 BGR frame."""
        if self._closed:
            raise RuntimeError("encoder is closed")
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise ValueError(f"frame {self.num_frames} must be a uint8 numpy array")
        if frame.shape != (self.height, self.width, 3):
            raise ValueError(
                f"frame {self.num_frames} has shape {frame.shape}, expected "
                f"{(self.height, self.width, 3)}"
            )
        image = frame[: self.encoded_height, : self.encoded_width]
        video_frame = av.VideoFrame.from_ndarray(bgr_to_i420(image), format="yuv420p")
        video_frame.colorspace = _AVCOL_SPC_SMPTE170M
        video_frame.color_range = _AVCOL_RANGE_MPEG
        video_frame.pts = self.num_frames
        video_frame.time_base = self._video.codec_context.time_base
        self._container.mux(self._video.encode(video_frame))
        self.num_frames += 1
        self._write_audio_until(self.num_frames / self.rate)

    def write_batch(self, frames: Iterable[np.ndarray]) -> None:
        """Encode several frames: a (k, height, width, 3) uint8 array or an iterable of
        (height, width, 3) frames."""
        for frame in frames:
            self.write(frame)

    def _write_audio_until(self, seconds: Fraction | None) -> None:
        """Encode the queued audio frames starting before `seconds` (all if None)."""
        if self._audio_feed is None:
            return
        limit = None if seconds is None else seconds * AUDIO_RATE
        for frame in self._audio_feed.frames_before(limit):
            self._container.mux(self._audio.encode(frame))

    def finish(self) -> EncodedVideo:
        """Flush encoders, finalise the container and return the file."""
        if self._closed:
            raise RuntimeError("encoder is closed")
        try:
            if self.num_frames == 0:
                raise ValueError("no frames were written")
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._write_audio_until(None)
                self._container.mux(self._audio.encode(None))
            self._container.close()
            self._closed = True
            data = self._buffer.getvalue()
        finally:
            self.close()
        result = EncodedVideo(
            data=data,
            mime_type=self.options.mime_type,
            num_frames=self.num_frames,
            duration=float(self.num_frames / self.rate),
            width=self.encoded_width,
            height=self.encoded_height,
            fps=float(self.rate),
            audio_duration=self._audio_duration,
        )
        logger.debug(
            "encoded %d frames %dx%d to %s: %d bytes in %.3f s",
            result.num_frames,
            result.width,
            result.height,
            self.options.container,
            len(data),
            time.perf_counter() - self._started,
        )
        return result

    def close(self) -> None:
        """Release the encoder without producing output (idempotent)."""
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except (av.FFmpegError, OSError, ValueError) as exc:
                logger.debug("ignoring error while aborting encode: %s", exc)
        # The container holds our io_open hook (a bound method), so it and the encoder form
        # a reference cycle; drop our side now so FFmpeg's buffers are freed at once rather
        # than at the next cyclic garbage collection (tens of MB per encode).
        self._container = self._video = self._audio = self._audio_feed = None
        self._buffer = io.BytesIO()

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def encode_video(
    frames: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    options: EncodeOptions | None = None,
) -> EncodedVideo:
    """Encode single (height, width, 3) uint8 BGR frames, consumed one by one (a generator
    is never materialised), plus optional mono audio, to WebM or MP4 in memory.

    See `VideoEncoder` for codec settings, odd-size cropping and timing guarantees.
    """
    with VideoEncoder(
        width=width,
        height=height,
        fps=fps,
        audio=audio,
        sample_rate=sample_rate,
        options=options,
    ) as encoder:
        for frame in frames:
            encoder.write(frame)
        return encoder.finish()


# --------------------------------------------------------------------------- probing


def probe_video(data: bytes) -> dict[str, Any]:
    """Decode every frame/sample of a video file and describe it.

    Keys: format, video_codec, width, height, fps (stream average rate), num_frames
    (decoded), video_duration (first frame start to last frame end, s), audio_codec,
    audio_sample_rate, audio_channels, audio_duration (decoded samples / rate, s); audio
    keys are None without an audio stream. Raises UnsupportedMediaError if unreadable.
    """
    with _reading_video(data) as container:
        return _probe(container)


def _probe(container: av.container.InputContainer) -> dict[str, Any]:
    if not container.streams.video:
        raise UnsupportedMediaError("no video stream")
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    fps = _stream_fps(video)
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
