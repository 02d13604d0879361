"""Tests for lipsync.media.encode_options: EncodeOptions validation and defaults."""

from __future__ import annotations

import pytest

from lipsync.media.encode_options import EncodeOptions


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"container": "avi"}, "container"),
        ({"vp9_crf": 64}, "vp9_crf"),
        ({"vp9_crf": 30.5}, "vp9_crf"),
        ({"vp9_cpu_used": 9}, "vp9_cpu_used"),
        ({"vp9_deadline": "fast"}, "vp9_deadline"),
        ({"x264_crf": 52}, "x264_crf"),
        ({"x264_crf": "23"}, "x264_crf"),
        ({"x264_preset": "warp"}, "x264_preset"),
        ({"x264_profile": "high10"}, "x264_profile"),
        ({"audio_bitrate": 0}, "audio_bitrate"),
        ({"keyframe_interval_s": 0}, "keyframe_interval_s"),
        ({"keyframe_interval_s": float("nan")}, "keyframe_interval_s"),
        ({"threads": 0}, "threads"),
    ],
)
def test_encode_options_validation(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        EncodeOptions(**kwargs)  # type: ignore[arg-type]


def test_encode_options_defaults_and_frozen() -> None:
    options = EncodeOptions()
    assert options.container == "webm"
    assert options.mime_type == "video/webm"
    assert EncodeOptions(container="mp4").mime_type == "video/mp4"
    with pytest.raises(AttributeError):
        options.container = "mp4"  # type: ignore[misc]
