"""Streaming output: the live encoder (WebM live clusters, fragmented MP4), the streamed
generation (chunks as batches are produced, abandoning stops it) and the Python API."""

from __future__ import annotations

import gc
import io
import re
import struct

import av
import numpy as np
import pytest
from helpers import ASSETS, FACE_BOX, probe_video, smooth_image

from lipsync import audio, generation
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.faces import batch_bounds, cut_batches
from lipsync.media.encode import VideoEncoder, encode_video
from lipsync.media.encode_options import EncodeOptions
from lipsync.options import RenderOptions
from lipsync.talking_head import Wav2LipTalkingHead

CONTAINERS = ["webm", "mp4"]
# Live H.264 runs x264 without B-frames and with a 1-frame lookahead, so its frames are
# not bit-identical to the whole-file encode: its mean PSNR against the source frames
# stays within this many dB of the whole file's. VP9's bitstream is the same in both
# modes: WebM frames must be identical.
LIVE_H264_PSNR_LOSS_DB = 2.5  # measured 1.1 dB (hard paste) and 1.8 dB (soft blend)


def sine(seconds: float, sample_rate: int = 16_000) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def moving_frames(count: int) -> list[np.ndarray]:
    """`count` distinct 64x48 BGR frames (a smooth image shifted a pixel per frame)."""
    base = smooth_image(48, 96)
    return [np.ascontiguousarray(base[:, k : k + 64]) for k in range(count)]


def decoded_frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def packet_counts(data: bytes) -> dict[str, int]:
    """Packets with data per stream type, demuxed without decoding."""
    counts = {"video": 0, "audio": 0}
    with av.open(io.BytesIO(data)) as container:
        for packet in container.demux():
            if packet.size:
                counts[packet.stream.type] += 1
    return counts


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def assert_same_frames(container: str, streamed: bytes, whole: bytes, source) -> None:
    """Same frame count; WebM frames identical, MP4 as close to `source` (the frames fed to
    the encoder) as the whole-file encode, within LIVE_H264_PSNR_LOSS_DB."""
    ours, reference = decoded_frames(streamed), decoded_frames(whole)
    assert len(ours) == len(reference) == len(source)
    if container == "webm":
        for k, (a, b) in enumerate(zip(ours, reference, strict=True)):
            assert np.array_equal(a, b), f"frame {k} differs"
        return
    live_db = np.mean([psnr(a, b) for a, b in zip(ours, source, strict=True)])
    whole_db = np.mean([psnr(a, b) for a, b in zip(reference, source, strict=True)])
    assert 30 < whole_db < live_db + LIVE_H264_PSNR_LOSS_DB


def top_level_boxes(data: bytes) -> list[bytes]:
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        assert size >= 8
        boxes.append(kind)
        pos += size
    assert pos == len(data)
    return boxes


def live_encode(
    container: str, frames: list[np.ndarray], batch: int, first_batch: int | None = None
) -> list[bytes]:
    """Encode in live mode in batches (the first `first_batch` frames plus those the
    encoder holds back); -> the chunk drained after each batch, then the tail."""
    options = EncodeOptions(container=container)
    with VideoEncoder(
        width=64, height=48, fps=25, audio=sine(1.2), sample_rate=16_000, options=options, live=True
    ) as encoder:
        chunks = []
        first = batch if first_batch is None else first_batch + encoder.held_frames
        for start, stop in batch_bounds(len(frames), batch, first):
            encoder.write_batch(frames[start:stop])
            chunks.append(encoder.drain())
        assert encoder.finish().data == b""  # live: the bytes only come from drain
        chunks.append(encoder.drain())
    return chunks


# --------------------------------------------------------------------------- live encoder


