"""Wav2Lip's mel windows computed while the speech is still arriving.

Speech comes in chunks of any size; every video frame's (N_MELS, MEL_WINDOW) window is
returned as soon as the samples it depends on are in. Frame t at ``fps`` reads the
MEL_WINDOW columns from column ``int(t * MEL_FRAMES_PER_SECOND / fps)``, i.e. the 16 kHz
speech up to ``t / fps + LOOKAHEAD_SECONDS`` (0.2 s of columns plus half an STFT window);
pre-emphasis and normalisation look back only. The pieces are those of the offline path
(`audio.preemphasis`, reflect padding, `audio.mel_columns`, `audio.cut_windows`, soxr HQ),
so the streamed windows equal ``audio.MelWindows(audio.melspectrogram(audio.resample(x,
rate)), fps, audio.num_video_frames(n16k, fps))`` exactly, whatever the chunking.
"""

import numpy as np
import soxr

from lipsync import audio
from lipsync.audio import HOP_LENGTH, MEL_WINDOW, MIN_MEL_SAMPLES, N_FFT, N_MELS, SAMPLE_RATE

# 16 kHz samples past a frame's start that its window reads: the last column's centre is
# (MEL_WINDOW - 1) hops on, and its STFT frame reaches N_FFT // 2 further.
LOOKAHEAD_SAMPLES = (MEL_WINDOW - 1) * HOP_LENGTH + N_FFT // 2  # 3400
LOOKAHEAD_SECONDS = LOOKAHEAD_SAMPLES / SAMPLE_RATE  # 0.2125
_RESAMPLE_QUALITY = "HQ"  # as audio.resample


