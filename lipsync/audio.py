"""Audio decoding and Wav2Lip mel features, in plain numpy.

The serving path only needs numpy, soundfile and soxr (PyAV is the fallback decoder for
compressed formats). The features reproduce Rudrabha/Wav2Lip ``audio.py`` + ``hparams.py``
as trained, i.e. with librosa 0.7 semantics (reflect-padded centred STFT, Slaney mel).
"""

import io
import math
import os
from functools import lru_cache

import av
import numpy as np
import soundfile as sf
import soxr

# hard-coded audio hyperparameters (Wav2Lip hparams.py)
SAMPLE_RATE = 16000
N_FFT = 800
HOP_LENGTH = 200
WIN_LENGTH = 800
N_MELS = 80
FMIN = 55
FMAX = 7600
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20
MIN_LEVEL_DB = -100
MAX_ABS_VALUE = 4.0
MEL_WINDOW = 16  # mel columns fed to the model per video frame (0.2 s)
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH  # 80.0 mel columns per second

MIN_MEL_SAMPLES = N_FFT // 2 + 1  # shortest input that can be reflect-padded by N_FFT // 2
MIN_INPUT_SAMPLE_RATE = 4000  # sane range for the native rate of decoded files
MAX_INPUT_SAMPLE_RATE = 384000
SILENCE_VALUE = -MAX_ABS_VALUE  # normalised mel value of silence, used for padding

_STFT_BLOCK_FRAMES = 512  # STFT frames per block: bounds peak memory on long inputs
_FRAME_COUNT_TOLERANCE = 1e-6  # absorbs float error in num_video_frames' ceil


def _decode_with_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    """Decode with libsndfile; raises sf.LibsndfileError if the format is not recognised.

    Returns samples of shape (n_samples, n_channels), float32, and the sample rate.
    """
    samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, int(sr)


