"""Output size by quality mode, fitted once per avatar before detection, and the silence
gate: frames in silence are the avatar's own, without inference, with a cross-fade."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import ASSETS, FACE_BOX

from lipsync import audio, generation
from lipsync.avatars import AvatarStore, avatar_id_for
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.face_detection import FaceNotDetectedError
from lipsync.media.encode_options import EncodeOptions
from lipsync.media.sizing import fit_frames, scale_box
from lipsync.options import QUALITY_BOUNDS, RenderOptions, output_size
from lipsync.settings import Settings


@pytest.fixture(scope="module")
def engine(untrained_models) -> Wav2LipInferenceEngine:
    return Wav2LipInferenceEngine(untrained_models, precision="f32", batch_size=8)


@pytest.mark.parametrize(
    ("size", "quality", "expected"),
    [
        ((4000, 3000), "standard", (960, 720)),
        ((4000, 3000), "high", (1440, 1080)),
        ((4000, 3000), "original", (4000, 3000)),
        ((3000, 4000), "standard", (720, 960)),  # portrait: the bounds turned
        ((1920, 1080), "standard", (1280, 720)),
        ((1280, 720), "standard", (1280, 720)),
        ((512, 512), "high", (512, 512)),  # never enlarged
        ((641, 481), "standard", (640, 480)),  # odd: even sizes
        ((641, 481), "original", (640, 480)),
        ((1921, 1081), "high", (1918, 1080)),
        ((3, 1), "original", (2, 2)),
    ],
)
def test_output_size(size, quality, expected):
    assert output_size(*size, quality) == expected


def test_output_sizes_are_even_within_bounds_and_keep_the_aspect_ratio():
    rng = np.random.default_rng(0)
    for width, height in rng.integers(16, 6000, size=(300, 2)):
        for quality, bounds in QUALITY_BOUNDS.items():
            w, h = output_size(int(width), int(height), quality)
            assert w % 2 == 0 and h % 2 == 0 and w <= width and h <= height
            if bounds is not None:
                assert max(w, h) <= bounds[0] and min(w, h) <= bounds[1]
            # Rounding to even moves each side by at most 2 pixels from the exact scale.
            assert abs(w * height / width - h) <= 2 * max(1, height / width) + 1


def test_bad_quality_and_options_name_the_field():
    with pytest.raises(ValueError, match="quality"):
        output_size(100, 100, "ultra")
    for kwargs, name in [
        ({"quality": "ultra"}, "quality"),
        ({"blend": "hard"}, "blend"),
        ({"silence_gate": "yes"}, "silence_gate"),
        ({"silence_threshold_db": 3.0}, "silence_threshold_db"),
        ({"silence_threshold_db": float("nan")}, "silence_threshold_db"),
        ({"silence_threshold_db": True}, "silence_threshold_db"),
        ({"silence_fade_frames": -1}, "silence_fade_frames"),
        ({"silence_fade_frames": 2.5}, "silence_fade_frames"),
    ]:
        with pytest.raises(ValueError, match=name):
            RenderOptions(**kwargs)
    defaults = RenderOptions()
    assert (defaults.blend, defaults.quality, defaults.silence_gate) == ("soft", "standard", False)
    settings = Settings()
    assert (settings.default_quality, settings.default_blend) == ("standard", "soft")
    for name in ("default_quality", "default_blend"):
        with pytest.raises(ValueError, match=name):
            Settings(**{name: "x"})


def test_fit_frames_resizes_or_crops_exactly():
    rng = np.random.default_rng(1)
    odd = rng.integers(0, 256, (2, 481, 641, 3), dtype=np.uint8)
    cropped = fit_frames(odd, "original")
    assert cropped.shape == (2, 480, 640, 3)
    np.testing.assert_array_equal(cropped, odd[:, :480, :640])
    even = odd[:, :480, :640]
    assert fit_frames(even, "standard") is even
    big = rng.integers(0, 256, (1, 1500, 2000, 3), dtype=np.uint8)
    assert fit_frames(big, "standard").shape == (1, 720, 960, 3)
    assert scale_box((100, 300, 200, 400), (2000, 1500), (960, 720)) == (48, 144, 96, 192)
    assert scale_box((10, 481, 0, 641), (641, 481), (640, 480)) == (10, 480, 0, 640)


def test_a_phone_photo_is_fitted_before_detection(engine, face_image, monkeypatch):
    photo = cv2.resize(face_image, (2000, 2000), interpolation=cv2.INTER_CUBIC)  # 4 MP
    seen = []
    detect = engine.detect_faces

    def spy(frames, fill_missing=False):
        seen.append(frames.shape)
        return detect(frames, fill_missing)

    monkeypatch.setattr(engine, "detect_faces", spy)
    prepared = engine.prepare_face(photo, RenderOptions(quality="standard"))
    assert prepared.frames.shape == (1, 720, 720, 3) and seen == [(1, 720, 720, 3)]
    top, bottom, left, right = prepared.boxes[0]
    assert 0 <= top < bottom <= 720 and 0 <= left < right <= 720
    high = engine.prepare_face(photo, RenderOptions(quality="high", box=(400, 800, 600, 1000)))
    assert high.frames.shape == (1, 1080, 1080, 3)
    assert high.boxes[0].tolist() == [216, 432, 324, 540]  # the box scaled with the photo
    original = engine.prepare_face(photo, RenderOptions(quality="original", box=(0, 10, 0, 10)))
    assert original.frames.shape == (1, 2000, 2000, 3)


def test_no_face_at_the_reduced_size_is_looked_for_at_the_input_size(engine, monkeypatch):
    photo = np.zeros((1, 1440, 2560, 3), np.uint8)

    def detect(frames, fill_missing=False):
        if frames.shape[2] < 2560:
            raise FaceNotDetectedError("no face detected", frame_index=0)
        return [(1000, 400, 1400, 800)]

    monkeypatch.setattr(engine, "detect_faces", detect)
    prepared = engine.prepare_face(photo, RenderOptions(quality="standard", pads=(0, 0, 0, 0)))
    assert prepared.frames.shape == (1, 720, 1280, 3)
    assert prepared.boxes[0].tolist() == [200, 400, 500, 700]  # (top, bottom, left, right)
    with pytest.raises(FaceNotDetectedError):  # already at the input's size: no second look
        engine.prepare_face(photo[:, :720, :1280], RenderOptions(quality="standard"))


def speech_with_pauses() -> np.ndarray:
    """1 s silence, 0.6 s tone, 1 s silence at 16 kHz: (41600,) float32."""
    rate = audio.SAMPLE_RATE
    t = np.arange(int(0.6 * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    silence = np.zeros(rate, np.float32)
    return np.concatenate([silence, tone, silence])


def test_silence_gate_decision_on_mel_windows():
    mel = audio.melspectrogram(speech_with_pauses())
    windows = audio.mel_windows(mel, 25, 65)
    levels = audio.window_level_db(windows)
    assert levels.shape == (65,) and levels[0] == audio.MIN_LEVEL_DB
    silent = audio.silent_windows(windows, -65.0)
    # Window i covers [i/25, i/25 + 0.2) s: voiced when it overlaps the tone at 1.0-1.6 s.
    expected = np.array([not (1.0 - 0.2 < i / 25 < 1.6) for i in range(65)])
    assert (silent != expected).sum() <= 2  # the STFT's 50 ms frames blur each edge by one
    assert audio.window_level_db(windows[30]).shape == ()


def test_gated_frames_are_the_originals_without_inference(engine, face_image, monkeypatch):
    options = RenderOptions(box=FACE_BOX, silence_gate=True, silence_fade_frames=3)
    prepared = engine.prepare_face(face_image, options)
    windows = audio.MelWindows(audio.melspectrogram(speech_with_pauses()), 25, 65)
    weights = generation.gate_weights(windows, options)
    generated = []
    generator = engine.generator("wav2lip")
    start = generator.start_with_face

    def counting(mels, features):
        generated.append(len(mels))
        return start(mels, features)

    monkeypatch.setattr(generator, "start_with_face", counting)
    frames = np.concatenate(list(engine.iter_frames(prepared, windows, weights=weights)))
    assert len(frames) == 65 and sum(generated) == np.count_nonzero(weights) < 65
    for frame, weight in zip(frames, weights, strict=True):
        if weight == 0:
            np.testing.assert_array_equal(frame, face_image)
    # Around the switches the distance to the original grows with the weight (cross-fade).
    distance = np.abs(frames.astype(int) - face_image).sum(axis=(1, 2, 3))
    fade_in = np.flatnonzero((weights > 0) & (weights < 1))[:3]
    assert weights[fade_in].tolist() == [0.25, 0.5, 0.75]
    assert (distance[fade_in] > 0).all()


def test_generate_reports_the_frames_the_gate_saved(engine, face_image):
    speech = speech_with_pauses()
    prepared = engine.prepare_face(face_image, RenderOptions(box=FACE_BOX))
    results = {}
    for gate in (False, True):
        options = RenderOptions(box=FACE_BOX, silence_gate=gate)
        results[gate] = generation.generate(
            engine,
            prepared,
            generation.Speech(speech, audio.SAMPLE_RATE, speech),
            options,
            EncodeOptions(container="webm"),
        )
    assert results[False].silent_frames == 0 and "gate" not in results[False].timings_ms
    gated = results[True]
    assert gated.video.num_frames == results[False].video.num_frames == 65
    assert 30 <= gated.silent_frames < 65 and "gate" in gated.timings_ms


def test_avatars_key_on_quality_and_reload_at_their_size(engine, face_image, tmp_path):
    photo = cv2.resize(face_image, (1600, 1600))
    data = cv2.imencode(".png", photo)[1].tobytes()
    ids = {avatar_id_for(data, RenderOptions(quality=q)) for q in QUALITY_BOUNDS}
    assert len(ids) == 3

    def make_store() -> AvatarStore:
        return AvatarStore(
            tmp_path,
            1 << 30,
            decode=lambda raw: (cv2.imdecode(np.frombuffer(raw, np.uint8), 1)[None], None),
            prepare=lambda frames, options, timings: engine.prepare_face(frames, options),
        )

    options = RenderOptions(quality="standard", box=(400, 1200, 400, 1200))
    avatar, created = make_store().get_or_create(data, options, persist=True)
    assert created and avatar.prepared.frames.shape == (1, 720, 720, 3)
    assert avatar.meta()["quality"] == "standard" and avatar.meta()["width"] == 720
    reloaded = make_store().get(avatar.avatar_id)  # a restarted worker: from disk
    assert reloaded.quality == "standard"
    np.testing.assert_array_equal(reloaded.prepared.frames, avatar.prepared.frames)
    np.testing.assert_array_equal(reloaded.prepared.boxes, avatar.prepared.boxes)


def test_talking_head_preset_sets_model_and_output_size(untrained_models, face_image, tmp_path):
    from lipsync.talking_head import Wav2LipTalkingHead

    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), cv2.resize(face_image, (2000, 1500)))
    for mode, model, size in [
        ("standard", "wav2lip", (960, 720)),
        ("high", "wav2lip_gan", (1440, 1080)),
    ]:
        head = Wav2LipTalkingHead(
            path, preset=mode, model_path=untrained_models, box=(300, 900, 600, 1200)
        )
        info = head.get_model_info()
        assert info["model"] == model and (info["output_width"], info["output_height"]) == size
        prepared = head.preprocess_avatar()
        assert (prepared["width"], prepared["height"]) == size
        head.cleanup()


def test_talking_head_takes_blend_and_silence_gate(untrained_models):

    from lipsync.talking_head import Wav2LipTalkingHead

    image = ASSETS / "face.jpg"
    head = Wav2LipTalkingHead(
        image, model_path=untrained_models, blend="none", silence_gate=True, box=FACE_BOX
    )
    assert (head.options.blend, head.options.silence_gate) == ("none", True)
    head.cleanup()
    with pytest.raises(ValueError, match="blend"):
        Wav2LipTalkingHead(image, model_path=untrained_models, blend="hard")
