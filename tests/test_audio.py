"""Tests for audio.py.

librosa and scipy are used here only as an independent reference implementation.
Measured on the speech-like signals below: |ours - librosa(pad_mode="reflect")| <= 1.5e-7,
while librosa's zero padding differs by 0.23-0.86 in the first and last columns.
"""

import io

import av
import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from lipsync import audio

MEL_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- helpers


def speech_like(num_samples: int, seed: int = 0, sr: int = audio.SAMPLE_RATE) -> np.ndarray:
    """Harmonics of a gliding pitch, amplitude-modulated at syllable rate, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    wav = 0.1 * envelope * voiced + 0.01 * rng.standard_normal(num_samples)
    return wav.astype(np.float32)


def librosa_mel(wav: np.ndarray, pad_mode: str) -> np.ndarray:
    """Wav2Lip's melspectrogram written with scipy + librosa (as with librosa 0.7)."""
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, pad_mode=pad_mode)
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(stft))) - 20
    return np.clip(8 * ((db + 100) / 100) - 4, -4, 4)


def reference_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """Literal copy of the loop in Wav2Lip's inference.py."""
    mel_step_size = 16
    mel_windows = []
    mel_idx_multiplier = 80.0 / fps
    i = 0
    while 1:
        start_idx = int(i * mel_idx_multiplier)
        if start_idx + mel_step_size > len(mel[0]):
            mel_windows.append(mel[:, len(mel[0]) - mel_step_size :])
            break
        mel_windows.append(mel[:, start_idx : start_idx + mel_step_size])
        i += 1
    return mel_windows


def encode_wav(data: np.ndarray, sr: int, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def peak_frequency(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[np.argmax(spectrum)])


def tone_amplitude(wav: np.ndarray, sr: int, freq: float) -> float:
    """Amplitude of a sinusoid at ``freq`` (least squares fit)."""
    t = np.arange(len(wav)) / sr
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, wav.astype(np.float64), rcond=None)
    return float(np.hypot(*coef))