@pytest.mark.parametrize("container", CONTAINERS)
def test_live_chunks_decode_to_the_whole_file_frames(container: str) -> None:
    frames = moving_frames(30)
    chunks = live_encode(container, frames, batch=4)
    whole = encode_video(
        frames,
        width=64,
        height=48,
        fps=25,
        audio=sine(1.2),
        sample_rate=16_000,
        options=EncodeOptions(container=container),
    )
    streamed = b"".join(chunks)
    assert_same_frames(container, streamed, whole.data, frames)
    info = probe_video(streamed)
    assert (info["num_frames"], info["audio_codec"]) == (
        30,
        {"webm": "opus", "mp4": "aac"}[container],
    )
    assert info["audio_duration"] == pytest.approx(1.2, abs=0.03)
    assert sum(map(bool, chunks[:-1])) >= len(chunks) - 2  # bytes leave batch by batch


@pytest.mark.parametrize("container", CONTAINERS)
def test_first_chunk_alone_holds_playable_video_and_its_speech(container: str) -> None:
    first = live_encode(container, moving_frames(12), batch=8, first_batch=4)[0]
    assert len(decoded_frames(first)) >= 1
    counts = packet_counts(first)
    assert counts["video"] >= 1 and counts["audio"] >= 1


def test_live_mp4_is_fragmented_with_the_moov_first() -> None:
    boxes = top_level_boxes(b"".join(live_encode("mp4", moving_frames(30), batch=8)))
    assert boxes[:2] == [b"ftyp", b"moov"]
    assert boxes.count(b"moof") >= 5 and boxes.count(b"moof") == boxes.count(b"mdat")
    assert boxes.index(b"moof") < boxes.index(b"mdat")


def test_live_webm_is_written_once_front_to_back() -> None:
    chunks = live_encode("webm", moving_frames(30), batch=8)
    assert chunks[0].startswith(b"\x1a\x45\xdf\xa3")  # EBML header first
    data = b"".join(chunks)
    # Live: no Cues (an index written at the end needs seeking back to reference it) and
    # the Segment size left "unknown" (0x01FFFFFFFFFFFFFF).
    assert b"\x1c\x53\xbb\x6b" not in data
    segment = data.index(b"\x18\x53\x80\x67")
    assert data[segment + 4 : segment + 12] == b"\x01\xff\xff\xff\xff\xff\xff\xff"


def webm_block_times(data: bytes) -> list[tuple[int, int]]:
    """(track number, timecode in ms) of every SimpleBlock, in file order."""
    clusters, times, position, cluster_time = {0x18538067, 0x1F43B675}, [], 0, 0

    def vint(at: int, keep_marker: bool = False) -> tuple[int, int]:
        length = 9 - data[at].bit_length()
        value = data[at] if keep_marker else data[at] & (0xFF >> length)
        for byte in data[at + 1 : at + length]:
            value = value << 8 | byte
        return value, length

    while position < len(data):
        element, id_length = vint(position, keep_marker=True)
        size, size_length = vint(position + id_length)
        body = position + id_length + size_length
        if element in clusters:  # a master element: walk into it
            position = body
            continue
        if element == 0xE7:  # the cluster's timecode
            cluster_time = int.from_bytes(data[body : body + size], "big")
        elif element == 0xA3:  # SimpleBlock: track number, 16-bit relative timecode
            track, track_length = vint(body)
            offset = int.from_bytes(data[body + track_length : body + track_length + 2], "big")
            times.append((track, cluster_time + (offset - (offset >> 15 << 16))))
        position = body + size
    return times


@pytest.mark.parametrize("fps", [25, 29.97])
def test_live_webm_block_timecodes_never_go_back(fps: float) -> None:
    """Chromium's MediaSource refuses a cluster whose blocks go back in time; the muxer
    writes Opus blocks 6.5 ms (the codec delay) after their place in the interleaving."""
    frames = moving_frames(30)
    with VideoEncoder(
        width=64, height=48, fps=fps, audio=sine(1.2), sample_rate=16_000, live=True
    ) as encoder:
        encoder.write_batch(frames)
        encoder.finish()
        data = encoder.drain()
    times = webm_block_times(data)
    assert {track for track, _ in times} == {1, 2}  # video and audio blocks
    assert [t for _, t in times] == sorted(t for _, t in times)
    video = [t for track, t in times if track == 1]
    assert video == [round(k * 1000 / fps) for k in range(30)]
    assert len(decoded_frames(data)) == 30


