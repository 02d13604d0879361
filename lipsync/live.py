"""Lip-sync while the speech arrives: push PCM chunks, get each frame as soon as the audio
its mel window needs is in.

The offline path and this one are one implementation: the mel windows come from
`lipsync.audio_stream.SpeechStream` (the offline features computed incrementally, equal to
them) and the frames from the engine's `iter_frames`, told where in the output each part
starts. So the frames of a whole speech pushed in any chunking equal those of the offline
path for the same speech (tests/test_live.py), and a frame leaves 212.5 ms of audio after
its start at 25 fps (the window's 0.2 s plus half an STFT window), plus the resampler's
delay for input that is not 16 kHz.
"""

from __future__ import annotations

import numpy as np

from lipsync import audio
from lipsync.audio_stream import SpeechStream
from lipsync.engine import BatchStart, Wav2LipInferenceEngine
from lipsync.errors import AudioError, ErrorCode
from lipsync.faces import PreparedFace
from lipsync.options import RenderOptions


class LiveLipSync:
    """One speaker's speech, arriving in chunks, turned into frames of one prepared face.

    `push(samples)`: (n,) float32 mono at `sample_rate` -> (k, H, W, 3) uint8 BGR, the
    frames whose audio became complete (k >= 0, in order, each once). `finish()` -> the
    rest, the tail done exactly as the offline path does it (AudioError
    `audio_too_short` when the whole speech is shorter than the mel spectrogram needs).
    The frame rate is `options.fps` (for a video avatar, pass its own rate). With
    `options.silence_gate`, a frame whose window is silent (`audio.silent_windows`) is the
    avatar's own, made without inference; the switch is hard, as the offline gate's
    cross-fade needs frames ahead of the one being made.

    `start`: the engine's `batch_starter` for this face, shared by the utterances of one
    speaker so an image's face is encoded once (default: made here). `first_frame`: the
    avatar frame (a video avatar's forward/backward loop position) the first output frame
    shows; 0, as offline, unless the caller continues a loop (set it before the first
    frame is made).
    """

    def __init__(
        self,
        engine: Wav2LipInferenceEngine,
        prepared: PreparedFace,
        options: RenderOptions,
        sample_rate: int,
        start: BatchStart | None = None,
    ) -> None:
        self._engine = engine
        self._prepared = prepared
        self._options = options
        self._speech = SpeechStream(options.fps, sample_rate)
        self._start = start
        self.first_frame = 0
        self.num_frames = 0  # frames returned so far

    def push(self, samples: np.ndarray) -> np.ndarray:
        return self._render(self._speech.push(samples))

    def finish(self) -> np.ndarray:
        try:
            windows = self._speech.finish()
        except ValueError as exc:
            raise AudioError(str(exc), code=ErrorCode.AUDIO_TOO_SHORT, field="audio") from exc
        return self._render(windows)

    def _render(self, windows: np.ndarray) -> np.ndarray:
        """Frames for `windows`, the next ones of the output."""
        if not len(windows):
            return np.zeros((0, *self._prepared.frames.shape[1:]), np.uint8)
        if self._start is None:
            self._start = self._engine.batch_starter(self._prepared, self._options.model)
        batches = self._engine.iter_frames(
            self._prepared,
            windows,
            self._options.model,
            blend=self._options.blend,
            weights=self._gate(windows),
            first_frame=self.first_frame + self.num_frames,
            start=self._start,
        )
        frames = np.concatenate(list(batches))
        self.num_frames += len(frames)
        return frames

    def _gate(self, windows: np.ndarray) -> np.ndarray | None:
        """Generated share per frame under the live silence gate (1 or 0), None when off."""
        if not self._options.silence_gate:
            return None
        silent = audio.silent_windows(windows, self._options.silence_threshold_db)
        return (~silent).astype(np.float32)
