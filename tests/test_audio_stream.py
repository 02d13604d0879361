"""Tests for lipsync/audio_stream.py: streamed mel windows equal the offline path's, exactly, and
come out as soon as the look-ahead allows."""

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from lipsync import audio
from lipsync.audio_stream import LOOKAHEAD_SAMPLES, LOOKAHEAD_SECONDS, MelStream, SpeechStream

SPEECH_PATH = Path(__file__).resolve().parent.parent / "test_assets" / "speech.wav"
RATES = [16000, 22050, 44100, 48000]
FPS_VALUES = [25, 29.97]
CHUNKINGS = ["10ms", "20ms", "40ms", "333ms", "random", "whole"]
# soxr HQ's own delay into 16 kHz, measured with every chunking used here: 40.2 ms at
# 22.05/44.1 kHz, 36.6 ms at 48 kHz. The bound keeps the stream's latency in check.
RESAMPLER_DELAY_BOUND_S = {16000: 0.0, 22050: 0.041, 44100: 0.041, 48000: 0.037}


@pytest.fixture(scope="module")
def speech16k() -> np.ndarray:
    wav, rate = sf.read(SPEECH_PATH, dtype="float32")
    assert rate == audio.SAMPLE_RATE and wav.ndim == 1 and len(wav) > 4 * rate
    return wav


def noise(num_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(num_samples)).clip(-1, 1).astype(np.float32)


def at_rate(wav16k: np.ndarray, rate: int) -> np.ndarray:
    return audio.resample(wav16k, audio.SAMPLE_RATE, rate)