def encode_with_pyav(data: np.ndarray, sr: int, container: str, codec: str) -> bytes:
    """Encode planar float data of shape (2, n) to a stereo file, in memory."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sr, layout="stereo")
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, data.shape[1], frame_size):
            block = np.ascontiguousarray(data[:, start : start + frame_size], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            frame.sample_rate = sr
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


# ----------------------------------------------------------------------------- mel


def test_mel_filters_match_librosa():
    expected = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    ours = audio.mel_filters()
    assert ours.shape == (audio.N_MELS, audio.N_FFT // 2 + 1)
    assert np.abs(ours - expected).max() <= 1e-6
    assert audio.mel_filters() is ours  # cached
    # melspectrogram's sparse form relies on every band having weights
    assert np.all((ours > 0).sum(axis=1) >= 1)


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large:UserWarning")
@pytest.mark.parametrize("num_samples", [401, 999, 16000, 16123, 48017, 80000])
def test_melspectrogram_matches_librosa_reflect(num_samples):
    wav = speech_like(num_samples, seed=num_samples)
    mel = audio.melspectrogram(wav)
    assert mel.shape == (audio.N_MELS, 1 + num_samples // audio.HOP_LENGTH)
    assert mel.dtype == np.float32 and mel.flags.c_contiguous
    assert np.mean(np.abs(mel) == 4) < 0.01  # the signal exercises the unclipped range

    expected = librosa_mel(wav, pad_mode="reflect")
    assert expected.shape == mel.shape
    assert np.abs(mel - expected).max() <= MEL_TOLERANCE

    # Modern librosa's default zero padding must NOT match at the edges (proves reflect).
    zero_padded = librosa_mel(wav, pad_mode="constant")
    assert np.abs(mel[:, 0] - zero_padded[:, 0]).max() > 0.1
    assert np.abs(mel[:, -1] - zero_padded[:, -1]).max() > 0.1
    # ... while frames that never touch the padding are identical.
    first, last = 2, (num_samples - audio.N_FFT // 2) // audio.HOP_LENGTH
    if last >= first:
        inner = slice(first, last + 1)
        assert np.abs(mel[:, inner] - zero_padded[:, inner]).max() <= MEL_TOLERANCE


def test_melspectrogram_accepts_float64_and_int_like_inputs():
    wav = speech_like(8000, seed=3)
    np.testing.assert_allclose(
        audio.melspectrogram(wav.astype(np.float64)), audio.melspectrogram(wav), atol=1e-5
    )


def test_melspectrogram_of_silence_is_minimum():
    mel = audio.melspectrogram(np.zeros(4000, dtype=np.float32))
    assert np.all(mel == -audio.MAX_ABS_VALUE)


def test_preemphasis_matches_lfilter():
    wav = speech_like(1000, seed=5)
    np.testing.assert_allclose(
        audio.preemphasis(wav), scipy.signal.lfilter([1, -0.97], [1], wav), atol=1e-7
    )


def test_melspectrogram_rejects_short_and_non_1d():
    audio.melspectrogram(np.zeros(audio.MIN_MEL_SAMPLES))
    with pytest.raises(ValueError, match="at least 401"):
        audio.melspectrogram(np.zeros(400))
    with pytest.raises(ValueError, match=r"shape \(2, 1000\)"):
        audio.melspectrogram(np.zeros((2, 1000)))


# ----------------------------------------------------------------------------- mel_windows

EDGE_LENGTHS = [1, 15, 16, 17, 80, 81, 400, 401, 1234]
EDGE_FPS = [25, 30, 29.97, 24, 60]


def random_mel(num_columns: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-4, 4, size=(audio.N_MELS, num_columns)).astype(np.float32)


@pytest.mark.parametrize("fps", EDGE_FPS)
@pytest.mark.parametrize("num_columns", EDGE_LENGTHS)
def test_mel_chunks_match_reference_loop(num_columns, fps):
    mel = random_mel(num_columns, seed=num_columns)
    chunks = audio.mel_windows(mel, fps)
    expected = reference_chunks(mel, fps)
    assert chunks.dtype == np.float32 and chunks.flags.c_contiguous
    assert chunks.shape == (len(expected), audio.N_MELS, audio.MEL_WINDOW)
    if num_columns >= audio.MEL_WINDOW:
        for ours, theirs in zip(chunks, expected, strict=True):
            np.testing.assert_array_equal(ours, theirs)
    else:
        # The reference loop yields one malformed window; we pad with silence instead.
        assert len(expected) == 1
        np.testing.assert_array_equal(chunks[0, :, :num_columns], mel)
        assert np.all(chunks[0, :, num_columns:] == -audio.MAX_ABS_VALUE)


def test_mel_chunks_match_reference_loop_randomised():
    rng = np.random.default_rng(42)
    mel = random_mel(4000)
    fps_values = [23.976, 30000 / 1001, 59.94, 12.5, 80, 100, 240, *rng.uniform(1, 200, 150)]
    for fps in fps_values:
        num_columns = int(rng.integers(16, 4000))
        sub = mel[:, :num_columns]
        chunks = audio.mel_windows(sub, fps)
        expected = np.stack(reference_chunks(sub, fps))
        assert chunks.shape == expected.shape, (num_columns, fps)
        np.testing.assert_array_equal(chunks, expected)


def test_short_audio_gives_one_silence_padded_chunk():
    wav = speech_like(2000, seed=1)  # 0.125 s -> 11 mel columns
    mel = audio.melspectrogram(wav)
    assert mel.shape[1] == 11
    chunks = audio.mel_windows(mel, 25)
    assert chunks.shape == (1, audio.N_MELS, audio.MEL_WINDOW)
    np.testing.assert_array_equal(chunks[0, :, :11], mel)
    assert np.all(chunks[0, :, 11:] == -4.0)


@pytest.mark.parametrize("fps", EDGE_FPS)
@pytest.mark.parametrize("num_columns", EDGE_LENGTHS)
def test_mel_chunks_num_frames_mode(num_columns, fps):
    mel = random_mel(num_columns, seed=num_columns + 1)
    expected = reference_chunks(mel, fps)
    for num_frames in {1, len(expected), len(expected) + 7}:
        chunks = audio.mel_windows(mel, fps, num_frames=num_frames)
        assert chunks.shape == (num_frames, audio.N_MELS, audio.MEL_WINDOW)
        assert chunks.dtype == np.float32
        for i, window in enumerate(chunks):
            start = int(i * (80.0 / fps))
            inside = max(0, min(audio.MEL_WINDOW, num_columns - start))
            np.testing.assert_array_equal(window[:, :inside], mel[:, start : start + inside])
            assert np.all(window[:, inside:] == -audio.MAX_ABS_VALUE)
        if num_columns >= audio.MEL_WINDOW:
            # All reference windows but the end-aligned last one are identical.
            for ours, theirs in zip(chunks, expected[:-1], strict=False):
                np.testing.assert_array_equal(ours, theirs)


def test_mel_chunks_num_frames_zero_and_service_usage():
    assert audio.mel_windows(random_mel(50), 25, num_frames=0).shape == (0, 80, 16)
    wav = speech_like(16000 * 3 + 123, seed=9)
    mel = audio.melspectrogram(wav)
    for fps in EDGE_FPS:
        n = audio.num_video_frames(len(wav), fps)
        chunks = audio.mel_windows(mel, fps, num_frames=n)
        assert chunks.shape == (n, 80, 16)
        # The last video frame starts inside the audio.
        assert int((n - 1) * 80.0 / fps) < mel.shape[1]


@pytest.mark.parametrize("fps", [0, -25, float("nan"), float("inf"), "abc", None])
def test_mel_chunks_rejects_bad_fps(fps):
    with pytest.raises(ValueError, match="fps"):
        audio.mel_windows(random_mel(40), fps)


def test_mel_chunks_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(80, 0\)"):
        audio.mel_windows(np.zeros((80, 0)), 25)
    with pytest.raises(ValueError, match=r"\(40, 100\)"):
        audio.mel_windows(np.zeros((40, 100)), 25)
    with pytest.raises(ValueError, match="-1"):
        audio.mel_windows(random_mel(40), 25, num_frames=-1)
    with pytest.raises(ValueError, match=r"2\.5"):
        audio.mel_windows(random_mel(40), 25, num_frames=2.5)


# ----------------------------------------------------------------------------- decoding

SUBTYPE_TOLERANCE = {
    "PCM_U8": 1 / 64,
    "PCM_16": 1e-4,
    "PCM_24": 1e-6,
    "PCM_32": 1e-6,
    "FLOAT": 1e-6,
    "DOUBLE": 1e-6,
}


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("subtype", list(SUBTYPE_TOLERANCE))
def test_read_and_load_every_wav_layout(subtype, channels, sr):
    duration = 1.0
    num_samples = int(sr * duration)
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(num_samples) / sr)
    data = np.repeat(tone[:, None], channels, axis=1) if channels > 1 else tone
    encoded = encode_wav(data, sr, subtype)

    wav, native_sr = audio.read_audio(encoded)
    assert native_sr == sr
    assert wav.dtype == np.float32 and wav.shape == (num_samples,)
    assert np.abs(wav - tone).max() <= SUBTYPE_TOLERANCE[subtype]

    loaded = audio.load_audio(encoded)
    assert loaded.dtype == np.float32
    assert abs(len(loaded) - audio.SAMPLE_RATE * duration) <= 1
    middle = loaded[1000:-1000]  # skip resampler edge effects
    assert abs(np.abs(middle).max() - 0.5) < 0.02
    assert abs(peak_frequency(loaded, audio.SAMPLE_RATE) - 440) <= 1
    assert abs(tone_amplitude(middle, audio.SAMPLE_RATE, 440) - 0.5) < 0.01


@pytest.mark.parametrize("channels", [2, 4])
def test_multichannel_is_mean_of_channels(channels):
    sr = 22050
    rng = np.random.default_rng(channels)
    data = rng.uniform(-0.9, 0.9, size=(sr, channels))
    wav, _ = audio.read_audio(encode_wav(data, sr, "FLOAT"))
    np.testing.assert_allclose(wav, data.mean(axis=1), atol=1e-6)


def test_float_wav_is_clipped_to_unit_range():
    data = np.array([0.0, 1.5, -2.0, 0.25] * 100)
    wav, _ = audio.read_audio(encode_wav(data, 16000, "FLOAT"))
    np.testing.assert_array_equal(wav[:4], [0.0, 1.0, -1.0, 0.25])


def test_read_audio_from_path_and_bytearray(tmp_path):
    data = 0.3 * np.sin(np.linspace(0, 100, 5000))
    encoded = encode_wav(data, 16000, "PCM_16")
    path = tmp_path / "audio_tone.wav"
    path.write_bytes(encoded)
    from_bytes, sr = audio.read_audio(encoded)
    for source in (path, str(path), bytearray(encoded), memoryview(encoded)):
        wav, sr2 = audio.read_audio(source)
        assert sr2 == sr == 16000
        np.testing.assert_array_equal(wav, from_bytes)


def test_read_audio_errors():
    with pytest.raises(ValueError, match="empty"):
        audio.read_audio(b"")
    with pytest.raises(ValueError, match="decode"):
        audio.read_audio(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="no samples"):
        audio.read_audio(encode_wav(np.zeros(0), 16000, "PCM_16"))
    for bad in (np.nan, np.inf, -np.inf):
        data = np.zeros(100)
        data[50] = bad
        with pytest.raises(ValueError, match="non-finite"):
            audio.read_audio(encode_wav(data, 16000, "FLOAT"))
    with pytest.raises(ValueError, match="2000 Hz"):
        audio.read_audio(encode_wav(np.zeros(100), 2000, "PCM_16"))
    with pytest.raises(FileNotFoundError):
        audio.read_audio("/nonexistent/audio_missing.wav")


@pytest.mark.parametrize(("container", "codec"), [("webm", "libopus"), ("mp4", "aac")])
def test_compressed_formats_via_pyav_fallback(container, codec):
    sr = 48000
    t = np.arange(2 * sr) / sr
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)
    encoded = encode_with_pyav(np.stack([left, right]), sr, container, codec)
    with pytest.raises(sf.LibsndfileError):  # so the fallback really is exercised
        sf.info(io.BytesIO(encoded))

    wav, native_sr = audio.read_audio(encoded)
    assert native_sr == sr
    assert abs(len(wav) - len(t)) <= 2048  # codec priming/padding
    middle = wav[sr // 2 : -sr // 2]
    # Mean of the channels (FFmpeg's own mono downmix would give 0.42 and 0.14).
    assert tone_amplitude(middle, sr, 440) == pytest.approx(0.3, abs=0.02)
    assert tone_amplitude(middle, sr, 1000) == pytest.approx(0.1, abs=0.02)

    loaded = audio.load_audio(encoded)
    assert abs(len(loaded) - len(wav) / 3) <= 1
    assert abs(peak_frequency(loaded, audio.SAMPLE_RATE) - 440) <= 1


# ----------------------------------------------------------------------------- resample / load


def test_resample():
    wav = speech_like(16000, seed=2)
    assert audio.resample(wav, 16000) is wav
    assert audio.resample(wav.astype(np.float64), 16000).dtype == np.float32
    up = audio.resample(wav, 16000, 48000)
    assert up.dtype == np.float32 and up.shape == (48000,)
    t = np.arange(16000) / 16000
    band_limited = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 5000 * t)).astype(
        np.float32
    )
    round_trip = audio.resample(audio.resample(band_limited, 16000, 44100), 44100)
    assert round_trip.shape == band_limited.shape
    np.testing.assert_allclose(round_trip[200:-200], band_limited[200:-200], atol=2e-3)
    with pytest.raises(ValueError, match=r"shape \(2, 10\)"):
        audio.resample(np.zeros((2, 10)), 8000)
    with pytest.raises(ValueError, match="orig_sr"):
        audio.resample(wav, 0)


def test_load_audio_from_array():
    wav = speech_like(1000).astype(np.float64)
    out = audio.load_audio(wav)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, wav.astype(np.float32))
    with pytest.raises(ValueError, match="1-D"):
        audio.load_audio(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="empty"):
        audio.load_audio(np.zeros(0))
    with pytest.raises(ValueError, match="non-finite"):
        audio.load_audio(np.array([0.0, np.nan]))


def test_load_audio_too_short_after_resampling():
    with pytest.raises(ValueError, match="too short"):
        audio.load_audio(encode_wav(np.array([0.1]), 44100, "PCM_16"))


# ----------------------------------------------------------------------------- num_video_frames


@pytest.mark.parametrize(
    ("num_samples", "fps", "sample_rate", "expected"),
    [
        (16000, 25, 16000, 25),
        (16001, 25, 16000, 26),
        (640, 25, 16000, 1),
        (639, 25, 16000, 1),
        (641, 25, 16000, 2),
        (0, 25, 16000, 0),
        (1, 25, 16000, 1),
        (16000, 30, 16000, 30),
        (16001, 30, 16000, 31),
        (533, 30, 16000, 1),
        (534, 30, 16000, 2),
        (16016, 30000 / 1001, 16000, 30),
        (10010, 24000 / 1001, 16000, 15),  # 10010 * fps / 16000 == 15.000000000000002
        (10011, 24000 / 1001, 16000, 16),
        (16000, 29.97, 16000, 30),
        (48000, 30, 48000, 30),
        (48001, 30, 48000, 31),
        (np.int64(32000), 25.0, 16000, 50),
    ],
)
def test_num_video_frames(num_samples, fps, sample_rate, expected):
    assert audio.num_video_frames(num_samples, fps, sample_rate) == expected


def test_num_video_frames_rejects_bad_input():
    with pytest.raises(ValueError, match="-1"):
        audio.num_video_frames(-1, 25)
    with pytest.raises(ValueError, match=r"1\.5"):
        audio.num_video_frames(1.5, 25)
    with pytest.raises(ValueError, match="fps"):
        audio.num_video_frames(100, 0)
    with pytest.raises(ValueError, match="sample_rate"):
        audio.num_video_frames(100, 25, 0)


@pytest.mark.parametrize("num_frames", [None, 0, 7, 61])
def test_mel_windows_cut_on_demand_equal_mel_chunks(num_frames):
    mel = random_mel(150)
    chunks = audio.mel_windows(mel, 29.97, num_frames)
    windows = audio.MelWindows(mel, 29.97, num_frames)
    assert len(windows) == len(chunks)
    for start in range(0, len(chunks), 16):
        part = windows[start : start + 16]
        assert part.flags.c_contiguous and part.dtype == np.float32
        np.testing.assert_array_equal(part, chunks[start : start + 16])
    with pytest.raises(TypeError, match="slice"):
        windows[0]
