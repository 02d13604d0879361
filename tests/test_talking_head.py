"""The integrators' Python API: Wav2LipTalkingHead."""

from __future__ import annotations

import cv2
import pytest
from helpers import ASSETS, FACE_BOX, probe_video

from lipsync.errors import AudioError, ErrorCode, InvalidFieldError, InvalidInputError
from lipsync.talking_head import Wav2LipTalkingHead

SPEECH = ASSETS / "speech.wav"
SPEECH_FRAMES = 138  # ceil(5.50 s * 25)


@pytest.fixture(scope="module")
def head(untrained_models):
    with Wav2LipTalkingHead(ASSETS / "face.jpg", model_path=untrained_models, box=FACE_BOX) as head:
        yield head


def test_generate_webm_and_mp4(head, tmp_path):
    assert head.preprocess_avatar() == {"box": list(FACE_BOX), "width": 512, "height": 512}
    out = head.generate(SPEECH, tmp_path / "reply.webm")
    assert out == str(tmp_path / "reply.webm")
    info = probe_video((tmp_path / "reply.webm").read_bytes())
    assert (info["video_codec"], info["audio_codec"], info["num_frames"]) == (
        "vp9",
        "opus",
        SPEECH_FRAMES,
    )
    head.generate(SPEECH, tmp_path / "silent.mp4", fps=30, include_audio=False)
    info = probe_video((tmp_path / "silent.mp4").read_bytes())
    assert (info["video_codec"], info["audio_codec"], info["fps"]) == ("h264", None, 30.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "reply.webm",
        "silent.mp4",
    ]  # no temp files


def test_estimate_uses_measured_throughput(head, tmp_path):
    head.generate(SPEECH, tmp_path / "a.webm")
    measured = head.get_model_info()["seconds_per_frame"]
    assert measured > 0
    assert head.estimate_generation_time(4.0) == pytest.approx(100 * measured)
    assert head.estimate_generation_time(8.0) == pytest.approx(
        2 * head.estimate_generation_time(4.0)
    )
    with pytest.raises(ValueError, match="audio_duration"):
        head.estimate_generation_time(0)


def test_estimate_before_any_generation_measures(untrained_models):
    head = Wav2LipTalkingHead(ASSETS / "face.jpg", model_path=untrained_models, box=FACE_BOX)
    assert head.get_model_info()["seconds_per_frame"] is None
    assert head.estimate_generation_time(2.0) > 0
    assert head.get_model_info()["seconds_per_frame"] > 0
    assert head.get_model_info()["avatar_preprocessed"] is True


def test_presets_and_model_info(untrained_models, tmp_path):
    head = Wav2LipTalkingHead(
        ASSETS / "face.jpg", preset="high", model_path=untrained_models, box=FACE_BOX
    )
    info = head.get_model_info()
    assert info["model"] == "wav2lip_gan" and info["preset"] == info["quality_mode"] == "high"
    assert info["device"] == "CPU" and info["openvino_version"]
    assert (info["output_width"], info["output_height"]) == (512, 512)  # within 1920x1080
    head.generate(SPEECH, tmp_path / "gan.webm")
    assert head.get_model_info()["models"]["wav2lip_gan"]["compiled"]
    assert not head.get_model_info()["models"]["wav2lip"]["compiled"]


def test_quality_mode_is_the_deprecated_name_of_preset(untrained_models):
    with pytest.warns(DeprecationWarning, match="preset"):
        head = Wav2LipTalkingHead(
            ASSETS / "face.jpg", quality_mode="high", model_path=untrained_models, box=FACE_BOX
        )
    assert (head.preset, head.options.model, head.options.quality) == (
        "high",
        "wav2lip_gan",
        "high",
    )
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidFieldError, match="quality_mode"):
        Wav2LipTalkingHead(ASSETS / "face.jpg", quality_mode="ultra", model_path=untrained_models)


