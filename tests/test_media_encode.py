"""Tests for lipsync.media.encode: in-memory WebM/MP4 encoding, audio, colours, options."""

from __future__ import annotations

import gc
import io
import pathlib
import struct
import weakref
from fractions import Fraction

import av
import numpy as np
import pytest
from helpers import (
    BIG,
    BLUE,
    RED,
    probe_video,
    smooth_image,
)

from lipsync.media import encode_audio
from lipsync.media.colour import bgr_to_i420
from lipsync.media.encode import EncodedVideo, VideoEncoder, encode_video, frame_rate
from lipsync.media.encode_options import EncodeOptions
from lipsync.media.errors import UnsupportedMediaError
from lipsync.media.video import decode_video


def sine(seconds: float, sample_rate: int = 16_000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode_still_with_sine(
    container: str, *, num_frames: int, audio_seconds: float
) -> EncodedVideo:
    """`num_frames` copies of one 64x48 image at 25 fps with a 16 kHz sine of `audio_seconds`."""
    return encode_video(
        [smooth_image(48, 64)] * num_frames,
        width=64,
        height=48,
        fps=25,
        audio=sine(audio_seconds),
        sample_rate=16_000,
        options=EncodeOptions(container=container),
    )


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
    out = encode_still_with_sine("mp4", num_frames=5, audio_seconds=0.2)
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
    out = encode_still_with_sine(container, num_frames=3, audio_seconds=0.1)
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
    feed = encode_audio.AudioFeed(speech, 44_100, ctx)

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