def chunk_sizes(chunking: str, rate: int, total: int, seed: int = 0) -> list[int]:
    if chunking == "whole":
        return [total]
    if chunking == "random":
        rng = np.random.default_rng(seed)
        sizes = list(rng.integers(1, rate // 5, size=total // 10 + 1))
    else:
        sizes = [1 if chunking == "1" else int(rate * float(chunking[:-2]) / 1000)]
        sizes *= math.ceil(total / sizes[0])
    return sizes


def offline_windows(wav: np.ndarray, rate: int, fps: float) -> np.ndarray:
    """The service's offline path: resample, melspectrogram, one window per video frame."""
    wav16k = audio.resample(wav, rate)
    num_frames = audio.num_video_frames(len(wav16k), fps)
    return audio.MelWindows(audio.melspectrogram(wav16k), fps, num_frames)[:]


def stream(wav: np.ndarray, rate: int, fps: float, sizes: list[int], on_push=None) -> np.ndarray:
    """Push ``wav`` in chunks of ``sizes``; returns all windows. ``on_push(stream, windows)``
    is called after every push."""
    speech = SpeechStream(fps, rate)
    parts, position = [], 0
    for size in sizes:
        if position >= len(wav):
            break
        windows = speech.push(wav[position : position + size])
        position += size
        assert windows.dtype == np.float32 and windows.flags.c_contiguous
        assert windows.shape[1:] == (audio.N_MELS, audio.MEL_WINDOW)
        if on_push is not None:
            on_push(speech, windows)
        parts.append(windows)
    parts.append(speech.finish())
    assert speech.finished and speech.num_input_samples == len(wav)
    return np.concatenate(parts)


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("fps", FPS_VALUES)
@pytest.mark.parametrize("rate", RATES)
def test_streamed_speech_windows_equal_offline(speech16k, rate, fps, chunking):
    wav = at_rate(speech16k, rate)
    expected = offline_windows(wav, rate, fps)
    got = stream(wav, rate, fps, chunk_sizes(chunking, rate, len(wav), seed=rate))
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    # The speech really is in the windows (not silence throughout).
    assert (expected > -audio.MAX_ABS_VALUE).mean() > 0.5


@pytest.mark.parametrize("rate", RATES)
def test_streamed_noise_windows_equal_offline(rate):
    wav = noise(int(2.345 * rate), seed=rate)
    for fps, seed in ((25, 1), (29.97, 2), (60, 3), (12.5, 4)):
        sizes = chunk_sizes("random", rate, len(wav), seed=seed)
        np.testing.assert_array_equal(
            stream(wav, rate, fps, sizes), offline_windows(wav, rate, fps)
        )


@pytest.mark.parametrize(
    ("rate", "fps"), [(16000, 25), (22050, 29.97), (44100, 25), (48000, 29.97)]
)
def test_one_sample_chunks(speech16k, rate, fps):
    wav = at_rate(speech16k[16000:24000], rate)  # 0.5 s of speech
    emitted = []
    got = stream(wav, rate, fps, [1] * len(wav), lambda s, w: emitted.append(s.num_frames))
    np.testing.assert_array_equal(got, offline_windows(wav, rate, fps))
    assert emitted[-1] > 0  # frames came out before finish


def test_resample_stream_equals_offline_resample(speech16k):
    """The offline path resamples in one call; the stream chunk by chunk: same samples."""
    for rate in (8000, 22050, 44100, 48000, 192000):
        wav = at_rate(speech16k[:32000], rate)
        for sizes in (chunk_sizes("10ms", rate, len(wav)), chunk_sizes("random", rate, len(wav))):
            resampler = soxr.ResampleStream(rate, audio.SAMPLE_RATE, 1, dtype="float32")
            parts, position = [], 0
            for size in sizes:
                parts.append(resampler.resample_chunk(wav[position : position + size]))
                position += size
            parts.append(resampler.resample_chunk(wav[:0], last=True))
            np.testing.assert_array_equal(np.concatenate(parts), audio.resample(wav, rate))


def test_mel_stream_columns_equal_melspectrogram(speech16k):
    wav = speech16k[: 3 * audio.SAMPLE_RATE + 77]
    expected = audio.melspectrogram(wav)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        mel, parts, position = MelStream(), [], 0
        while position < len(wav):
            size = int(rng.integers(1, 3000))
            parts.append(mel.push(wav[position : position + size]))
            position = min(position + size, len(wav))
            # Column c is out once samples up to c * HOP + N_FFT // 2 are in (and the left
            # reflection's MIN_MEL_SAMPLES): not later, not earlier.
            ready = 0
            if position >= audio.MIN_MEL_SAMPLES:
                ready = (position - audio.N_FFT // 2) // audio.HOP_LENGTH + 1
            assert mel.num_columns == ready
        parts.append(mel.finish())
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), expected)


def test_preemphasis_carries_previous_sample():
    wav = noise(1000, seed=5)
    whole = audio.preemphasis(wav)
    pieces = [(0, 1, 0.0), (1, 300, wav[0]), (300, 1000, wav[299])]
    chunked = np.concatenate([audio.preemphasis(wav[a:b], prev) for a, b, prev in pieces])
    np.testing.assert_array_equal(chunked, whole)
    assert whole[0] == wav[0]


# ----------------------------------------------------------------------------- latency


@pytest.mark.parametrize("chunking", ["1", "10ms", "40ms", "random"])
@pytest.mark.parametrize("fps", FPS_VALUES)
@pytest.mark.parametrize("rate", RATES)
def test_frames_come_out_as_soon_as_the_look_ahead_allows(speech16k, rate, fps, chunking):
    assert LOOKAHEAD_SAMPLES == 3400 and LOOKAHEAD_SECONDS == 0.2125
    seconds = 0.4 if chunking == "1" else 3.0
    wav = at_rate(speech16k[: int(seconds * audio.SAMPLE_RATE)], rate)
    bound = RESAMPLER_DELAY_BOUND_S[rate]
    state = {"frames": 0, "max_delay": 0.0}

    def check(speech: SpeechStream, windows: np.ndarray) -> None:
        assert len(windows) == speech.num_frames - state["frames"]
        state["frames"] = speech.num_frames
        input_seconds = speech.num_input_samples / rate
        # The resampler holds back at most its own delay, and reports it.
        delay = speech.resampler_delay_seconds
        assert input_seconds - speech.num_samples_16k / audio.SAMPLE_RATE == pytest.approx(
            delay, abs=1e-9
        )
        assert 0 <= delay <= bound
        state["max_delay"] = max(state["max_delay"], delay)
        # Exactly the frames whose window lies in the 16 kHz speech received are out.
        ready = 0
        while int(ready * 80.0 / fps) * audio.HOP_LENGTH + LOOKAHEAD_SAMPLES <= (
            speech.num_samples_16k
        ):
            ready += 1
        assert speech.num_frames == ready
        # Hence frame t is out once the input covers t / fps + 0.2125 s + the delay.
        due = math.floor((input_seconds - LOOKAHEAD_SECONDS - bound) * fps + 1e-9) + 1
        assert speech.num_frames >= due

    got = stream(wav, rate, fps, chunk_sizes(chunking, rate, len(wav), seed=7), check)
    np.testing.assert_array_equal(got, offline_windows(wav, rate, fps))
    assert state["frames"] >= (seconds - LOOKAHEAD_SECONDS - bound) * fps - 1
    if rate != audio.SAMPLE_RATE:
        assert state["max_delay"] > 0.02  # the resampler's delay was really measured


# ----------------------------------------------------------------------------- short input


@pytest.mark.parametrize("fps", FPS_VALUES)
@pytest.mark.parametrize(
    "num_samples", [401, 402, 599, 600, 601, 639, 640, 641, 799, 800, 3399, 3400, 3401, 4000]
)
def test_short_speech_like_offline(num_samples, fps):
    wav = noise(num_samples, seed=num_samples)
    expected = offline_windows(wav, audio.SAMPLE_RATE, fps)
    assert len(expected) == audio.num_video_frames(num_samples, fps) >= 1
    pushed = []
    for sizes in ([num_samples], [1] * num_samples, [100] * 41):
        got = stream(wav, audio.SAMPLE_RATE, fps, sizes, lambda s, w: pushed.append(len(w)))
        np.testing.assert_array_equal(got, expected)
    # Frame 0 needs LOOKAHEAD_SAMPLES before finish; with fewer than MEL_WINDOW columns
    # it is padded with silence.
    assert (sum(pushed) > 0) == (num_samples >= LOOKAHEAD_SAMPLES)
    num_columns = 1 + num_samples // audio.HOP_LENGTH
    assert np.all(expected[0, :, num_columns:] == audio.SILENCE_VALUE)
    assert (num_columns < audio.MEL_WINDOW) == (num_samples < 3000)


@pytest.mark.parametrize("num_samples", [0, 1, 200, 400])
def test_too_short_speech_fails_like_offline(num_samples):
    wav = noise(num_samples, seed=1)
    with pytest.raises(ValueError, match="at least 401") as offline:
        audio.melspectrogram(wav)
    speech = SpeechStream(25)
    assert len(speech.push(wav)) == 0
    with pytest.raises(ValueError, match="at least 401") as streamed:
        speech.finish()
    assert str(streamed.value) == str(offline.value)
    assert speech.finished


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_short_speech_at_other_rates_like_offline(rate):
    for num_samples in (1, 100, int(0.0251 * rate), int(0.03 * rate), int(0.05 * rate)):
        wav = noise(num_samples, seed=num_samples)
        speech = SpeechStream(25, rate)
        pushed = speech.push(wav)
        if len(audio.resample(wav, rate)) < audio.MIN_MEL_SAMPLES:
            with pytest.raises(ValueError, match="at least 401"):
                speech.finish()
            continue
        got = np.concatenate([pushed, speech.finish()])
        np.testing.assert_array_equal(got, offline_windows(wav, rate, 25))


# ----------------------------------------------------------------------------- API


def test_long_stream_holds_bounded_state():
    speech = SpeechStream(25, 48000)
    chunk = noise(1920, seed=3)  # 40 ms
    frames = 0
    for _ in range(1500):  # 60 s
        frames += len(speech.push(chunk))
        assert speech._columns.shape[1] <= 2 * audio.MEL_WINDOW
        assert speech._mel._padded is None or len(speech._mel._padded) <= 2 * audio.N_FFT
    frames += len(speech.finish())
    assert frames == speech.num_frames == 1500


def test_empty_pushes_and_frame_counter(speech16k):
    speech = SpeechStream(25)
    assert speech.push(np.zeros(0, np.float32)).shape == (0, audio.N_MELS, audio.MEL_WINDOW)
    total = 0
    for start in range(0, 16000, 640):
        total += len(speech.push(speech16k[start : start + 640]))
        assert len(speech.push([])) == 0
        assert speech.num_frames == total
    total += len(speech.finish())
    assert total == speech.num_frames == 25


def test_rejects_bad_input():
    for rate in (0, 3999, 384001, 16000.5, True, "16000"):
        with pytest.raises(ValueError, match="sample"):
            SpeechStream(25, rate)
    for fps in (0, -1, float("nan"), "x"):
        with pytest.raises(ValueError, match="fps"):
            SpeechStream(fps)
    speech = SpeechStream(25)
    with pytest.raises(ValueError, match=r"shape \(2, 10\)"):
        speech.push(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        speech.push(np.array([0.0, np.nan], np.float32))
    speech.push(noise(1000, seed=0))
    speech.finish()
    with pytest.raises(RuntimeError, match="finished"):
        speech.push(noise(10, seed=0))
    with pytest.raises(RuntimeError, match="finished"):
        speech.finish()