def test_codecs_and_drain_needs_live() -> None:
    def encoder(container: str, with_audio: bool, live: bool = True) -> VideoEncoder:
        return VideoEncoder(
            width=64,
            height=48,
            fps=25,
            audio=sine(0.2) if with_audio else None,
            sample_rate=16_000,
            options=EncodeOptions(container=container),
            live=live,
        )

    with encoder("webm", True) as webm, encoder("mp4", True) as mp4, encoder("mp4", False) as mute:
        assert webm.codecs == "vp9,opus"
        assert re.fullmatch(r"avc1\.64[0-9a-f]{4},mp4a\.40\.2", mp4.codecs)
        assert re.fullmatch(r"avc1\.64[0-9a-f]{4}", mute.codecs)
    with encoder("webm", True, live=False) as whole, pytest.raises(RuntimeError, match="live"):
        whole.drain()


def test_cut_batches_decides_each_batchs_rows_when_it_is_reached() -> None:
    asked: list[int] = []

    def rows(left: int) -> int:
        asked.append(left)
        return 1 if len(asked) in (2, 3) else left  # a live session open for two batches

    cut = cut_batches(batch_bounds(40, 16, 4), rows)
    assert next(cut) == (0, 4) and asked == [4]  # nothing decided ahead
    assert list(cut) == [(4, 5), (5, 6), (6, 20), (20, 36), (36, 40)]
    with pytest.raises(ValueError, match=r"rows\(3\) must be in \[1, 3\], got 0"):
        list(cut_batches([(0, 3)], lambda left: 0))


def test_batch_bounds() -> None:
    assert batch_bounds(0, 16, 4) == []
    assert batch_bounds(3, 16, 4) == [(0, 3)]
    assert batch_bounds(40, 16, 4) == [(0, 4), (4, 20), (20, 36), (36, 40)]
    assert batch_bounds(40, 16) == [(0, 16), (16, 32), (32, 40)]
    with pytest.raises(ValueError, match="first_batch"):
        batch_bounds(10, 16, 0)


# --------------------------------------------------------------------------- generation


class CountingEngine(Wav2LipInferenceEngine):
    """Counts the batches its `iter_frames` hands out."""

    batches = 0

    def iter_frames(self, *args, **kwargs):
        for batch in super().iter_frames(*args, **kwargs):
            self.batches += 1
            yield batch


@pytest.fixture(scope="module")
def engine(untrained_models) -> CountingEngine:
    return CountingEngine(untrained_models, precision="f32", batch_size=8)


@pytest.fixture(scope="module")
def prepared(engine, face_image):
    return engine.prepare_face(face_image, RenderOptions(box=FACE_BOX))


@pytest.fixture(scope="module")
def speech(speech_bytes) -> generation.Speech:
    """The first 1.5 s of the test speech: 38 frames at 25 fps (batches 4, 8, 8, 8, 8, 2)."""
    track, rate = audio.read_audio(speech_bytes)
    track = track[: int(1.5 * rate)]
    return generation.Speech(track, rate, audio.resample(track, rate))


@pytest.fixture
def encoders(monkeypatch) -> list[VideoEncoder]:
    """Every VideoEncoder the generation creates."""
    made: list[VideoEncoder] = []

    class Recorded(VideoEncoder):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(generation, "VideoEncoder", Recorded)
    return made


def stream(engine, prepared, speech, container: str = "webm", **kwargs):
    options = RenderOptions(box=FACE_BOX)
    return generation.generate_stream(
        engine, prepared, speech, options, EncodeOptions(container=container), **kwargs
    )


