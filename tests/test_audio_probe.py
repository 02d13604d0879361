"""Declared audio durations (lipsync/media/audio_probe.py): a long file is refused from its
header, before its samples are decoded."""

from __future__ import annotations

import io
import tracemalloc

import av
import numpy as np
import pytest
import soundfile as sf

from lipsync import generation
from lipsync.errors import AudioError, ErrorCode
from lipsync.media.audio_probe import declared_audio
from lipsync.settings import Settings


def soundfile_bytes(seconds: float, rate: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), np.float32), rate, format=fmt)
    return buffer.getvalue()


def opus_webm(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        samples = np.zeros((1, int(seconds * 48000)), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.rate = 48000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_soundfile_formats_declare_their_length(fmt):
    seconds, rate = declared_audio(soundfile_bytes(2.5, 16000, fmt))
    assert (seconds, rate) == (pytest.approx(2.5, abs=0.01), 16000)


def test_container_formats_declare_their_length():
    seconds, rate = declared_audio(opus_webm(1.5))
    assert (seconds, rate) == (pytest.approx(1.5, abs=0.05), 48000)


def test_what_is_not_audio_declares_nothing():
    assert declared_audio(b"not audio at all") is None


def test_a_long_compressed_file_is_refused_before_decoding():
    """600 s of FLAC silence is ~90 KB but 38 MB of float32 samples once decoded."""
    data = soundfile_bytes(600, 16000, "FLAC")
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(AudioError) as caught:
            generation.decode_speech(data, Settings(max_audio_seconds=300))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code is ErrorCode.AUDIO_TOO_LONG
    assert peak < 5_000_000, f"decoded before refusing: peak {peak / 1e6:.1f} MB"