class MelStream:
    """`audio.melspectrogram` of a 16 kHz signal pushed in chunks, column by column.

    Column c covers samples [c * HOP_LENGTH - N_FFT // 2, c * HOP_LENGTH + N_FFT // 2) of
    the reflect-padded signal; it is computed once they have all arrived. The left padding
    needs the first MIN_MEL_SAMPLES samples, the right padding waits for `finish`.
    """

    def __init__(self) -> None:
        self._previous = 0.0  # last sample pushed, for the pre-emphasis of the next chunk
        self._num_samples = 0
        self._num_columns = 0
        self._pending: list[np.ndarray] = []  # pre-emphasised samples not yet in _padded
        # The padded, pre-emphasised signal from the first sample of column _num_columns;
        # None until the left reflect padding can be built.
        self._padded: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        """Samples pushed so far."""
        return self._num_samples

    @property
    def num_columns(self) -> int:
        """Columns returned so far."""
        return self._num_columns

    def push(self, wav: np.ndarray) -> np.ndarray:
        """Add samples (n,) at SAMPLE_RATE; returns the newly complete columns (N_MELS, k)
        float32 (k may be 0)."""
        wav = np.asarray(wav)
        if wav.size:
            self._pending.append(audio.preemphasis(wav, self._previous))
            self._previous = float(wav[-1])
            self._num_samples += wav.size
        # Column c is complete when its frame's end, c * HOP_LENGTH + N_FFT in padded
        # coordinates, is within the N_FFT // 2 + num_samples padded samples so far.
        complete = (self._num_samples - N_FFT // 2) // HOP_LENGTH + 1
        if self._num_samples < MIN_MEL_SAMPLES or complete <= self._num_columns:
            return np.empty((N_MELS, 0), dtype=np.float32)
        padded = self._take_pending()
        count = complete - self._num_columns
        columns = audio.mel_columns(padded[: (count - 1) * HOP_LENGTH + N_FFT])
        self._padded = padded[count * HOP_LENGTH :]
        self._num_columns = complete
        return columns

    def finish(self) -> np.ndarray:
        """The remaining columns (N_MELS, k) float32, up to 1 + num_samples // HOP_LENGTH in
        all, using the right reflect padding. ValueError if fewer than MIN_MEL_SAMPLES
        samples were pushed (as audio.melspectrogram)."""
        audio.check_mel_length(self._num_samples)
        # The right padding reflects the last N_FFT // 2 + 1 samples, which are all real
        # signal in _padded: the next column starts at most N_FFT - HOP_LENGTH before the end.
        tail = np.pad(self._take_pending(), (0, N_FFT // 2), mode="reflect")
        columns = audio.mel_columns(tail)
        self._padded = tail[:0]
        self._num_columns += columns.shape[1]
        return columns

    def _take_pending(self) -> np.ndarray:
        """_padded extended with the pending samples (builds the left padding at first)."""
        if self._padded is None:
            signal = np.concatenate(self._pending)
            self._padded = np.pad(signal, (N_FFT // 2, 0), mode="reflect")
        elif self._pending:
            self._padded = np.concatenate([self._padded, *self._pending])
        self._pending = []
        return self._padded


class SpeechStream:
    """Speech pushed in chunks at ``sample_rate`` -> the mel windows of its video frames.

    Frames are numbered from 0 at ``fps``; each push returns the windows of the frames that
    became complete, in order, each once; `finish` returns the rest, so that there are
    ``audio.num_video_frames(num_samples_16k, fps)`` in all, those past the speech padded
    with SILENCE_VALUE, exactly as the offline path. Windows: (k, N_MELS, MEL_WINDOW)
    float32, C-contiguous.

    Frame t is returned by the push whose 16 kHz output reaches
    ``int(t * MEL_FRAMES_PER_SECOND / fps) * HOP_LENGTH + LOOKAHEAD_SAMPLES`` samples; for
    another input rate the resampler holds back its own delay (`resampler_delay_seconds`).
    """

    def __init__(self, fps: float, sample_rate: int = SAMPLE_RATE) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
            raise ValueError(f"sample_rate must be an int, got {sample_rate!r}")
        if not audio.MIN_INPUT_SAMPLE_RATE <= sample_rate <= audio.MAX_INPUT_SAMPLE_RATE:
            raise ValueError(
                f"unsupported sample rate {sample_rate} Hz: expected "
                f"{audio.MIN_INPUT_SAMPLE_RATE}..{audio.MAX_INPUT_SAMPLE_RATE} Hz"
            )
        self._fps = fps
        self._step = audio.window_step(fps)
        self._sample_rate = int(sample_rate)
        self._resampler = (
            None
            if sample_rate == SAMPLE_RATE
            else soxr.ResampleStream(
                sample_rate, SAMPLE_RATE, 1, dtype="float32", quality=_RESAMPLE_QUALITY
            )
        )
        self._mel = MelStream()
        self._columns = np.empty((N_MELS, 0), dtype=np.float32)  # from column _first_column
        self._first_column = 0
        self._num_frames = 0
        self._num_input_samples = 0
        self._finished = False

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def num_input_samples(self) -> int:
        """Samples pushed so far, at sample_rate."""
        return self._num_input_samples

    @property
    def num_samples_16k(self) -> int:
        """Samples the resampler has delivered so far, at SAMPLE_RATE."""
        return self._mel.num_samples

    @property
    def num_frames(self) -> int:
        """Frames whose windows were returned so far (the next frame's index)."""
        return self._num_frames

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def resampler_delay_seconds(self) -> float:
        """Speech pushed but still held in the resampler (0 at SAMPLE_RATE): a frame is
        returned by the push that brings the input past its start + LOOKAHEAD_SECONDS +
        this delay (measured with soxr HQ: ~40 ms at 22.05/44.1 kHz, ~37 ms at 48 kHz,
        ~79 ms at 96/192 kHz, ~116 ms at 8 kHz)."""
        return 0.0 if self._resampler is None else self._resampler.delay() / SAMPLE_RATE

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add mono samples (n,) at sample_rate (as audio.read_audio returns them: float32
        in [-1, 1]; any n >= 0). Returns the windows (k, N_MELS, MEL_WINDOW) float32 of the
        frames completed by this chunk. ValueError for a bad chunk, RuntimeError after
        finish."""
        self._check_open()
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"expected a 1-D chunk of samples, got shape {chunk.shape}")
        if not np.isfinite(chunk).all():
            raise ValueError("audio chunk contains non-finite samples (NaN or inf)")
        self._num_input_samples += chunk.size
        if self._resampler is not None:
            chunk = self._resampler.resample_chunk(chunk)
        columns = self._mel.push(chunk)
        if columns.shape[1] == 0:
            return np.empty((0, N_MELS, MEL_WINDOW), dtype=np.float32)
        complete = audio.count_full_windows(self._mel.num_columns, self._step, self._num_frames)
        return self._emit(columns, complete)

    def finish(self) -> np.ndarray:
        """End of speech: the windows (k, N_MELS, MEL_WINDOW) float32 of the remaining
        frames. ValueError if the speech is shorter than MIN_MEL_SAMPLES at 16 kHz (as
        audio.melspectrogram); the stream is finished either way."""
        self._check_open()
        self._finished = True
        parts = []
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.empty(0, dtype=np.float32), last=True)
            parts.append(self._mel.push(tail))
        parts.append(self._mel.finish())
        total_frames = audio.num_video_frames(self._mel.num_samples, self._fps)
        return self._emit(np.concatenate(parts, axis=1), total_frames)

    def _emit(self, columns: np.ndarray, stop: int) -> np.ndarray:
        """Keep the new columns; return the windows of frames _num_frames..stop-1."""
        self._columns = np.concatenate([self._columns, columns], axis=1)
        starts = audio.window_starts(self._step, stop, self._num_frames)
        windows = audio.cut_windows(self._columns, starts - self._first_column)
        self._num_frames = max(self._num_frames, stop)
        # Columns before the next frame's start are never read again.
        next_start = int(audio.window_starts(self._step, self._num_frames + 1, self._num_frames)[0])
        drop = min(next_start - self._first_column, self._columns.shape[1])
        if drop > 0:
            self._columns = self._columns[:, drop:]
            self._first_column += drop
        return windows

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the speech stream is finished; start a new SpeechStream")
