"""Every numeric limit of a request, declared once.

The library enforces them (`lipsync.options.RenderOptions`, `lipsync.settings.Settings`,
`lipsync.generation`), and the request models of every transport take their bounds from
here (HTTP: `lipsync/server/schemas.py`; WebSocket: `lipsync/server/realtime/protocol.py`),
so the published schemas (`/openapi.json`, `/api/stream/protocol.json`) show the numbers
the code enforces (tests/test_limits.py compares them). Plain data: no imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """An inclusive range [minimum, maximum]; `integer`: only whole numbers belong."""

    minimum: int | float
    maximum: int | float
    integer: bool = False

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not float(value).is_integer():
            return False
        return self.minimum <= value <= self.maximum

    @property
    def text(self) -> str:
        """'1..60'."""
        return f"{self.minimum:g}..{self.maximum:g}"


# Output frame rate of an image face, and the frame rates a face video may have.
FPS = Range(1, 60)
# Silence gate threshold, dB on Wav2Lip's mel scale. Its floor is the scale's own
# (`lipsync.audio.MIN_LEVEL_DB`, digital silence): no window is quieter, so a lower
# threshold would never gate a frame (it would mean "gate off", which `silence_gate` says).
SILENCE_THRESHOLD_DB = Range(-100, 0)
# Frames over which generated and original frames cross-fade at a gate switch.
SILENCE_FADE_FRAMES = Range(0, 25, integer=True)
# Sample rates the speech may have (the settings may narrow it, never widen it), and the
# channels of live PCM.
AUDIO_SAMPLE_RATE_HZ = Range(8000, 192000, integer=True)
AUDIO_CHANNELS = Range(1, 8, integer=True)
# JPEG quality of live frames.
JPEG_QUALITY = Range(1, 100, integer=True)
# How long before its presentation time a paced live frame may leave the server, ms. The
# default covers what a player's jitter buffer must absorb on a real network (a mobile
# link's jitter of tens of ms and one lost packet's retransmission on a ~100 ms round trip)
# while an interrupt leaves at most that much of the old reply in flight (5 frames at 25 fps).
LEAD_MS = Range(0, 1000, integer=True)
DEFAULT_LEAD_MS = 200
# Pads and box: [top, bottom, left, right] pixels; pads are never negative.
FACE_SIDES = 4
MIN_PAD = 0