def _decode_with_pyav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with FFmpeg (MP4/M4A, WebM/Opus, ...).

    Frames are converted to planar float at their native layout and rate; channels are
    averaged by the caller (FFmpeg's own mono downmix is not the mean of the channels).
    Returns samples of shape (n_samples, n_channels), float32, and the sample rate.
    """
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ValueError("no audio stream found in the input")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")
            planes: list[np.ndarray] = []
            sr = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    sr = out.sample_rate
                    planes.append(out.to_ndarray())
            for out in resampler.resample(None):
                planes.append(out.to_ndarray())
    except av.FFmpegError as e:
        raise ValueError(f"could not decode audio: {e}") from e
    if not planes:
        return np.zeros((0, 1), dtype=np.float32), sr
    return np.concatenate(planes, axis=1).T.astype(np.float32, copy=False), sr


def read_audio(source: bytes | str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file to mono float32 at its native sample rate.

    Parameters
    ----------
    source: bytes | str | os.PathLike
        The encoded file contents (bytes-like), or a path to the file. WAV (8-bit unsigned,
        16/24/32-bit int, 32/64-bit float, any channel count) and the other formats of
        libsndfile (FLAC, OGG/Vorbis/Opus, MP3, ...) are decoded with soundfile; anything
        else FFmpeg can read (M4A/AAC, WebM/Opus, ...) through PyAV. No temp files are written.

    Returns
    -------
    A tuple (wav, sample_rate): wav has shape (n_samples,), dtype float32, values clipped
    to [-1, 1], and is the mean of the channels; sample_rate is an int.

    Raises ValueError for empty or undecodable input, no samples, non-finite samples or
    a sample rate outside [MIN_INPUT_SAMPLE_RATE, MAX_INPUT_SAMPLE_RATE]; OSError (e.g.
    FileNotFoundError) if a path cannot be read.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        with open(source, "rb") as f:
            data = f.read()
    if not data:
        raise ValueError("audio input is empty (0 bytes)")

    try:
        samples, sr = _decode_with_soundfile(data)
    except sf.LibsndfileError:
        samples, sr = _decode_with_pyav(data)

    if samples.shape[0] == 0:
        raise ValueError("audio input contains no samples")
    if not MIN_INPUT_SAMPLE_RATE <= sr <= MAX_INPUT_SAMPLE_RATE:
        raise ValueError(
            f"unsupported sample rate {sr} Hz: expected "
            f"{MIN_INPUT_SAMPLE_RATE}..{MAX_INPUT_SAMPLE_RATE} Hz"
        )
    if not np.isfinite(samples).all():
        raise ValueError("audio input contains non-finite samples (NaN or inf)")
    np.clip(samples, -1.0, 1.0, out=samples)
    return samples.mean(axis=1, dtype=np.float32), sr


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono signal with soxr (HQ).

    wav: shape (n_samples,); returns shape (round(n_samples * target_sr / orig_sr),),
    float32. Identity (no copy for float32 input) when the rates are equal.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {wav.shape}")
    for name, rate in (("orig_sr", orig_sr), ("target_sr", target_sr)):
        if not rate > 0:
            raise ValueError(f"{name} must be positive, got {rate}")
    if orig_sr == target_sr:
        return wav
    return soxr.resample(wav, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(
    source: bytes | str | os.PathLike | np.ndarray, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Decode (see read_audio) and resample to ``sample_rate``.

    An np.ndarray source is taken as already decoded at ``sample_rate``: it must be 1-D,
    non-empty and finite, and is only cast to float32.

    Returns shape (n_samples,), dtype float32.
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {source.shape}")
        if source.size == 0:
            raise ValueError("waveform is empty (0 samples)")
        wav = source.astype(np.float32, copy=False)
        if not np.isfinite(wav).all():
            raise ValueError("waveform contains non-finite samples (NaN or inf)")
        return wav
    wav, sr = read_audio(source)
    wav = resample(wav, sr, sample_rate)
    if wav.size == 0:
        raise ValueError(f"audio is too short: 0 samples after resampling {sr} -> {sample_rate} Hz")
    return wav


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Slaney mel filterbank, identical to librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT,
    n_mels=N_MELS, fmin=FMIN, fmax=FMAX) (htk=False, norm="slaney").

    Returns shape (N_MELS, N_FFT // 2 + 1), float64, read-only (cached).
    """
    # Slaney mel scale: linear below 1 kHz, logarithmic above.
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0

    def hz_to_mel(hz: float) -> float:
        if hz >= min_log_hz:
            return min_log_mel + math.log(hz / min_log_hz) / logstep
        return hz / f_sp

    mels = np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), N_MELS + 2)
    mel_f = np.where(
        mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels
    )
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)

    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney area normalisation
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=1)
def _sparse_mel_filters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mel_filters() as (bins, weights, row_starts): the non-zero weights in row-major order,
    the FFT bin of each, and where each mel band's run starts. Every band is non-empty.

    Each FFT bin feeds at most two triangles, so this is ~740 products per frame instead
    of 80 * 401, and it avoids BLAS, whose threads thrash on a busy CPU.
    """
    rows, bins = np.nonzero(mel_filters())
    return bins, mel_filters()[rows, bins], np.searchsorted(rows, np.arange(N_MELS))


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window("hann", WIN_LENGTH)), shape (WIN_LENGTH,)."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)
    window.flags.writeable = False
    return window


def preemphasis(wav: np.ndarray, previous: float = 0.0) -> np.ndarray:
    """y[n] = x[n] - PREEMPHASIS * x[n-1] (scipy.signal.lfilter([1, -k], [1], x)); x[-1] is
    ``previous``, the preceding chunk's last sample (0 at the start: y[0] = x[0] exactly).

    wav: shape (n_samples,); returns shape (n_samples,), float64.
    """
    x = np.asarray(wav, dtype=np.float64)
    y = np.empty_like(x)
    np.subtract(x[:1], PREEMPHASIS * np.float64(previous), out=y[:1])
    np.subtract(x[1:], PREEMPHASIS * x[:-1], out=y[1:])
    return y


def check_mel_length(num_samples: int) -> None:
    """ValueError unless ``num_samples`` (at SAMPLE_RATE) can be reflect-padded by N_FFT // 2."""
    if num_samples < MIN_MEL_SAMPLES:
        raise ValueError(
            f"audio too short for the mel spectrogram: {num_samples} samples, "
            f"need at least {MIN_MEL_SAMPLES} ({MIN_MEL_SAMPLES / SAMPLE_RATE * 1000:.2f} ms)"
        )


