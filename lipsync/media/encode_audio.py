"""Speech for the output encoder: validated, then resampled to the codec a second at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np

from lipsync.media.checks import check_int_range

# Output audio rate for both containers: Opus only runs at 48 kHz, and 48 kHz AAC is the
# most widely supported rate for MP4 in browsers.
AUDIO_RATE = 48_000


def prepare_audio(audio: np.ndarray | None, sample_rate: int | None) -> np.ndarray | None:
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
    check_int_range("sample_rate", sample_rate, 1_000, 384_000)
    if audio.dtype == np.int16:
        samples = audio.astype(np.float32) / 32768.0
    elif np.issubdtype(audio.dtype, np.floating):
        samples = np.nan_to_num(audio.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    else:
        raise ValueError(f"audio dtype must be float or int16, got {audio.dtype}")
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0))


class AudioFeed:
    """Speech resampled for the encoder a second at a time, as the video reaches it.

    Yields encoder-ready frames (codec format, 48 kHz, codec frame size, the last one
    short) with consecutive pts in 1/48000 units. Only about one second of resampled audio
    is held at a time, so memory does not grow with the length of the speech.

    `open_ended`: the speech keeps coming (`extend`) until `end`; until then the resampler
    is never flushed.
    """

    def __init__(
        self,
        samples: np.ndarray,
        sample_rate: int,
        ctx: av.audio.codeccontext.AudioCodecContext,
        open_ended: bool = False,
    ) -> None:
        self._samples, self._rate = samples, sample_rate
        self._open = open_ended
        self._consumed = 0  # source samples dropped from _samples (already fed)
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
            while self._ready and (limit is None or _starts_before(self._ready[0], limit)):
                yield self._ready.popleft()
            if self._ready or not self._resample_more():
                return

    def extend(self, samples: np.ndarray) -> None:
        """More speech (n,) float32 at the source rate (open-ended feeds only)."""
        if not self._open:
            raise RuntimeError("extend() needs an open-ended feed")
        self._consumed += self._fed
        self._samples = np.concatenate([self._samples[self._fed :], samples])
        self._fed = 0

    def end(self) -> None:
        """No more speech: the next read flushes the resampler."""
        self._open = False

    def _resample_more(self) -> bool:
        """Resample the next second of speech (or flush). False once everything is out
        (for now, while an open-ended feed waits for more)."""
        if self._flushed:
            return False
        if self._fed < len(self._samples):
            chunk = self._samples[self._fed : self._fed + self._rate]
            source = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            source.sample_rate, source.pts = self._rate, self._consumed + self._fed
            source.time_base = Fraction(1, self._rate)
            self._fed += len(chunk)
            frames = self._resampler.resample(source)
        elif self._open:
            return False
        else:
            self._flushed = True
            frames = self._resampler.resample(None)
        for frame in frames:
            frame.pts, frame.time_base = self._pts, self._time_base
            self._pts += frame.samples
            self._ready.append(frame)
        return True


def _starts_before(frame: av.AudioFrame, limit: Fraction) -> bool:
    """Frames made here always carry a pts (in output samples)."""
    return frame.pts is not None and frame.pts < limit