@pytest.mark.parametrize("container", CONTAINERS)
def test_stream_is_the_whole_file_video(engine, prepared, speech, container) -> None:
    options = RenderOptions(box=FACE_BOX)
    whole = generation.generate(engine, prepared, speech, options, EncodeOptions(container))
    streamed = stream(engine, prepared, speech, container)
    assert (streamed.num_frames, streamed.fps, streamed.width, streamed.height) == (
        38,
        25,
        512,
        512,
    )
    assert streamed.mime_type == f"video/{container}"
    data = b"".join(streamed)
    windows = generation.speech_mel_windows(speech, 25)
    source = [frame for batch in engine.iter_frames(prepared, windows) for frame in batch]
    assert_same_frames(container, data, whole.video.data, source)
    assert whole.video.num_frames == 38
    result = streamed.result
    assert result is not None and result.video.num_frames == 38
    assert {"mel", "infer", "paste", "encode"} <= set(result.timings_ms)
    assert set(whole.timings_ms) == set(result.timings_ms)


@pytest.mark.parametrize("container", CONTAINERS)
def test_bytes_leave_before_the_generation_ends(engine, prepared, speech, encoders, container):
    engine.batches = 0
    chunks = stream(engine, prepared, speech, container)
    first = next(chunks)
    assert engine.batches == 1  # one small batch: 4 frames (+2 held by live x264)
    assert chunks.result is None and not encoders[0].closed
    assert len(decoded_frames(first)) >= 1
    assert packet_counts(first)["audio"] >= 1
    rest = list(chunks)
    num_batches = len(batch_bounds(38, 8, 4 + encoders[0].held_frames))
    assert engine.batches == num_batches and len(rest) >= num_batches - 1
    assert encoders[0].closed and chunks.result.video.num_frames == 38


@pytest.mark.parametrize("how", ["close", "drop"])
def test_abandoning_the_stream_stops_the_generation(engine, prepared, speech, encoders, how):
    engine.batches = 0
    chunks = stream(engine, prepared, speech)
    next(chunks)
    if how == "close":
        chunks.close()
    else:
        del chunks
        gc.collect()
    assert engine.batches == 1
    assert len(encoders) == 1 and encoders[0].closed


def test_a_stream_closed_before_it_starts_frees_its_encoder(engine, prepared, speech, encoders):
    engine.batches = 0
    with stream(engine, prepared, speech):
        pass
    assert engine.batches == 0 and encoders[0].closed


def test_check_raising_mid_stream_stops_it(engine, prepared, speech, encoders) -> None:
    calls = []

    def check() -> None:
        calls.append(None)
        if len(calls) == 3:
            raise TimeoutError("deadline")

    engine.batches = 0
    chunks = stream(engine, prepared, speech, check=check)
    received = [next(chunks), next(chunks)]
    with pytest.raises(TimeoutError):
        next(chunks)
    assert all(received) and engine.batches == 2 and encoders[0].closed
    assert chunks.result is None


def test_audio_too_short_is_refused_before_any_byte(engine, prepared, encoders) -> None:
    silence = np.zeros(100, np.float32)
    with pytest.raises(generation.AudioError):
        stream(engine, prepared, generation.Speech(silence, 16_000, silence))
    assert encoders == []


# --------------------------------------------------------------------------- Python API


def test_talking_head_stream_and_frames(untrained_models) -> None:
    speech = ASSETS / "speech.wav"
    with Wav2LipTalkingHead(ASSETS / "face.jpg", model_path=untrained_models, box=FACE_BOX) as head:
        chunks = head.stream(speech, "mp4")
        assert (chunks.num_frames, chunks.mime_type) == (138, "video/mp4")
        info = probe_video(b"".join(chunks))
        assert (info["video_codec"], info["audio_codec"], info["num_frames"]) == (
            "h264",
            "aac",
            138,
        )
        assert info["audio_duration"] == pytest.approx(5.5, abs=0.05)
        frames = head.iter_frames(speech, fps=10)
        assert next(frames).shape == (512, 512, 3)
        speech16k = audio.resample(*audio.read_audio(speech.read_bytes()))
        assert 1 + sum(1 for _ in frames) == audio.num_video_frames(len(speech16k), 10)
        with pytest.raises(ValueError, match="fmt"):
            head.stream(speech, "avi")