def mel_columns(padded: np.ndarray) -> np.ndarray:
    """Normalised log-mel columns of a stretch of the padded, pre-emphasised signal: column j
    is |STFT| (periodic Hann window) of ``padded[j * HOP_LENGTH :][:N_FFT]``, Slaney mel,
    ``20 * log10(max(1e-5, x)) - REF_LEVEL_DB``, then symmetric normalisation to
    [-MAX_ABS_VALUE, MAX_ABS_VALUE]; it depends on those N_FFT samples only.

    padded: shape (n,), float64. Returns (N_MELS, 1 + (n - N_FFT) // HOP_LENGTH) float32,
    (N_MELS, 0) when n < N_FFT.
    """
    if padded.shape[0] < N_FFT:
        return np.empty((N_MELS, 0), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    window = _hann_window()
    bins, weights, row_starts = _sparse_mel_filters()

    mel = np.empty((frames.shape[0], N_MELS), dtype=np.float64)
    for start in range(0, frames.shape[0], _STFT_BLOCK_FRAMES):
        block = frames[start : start + _STFT_BLOCK_FRAMES]
        magnitudes = np.abs(np.fft.rfft(block * window, axis=1))
        # == magnitudes @ mel_filters().T, summing only the non-zero weights
        mel[start : start + block.shape[0]] = np.add.reduceat(
            magnitudes[:, bins] * weights, row_starts, axis=1
        )

    min_level = 10.0 ** (MIN_LEVEL_DB / 20)
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    normalised = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(normalised, -MAX_ABS_VALUE, MAX_ABS_VALUE).T.astype(np.float32, order="C")


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram: `mel_columns` of the pre-emphasised signal,
    centred (reflect-padded by N_FFT // 2 on both sides, like librosa 0.7).

    audio_stream.MelStream computes the same columns chunk by chunk from the same pieces.

    wav: shape (n_samples,) at SAMPLE_RATE, n_samples >= MIN_MEL_SAMPLES.
    Returns shape (N_MELS, 1 + n_samples // HOP_LENGTH), float32.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {wav.shape}")
    check_mel_length(wav.shape[0])
    return mel_columns(np.pad(preemphasis(wav), N_FFT // 2, mode="reflect"))


def _check_fps(fps: float) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a number, got {fps!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    return value


def window_step(fps: float) -> float:
    """Mel columns per video frame at ``fps`` (ValueError for a non-positive/non-finite fps)."""
    return MEL_FRAMES_PER_SECOND / _check_fps(fps)


def window_starts(step: float, stop: int, start: int = 0) -> np.ndarray:
    """int(i * step) for i in range(start, stop), with float64 arithmetic like Python's."""
    return np.floor(np.arange(start, stop, dtype=np.float64) * step).astype(np.int64)


def count_full_windows(num_columns: int, step: float, known: int = 0) -> int:
    """Number of leading i with int(i * step) + MEL_WINDOW <= num_columns, i.e. the windows
    the reference loop appends before its final, end-aligned one. ``known``: a count
    already known to be full (then only the starts past it are computed)."""
    last_start = num_columns - MEL_WINDOW
    if last_start < 0:
        return 0
    # Starts are non-decreasing in i; the closed-form bound plus 2 of slack for float
    # rounding is past the first start > last_start, so searchsorted gives the exact count.
    starts = window_starts(step, math.ceil((last_start + 1) / step) + 2, known)
    return known + int(np.searchsorted(starts, last_start, side="right"))


def cut_windows(mel: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The MEL_WINDOW-column windows of ``mel`` (N_MELS, T) float32 starting at ``starts``
    (k,) int; columns past T are SILENCE_VALUE. Returns (k, N_MELS, MEL_WINDOW) float32,
    C-contiguous. Only the columns the windows span are copied.
    """
    if starts.size == 0:
        return np.empty((0, N_MELS, MEL_WINDOW), dtype=np.float32)
    first, stop = int(starts.min()), int(starts.max()) + MEL_WINDOW
    span = mel[:, first:stop]
    missing = ((0, 0), (0, stop - first - span.shape[1]))
    span = np.pad(span, missing, constant_values=SILENCE_VALUE) if missing[1][1] else span
    view = np.lib.stride_tricks.sliding_window_view(span, MEL_WINDOW, axis=1)
    return np.ascontiguousarray(view[:, starts - first].transpose(1, 0, 2))


def mel_windows(mel: np.ndarray, fps: float, num_frames: int | None = None) -> np.ndarray:
    """Cut the mel spectrogram into one MEL_WINDOW-column window per video frame.

    Window i starts at mel column ``int(i * MEL_FRAMES_PER_SECOND / fps)``.

    - ``num_frames=None`` reproduces Wav2Lip's inference loop exactly: windows for every i
      whose window fits, then one final window ``mel[:, T - MEL_WINDOW:]`` aligned to the end.
    - ``num_frames=N`` returns exactly N windows (i = 0..N-1); windows running past the end
      of the mel are padded on the right with SILENCE_VALUE (-MAX_ABS_VALUE).

    Short audio is padded with silence, not rejected: if T < MEL_WINDOW the mel is first
    padded on the right with SILENCE_VALUE to MEL_WINDOW columns, so the reference mode
    yields exactly one window (the reference loop would produce a malformed one).

    mel: shape (N_MELS, T), T >= 1 (as returned by melspectrogram).
    Returns shape (n_windows, N_MELS, MEL_WINDOW), float32, C-contiguous.
    """
    return MelWindows(mel, fps, num_frames)[:]


class MelWindows:
    """The windows of `mel_windows` (same arguments), cut when asked for.

    ``len(windows)`` is the window count; ``windows[a:b]`` -> (b - a, N_MELS, MEL_WINDOW)
    float32, C-contiguous. Only the spectrogram is held (at 25 fps a fifth of the size of
    all its windows), so a long speech's windows never all sit in memory at once.
    """

    def __init__(self, mel: np.ndarray, fps: float, num_frames: int | None = None) -> None:
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim != 2 or mel.shape[0] != N_MELS or mel.shape[1] == 0:
            raise ValueError(
                f"expected a mel spectrogram of shape ({N_MELS}, T>=1), got {mel.shape}"
            )
        step = window_step(fps)
        num_columns = mel.shape[1]
        if num_frames is None:
            full = count_full_windows(num_columns, step)
            starts = np.append(window_starts(step, full), max(num_columns - MEL_WINDOW, 0))
        else:
            if isinstance(num_frames, bool) or not isinstance(num_frames, int | np.integer):
                raise ValueError(f"num_frames must be an int or None, got {num_frames!r}")
            if num_frames < 0:
                raise ValueError(f"num_frames must be >= 0, got {num_frames}")
            starts = window_starts(step, int(num_frames))
        self._mel = mel
        self._starts = starts

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError(f"MelWindows takes a slice, got {type(index).__name__}")
        return cut_windows(self._mel, self._starts[index])


def num_video_frames(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames needed to cover ``num_samples`` of audio: ceil(num_samples * fps /
    sample_rate), ignoring float error up to 1e-6 frame (1.0 s at 25 fps -> 25, not 26;
    one extra sample -> 26). 0 samples -> 0; callers decide what to do with that.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise ValueError(f"num_samples must be an int, got {num_samples!r}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    frames = int(num_samples) * _check_fps(fps) / sample_rate
    return max(0, math.ceil(frames - _FRAME_COUNT_TOLERANCE))


def window_level_db(windows: np.ndarray) -> np.ndarray:
    """Loudness of mel windows: the loudest band of the loudest column, in dB on Wav2Lip's
    mel scale (``20 * log10(mel) - REF_LEVEL_DB``, floor MIN_LEVEL_DB = digital silence).

    windows: (N, N_MELS, MEL_WINDOW) normalised mel (as `mel_windows` cuts them), or one
    window (N_MELS, MEL_WINDOW). Returns (N,) float32 (a 0-d array for one window).
    """
    windows = np.asarray(windows, dtype=np.float32)
    peak = windows.max(axis=(-2, -1))
    return (peak + MAX_ABS_VALUE) / (2 * MAX_ABS_VALUE) * -MIN_LEVEL_DB + MIN_LEVEL_DB


def silent_windows(windows: np.ndarray, threshold_db: float) -> np.ndarray:
    """The silence gate's decision per window: level below `threshold_db` (see
    `window_level_db`). (N, N_MELS, MEL_WINDOW) -> (N,) bool."""
    return window_level_db(windows) < threshold_db
