"""Output encoder settings: container and codec parameters, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lipsync.media.checks import check_int_range

ContainerName = Literal["webm", "mp4"]

MIME_TYPES: dict[str, str] = {"webm": "video/webm", "mp4": "video/mp4"}
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
X264_PROFILES = ("baseline", "main", "high")
VP9_DEADLINES = ("realtime", "good", "best")


@dataclass(frozen=True)
class EncodeOptions:
    """Output container and encoder settings.

    container: "webm" (VP9 + Opus) or "mp4" (H.264 + AAC, moov before mdat).
    vp9_crf: 0..63 constant quality (b:v 0). vp9_cpu_used: libvpx speed, -8..8.
    vp9_deadline: "realtime" | "good" | "best". x264_crf: 0..51. x264_preset / x264_profile:
    libx264 preset and profile. audio_bitrate: bits/s (6 k..510 k). keyframe_interval_s:
    max seconds between keyframes. threads: encoder threads (1..64).
    """

    container: ContainerName = "webm"
    vp9_crf: int = 30
    vp9_cpu_used: int = 8
    vp9_deadline: str = "realtime"
    x264_crf: float = 23.0
    x264_preset: str = "veryfast"
    x264_profile: str = "high"
    audio_bitrate: int = 64_000
    keyframe_interval_s: float = 4.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.container not in MIME_TYPES:
            raise ValueError(f"container must be 'webm' or 'mp4', got {self.container!r}")
        check_int_range("vp9_crf", self.vp9_crf, 0, 63)
        check_int_range("vp9_cpu_used", self.vp9_cpu_used, -8, 8)
        if self.vp9_deadline not in VP9_DEADLINES:
            raise ValueError(
                f"vp9_deadline must be one of {VP9_DEADLINES}, got {self.vp9_deadline!r}"
            )
        if not (
            isinstance(self.x264_crf, int | float)
            and not isinstance(self.x264_crf, bool)
            and 0 <= self.x264_crf <= 51
        ):
            raise ValueError(f"x264_crf must be in [0, 51], got {self.x264_crf!r}")
        if self.x264_preset not in X264_PRESETS:
            raise ValueError(f"x264_preset must be one of {X264_PRESETS}, got {self.x264_preset!r}")
        if self.x264_profile not in X264_PROFILES:
            raise ValueError(
                f"x264_profile must be one of {X264_PROFILES}, got {self.x264_profile!r}"
            )
        check_int_range("audio_bitrate", self.audio_bitrate, 6_000, 510_000)
        if not (
            isinstance(self.keyframe_interval_s, int | float)
            and math.isfinite(self.keyframe_interval_s)
            and self.keyframe_interval_s > 0
        ):
            raise ValueError(
                f"keyframe_interval_s must be positive, got {self.keyframe_interval_s!r}"
            )
        check_int_range("threads", self.threads, 1, 64)

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.container]