def test_settings_reach_the_engine(untrained_models, monkeypatch):
    """LIPSYNC_BATCH_SIZE and LIPSYNC_INFERENCE_THREADS configure the Python API's engine
    as they do the server's."""
    monkeypatch.setenv("LIPSYNC_BATCH_SIZE", "3")
    monkeypatch.setenv("LIPSYNC_INFERENCE_THREADS", "1")
    head = Wav2LipTalkingHead(ASSETS / "face.jpg", model_path=untrained_models, box=FACE_BOX)
    assert head.engine.batch_size == 3
    assert head.engine.core.get_property("CPU", "INFERENCE_NUM_THREADS") == 1
    frames = list(head.iter_frames(SPEECH))
    assert len(frames) == SPEECH_FRAMES


def test_errors(untrained_models, head, tmp_path):
    with pytest.raises(FileNotFoundError, match="avatar image"):
        Wav2LipTalkingHead(tmp_path / "missing.jpg", model_path=untrained_models)
    with pytest.raises(FileNotFoundError, match="models directory"):
        Wav2LipTalkingHead(ASSETS / "face.jpg", model_path=tmp_path / "nope")
    with pytest.raises(ValueError, match="preset"):
        Wav2LipTalkingHead(ASSETS / "face.jpg", preset="ultra", model_path=untrained_models)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ValueError):
        Wav2LipTalkingHead(tmp_path / "text.jpg", model_path=untrained_models)
    with pytest.raises(FileNotFoundError, match="audio file"):
        head.generate(tmp_path / "missing.wav", tmp_path / "x.webm")
    with pytest.raises(ValueError, match="output_path"):
        head.generate(SPEECH, tmp_path / "x.avi")
    (tmp_path / "noise.wav").write_bytes(b"RIFF1234WAVEnope")
    with pytest.raises(ValueError, match="audio"):
        head.generate(tmp_path / "noise.wav", tmp_path / "x.webm")
    with pytest.raises(ValueError, match="fps"):
        head.generate(SPEECH, tmp_path / "x.webm", fps=0)
    assert not (tmp_path / "x.webm").exists()


def test_cleanup_releases_the_engine(untrained_models, tmp_path):
    cv2.imwrite(str(tmp_path / "face.png"), cv2.imread(str(ASSETS / "face.jpg")))
    head = Wav2LipTalkingHead(tmp_path / "face.png", model_path=untrained_models, box=FACE_BOX)
    head.cleanup()
    with pytest.raises(RuntimeError, match="cleaned up"):
        head.generate(SPEECH, tmp_path / "x.webm")


def test_errors_are_typed_and_untranslated(untrained_models, head, tmp_path):
    """The library's own errors reach the integrator as they were raised: ValueErrors that
    carry their code and field, and a missing model as a FileNotFoundError."""
    (tmp_path / "noise.wav").write_bytes(b"RIFF1234WAVEnope")
    with pytest.raises(AudioError) as bad_audio:
        head.generate(tmp_path / "noise.wav", tmp_path / "x.webm")
    assert isinstance(bad_audio.value, ValueError)
    assert (bad_audio.value.code, bad_audio.value.field) == (ErrorCode.UNSUPPORTED_AUDIO, "audio")
    with pytest.raises(InvalidFieldError) as bad_fps:
        head.generate(SPEECH, tmp_path / "x.webm", fps=0)
    assert (bad_fps.value.code, bad_fps.value.field) == (ErrorCode.INVALID_FIELD, "fps")
    outside = Wav2LipTalkingHead(
        ASSETS / "face.jpg", model_path=untrained_models, box=(0, 600, 0, 10)
    )
    with pytest.raises(InvalidInputError) as bad_box:
        outside.preprocess_avatar()
    assert (bad_box.value.code, bad_box.value.field) == (ErrorCode.INVALID_INPUT, "box")
    only_detector = tmp_path / "models"
    only_detector.mkdir()
    for ext in (".xml", ".bin"):
        (only_detector / f"face_detection{ext}").symlink_to(
            untrained_models / f"face_detection{ext}"
        )
    missing = Wav2LipTalkingHead(ASSETS / "face.jpg", model_path=only_detector, box=FACE_BOX)
    with pytest.raises(FileNotFoundError) as no_model:
        missing.generate(SPEECH, tmp_path / "x.webm")
    assert no_model.value.code is ErrorCode.MODEL_UNAVAILABLE
