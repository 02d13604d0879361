"""The silence gate for live speech: a frame whose mel window is silent is the avatar's
own frame, made without inference.

The offline gate cross-fades over a few frames, which needs frames ahead of the one being
made; live, each frame leaves as soon as its window is in, so here the switch is hard
(no fade): weight 1 (generated) or 0 (the avatar's frame).
"""

from __future__ import annotations

import numpy as np

import audio
from lipsync.live import LiveLipSync


class GatedLiveLipSync(LiveLipSync):
    """LiveLipSync whose silent windows (level below `options.silence_threshold_db`:
    `audio.silent_windows`) give the avatar's own frames."""

    def _render(self, windows: np.ndarray) -> np.ndarray:
        if not len(windows):
            return super()._render(windows)
        silent = audio.silent_windows(np.asarray(windows), self._options.silence_threshold_db)
        weights = (~silent).astype(np.float32)
        batches = self._engine.iter_frames(
            self._prepared,
            windows,
            self._options.model,
            blend=self._options.blend,
            first_frame=self.num_frames,
            weights=weights,
        )
        frames = np.concatenate(list(batches))
        self.num_frames += len(frames)
        return frames
