"""Lip-sync while speech arrives (lipsync/live.py): the frames of a speech pushed in any
chunking, at any input rate, equal the offline path's frames for the same speech (f32),
for an image and for a video avatar; each frame leaves as soon as its audio is in."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from helpers import ASSETS, FACE_BOX

from lipsync import audio
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.errors import AudioError, ErrorCode
from lipsync.live import LiveLipSync
from lipsync.options import RenderOptions

SPEECH_SECONDS = 0.62
OPTIONS = RenderOptions(box=FACE_BOX, blend="none", quality="original")
RATES = [16000, 22050, 44100, 48000]
MS_CHUNKS = (10, 20, 40, 333)


@pytest.fixture(scope="module")
def engine(untrained_models) -> Wav2LipInferenceEngine:
    return Wav2LipInferenceEngine(untrained_models, precision="f32", batch_size=8)


@pytest.fixture(scope="module")
def avatars(engine, face_image) -> dict:
    """An image avatar and a 3-frame video avatar (the portrait shifted), prepared once."""
    clip = np.stack([np.roll(face_image, shift, axis=1) for shift in (0, 2, 4)])
    return {
        "image": engine.prepare_face(face_image, OPTIONS),
        "video": engine.prepare_face(clip, OPTIONS),
    }


def speech_at(rate: int) -> np.ndarray:
    """The first SPEECH_SECONDS of the test speech, as recorded at `rate`."""
    wav, native = audio.read_audio((ASSETS / "speech.wav").read_bytes())
    wav = wav[: int(SPEECH_SECONDS * native)]
    return wav if rate == native else soxr.resample(wav, native, rate).astype(np.float32)


def offline_frames(engine, prepared, wav: np.ndarray, rate: int) -> np.ndarray:
    """What the whole-file path renders for this speech."""
    samples = audio.resample(wav, rate)
    windows = audio.MelWindows(
        audio.melspectrogram(samples), OPTIONS.fps, audio.num_video_frames(len(samples), 25)
    )
    return np.concatenate(list(engine.iter_frames(prepared, windows, blend="none")))


def chunkings(rate: int) -> dict[str, list[int]]:
    """Chunk sizes in samples: 1 sample, 10/20/40/333 ms, seeded random sizes."""
    n = int(SPEECH_SECONDS * rate)
    random = np.random.default_rng(rate).integers(1, rate // 5, size=n // 50)
    return {
        "1 sample": [1] * n,
        **{f"{ms} ms": [rate * ms // 1000] * (n // (rate * ms // 1000) + 1) for ms in MS_CHUNKS},
        "random": list(random),
    }


def streamed_frames(engine, prepared, wav: np.ndarray, rate: int, sizes: list[int]):
    live = LiveLipSync(engine, prepared, OPTIONS, rate)
    parts, start = [], 0
    for size in sizes:
        if start >= len(wav):
            break
        parts.append(live.push(wav[start : start + size]))
        start += size
    parts.append(live.push(wav[start:]))
    parts.append(live.finish())
    return np.concatenate(parts)


@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("rate", RATES)
def test_streamed_frames_equal_the_offline_frames(engine, avatars, kind, rate):
    wav = speech_at(rate)
    expected = offline_frames(engine, avatars[kind], wav, rate)
    for name, sizes in chunkings(rate).items():
        if name == "1 sample" and (rate != 16000 or kind != "image"):
            continue  # one sample at a time is slow; one rate and avatar prove it
        got = streamed_frames(engine, avatars[kind], wav, rate, sizes)
        assert got.shape == expected.shape, name
        diff = np.abs(got.astype(int) - expected.astype(int)).max()
        assert diff <= 1, f"{name}: max difference {diff} grey levels"


def test_a_frame_leaves_as_soon_as_its_audio_is_in(engine, avatars):
    """At 25 fps frame t needs int(t * 80 / 25) * 200 + 3400 samples of 16 kHz speech (its
    window's 0.2 s plus half an STFT window), and not one more."""
    live = LiveLipSync(engine, avatars["image"], OPTIONS, 16000)
    wav = speech_at(16000)
    pushed = 0
    for t in range(4):
        needed = int(t * 80 / 25) * 200 + 3400
        assert len(live.push(wav[pushed : needed - 1])) == 0
        assert len(live.push(wav[needed - 1 : needed])) == 1
        assert live.num_frames == t + 1
        pushed = needed


def test_too_little_speech_is_audio_too_short(engine, avatars):
    live = LiveLipSync(engine, avatars["image"], OPTIONS, 16000)
    assert len(live.push(np.zeros(100, np.float32))) == 0
    with pytest.raises(AudioError) as caught:
        live.finish()
    assert caught.value.code is ErrorCode.AUDIO_TOO_SHORT


def test_a_shared_starter_and_a_loop_start_keep_the_offline_frames(engine, avatars):
    """Utterances sharing one batch starter (the face encoded once) each equal the offline
    frames; a video avatar told to start at loop position 7 shows, outside the face box,
    the frames 1, 0, 1, 2, 1, .. of its 3-frame clip's forward/backward loop."""
    wav = speech_at(16000)
    windows = audio.mel_windows(audio.melspectrogram(wav), 25, audio.num_video_frames(len(wav), 25))
    for kind, first in (("image", 0), ("video", 7)):
        prepared = avatars[kind]
        start = engine.batch_starter(prepared)
        expected = np.concatenate(
            list(engine.iter_frames(prepared, windows, blend="none", first_frame=first))
        )
        for _ in range(2):
            live = LiveLipSync(engine, prepared, OPTIONS, 16000, start)
            live.first_frame = first
            got = np.concatenate([live.push(wav), live.finish()])
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    top, bottom, left, right = avatars["video"].boxes[0]
    outside = np.ones(got.shape[1:3], bool)
    outside[top:bottom, left:right] = False
    loop = [1, 0, 1, 2] * len(got)
    for k, frame in enumerate(got):
        np.testing.assert_array_equal(frame[outside], avatars["video"].frames[loop[k]][outside])
