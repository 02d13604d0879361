"""Wav2LipInferenceEngine against the PyTorch oracle of the reference pipeline, in f32.

Parity runs paste like the reference (`blend="none"`); the service's soft blend is tested
in test_compositing.py."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from helpers import FACE_BOX

from lipsync import audio
from lipsync.conversion import checkpoints
from lipsync.engine import ModelNotFoundError, Wav2LipInferenceEngine
from lipsync.face_detection import FaceNotDetectedError
from lipsync.faces import frame_order
from lipsync.networks import reference_pipeline
from lipsync.options import RenderOptions

# Parity budget of the issue: every frame within 2 grey levels of the reference.
MAX_GREY_DIFF = 2


@pytest.fixture(scope="module")
def engine(untrained_models) -> Wav2LipInferenceEngine:
    return Wav2LipInferenceEngine(untrained_models, precision="f32", batch_size=8)


@pytest.fixture(scope="module")
def torch_nets(untrained_models):
    ckpt = untrained_models / "untrained-checkpoints"
    wav2lip = checkpoints.build_wav2lip(checkpoints.load_wav2lip_state_dict(ckpt / "wav2lip.pth"))
    s3fd = checkpoints.build_s3fd(checkpoints.load_s3fd_state_dict(ckpt / "s3fd.pth"))
    return wav2lip, s3fd


@pytest.fixture(scope="module")
def small_face(face_image) -> np.ndarray:
    """The portrait at 256x256: cheap for the PyTorch oracle, still a real photo."""
    return cv2.resize(face_image, (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def speech(speech_bytes) -> np.ndarray:
    return audio.load_audio(speech_bytes)[: int(1.3 * audio.SAMPLE_RATE)]


def assert_frames_match(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= MAX_GREY_DIFF, f"max grey difference {diff.max()}"


def test_detection_matches_the_reference(engine, torch_nets, small_face):
    frames = [small_face, np.ascontiguousarray(small_face[:, ::-1])]
    expected = reference_pipeline.detect(torch_nets[1], frames)
    assert all(rect is not None for rect in expected)
    assert engine.detector.detect_best(np.stack(frames)) == expected
    assert engine.detect_face(small_face) == expected[0]


def test_render_with_detection_matches_the_reference(engine, torch_nets, small_face, speech):
    reference = reference_pipeline.render(*torch_nets, [small_face], speech, fps=25)
    ours = engine.render(small_face, speech, fps=25, blend="none")
    assert len(ours) == len(reference_pipeline.mel_windows(reference_pipeline.mel(speech), 25))
    assert_frames_match(ours, reference)
    # The mouth region really changed (the generator output was pasted).
    assert np.abs(ours[0].astype(int) - small_face).max() > 10


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_render_with_explicit_box_matches_the_reference(
    engine, torch_nets, face_image, speech, fps
):
    reference = reference_pipeline.render(*torch_nets, [face_image], speech, fps=fps, box=FACE_BOX)
    ours = engine.render(face_image, speech, fps=fps, box=FACE_BOX, blend="none")
    assert_frames_match(ours, reference)
    top, bottom, left, right = FACE_BOX
    outside = np.ones(face_image.shape[:2], bool)
    outside[top:bottom, left:right] = False
    assert (ours[:, outside] == face_image[outside]).all(), "pixels outside the box must not change"


def test_video_render_matches_the_reference_with_smoothing(engine, torch_nets, small_face, speech):
    # A moving face: the clip pans, so each frame gets its own detection before smoothing.
    frames = [np.roll(small_face, shift, axis=1) for shift in range(0, 48, 4)]
    short = speech[: int(0.45 * audio.SAMPLE_RATE)]  # fewer windows than frames, like the reference
    reference = reference_pipeline.render(*torch_nets, frames, short, fps=25)
    ours = engine.render(frames, short, fps=25, blend="none")
    assert_frames_match(ours, reference)


def test_video_longer_speech_plays_back_and_forth(engine):
    assert frame_order(10, 4).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert frame_order(3, 1).tolist() == [0, 0, 0]
    frames = np.stack([np.full((64, 64, 3), 40 * i, np.uint8) for i in range(4)])
    prepared = engine.prepare_face(frames, RenderOptions(box=(0, 64, 0, 64)))
    mels = np.zeros((10, audio.N_MELS, audio.MEL_WINDOW), np.float32)
    out = np.concatenate(list(engine.iter_frames(prepared, mels, blend="none")))
    assert len(out) == 10
    # Every output frame is fully replaced by its generated face; the source order shows
    # through the generator only, so compare against generating each source frame alone.
    single = [engine.generate_lip_sync(frames[i], mels[:1])[0] for i in range(4)]
    for out_frame, src in zip(out, frame_order(10, 4), strict=True):
        diff = np.abs(out_frame.astype(int) - cv2.resize(single[src], (64, 64)))
        assert diff.max() <= 1  # batch 8 vs batch 1 kernels may round differently


def test_an_image_is_encoded_once_and_a_video_runs_the_whole_network(untrained_models, monkeypatch):
    engine = Wav2LipInferenceEngine(untrained_models, precision="f32", batch_size=8)
    engine.compile(["wav2lip"])  # what a worker compiles before its first request
    generator = engine.generator("wav2lip")
    assert generator.encoder.compiled and generator.decoder.compiled
    encode, encoded = generator.encode_face, []

    def counting_encode(face):
        encoded.append(len(face))
        return encode(face)

    monkeypatch.setattr(generator, "encode_face", counting_encode)
    frames = np.stack([np.full((64, 64, 3), 60 * i, np.uint8) for i in range(3)])
    mels = np.zeros((2 * engine.batch_size + 3, audio.N_MELS, audio.MEL_WINDOW), np.float32)
    options = RenderOptions(box=(0, 64, 0, 64))
    timings = {}
    image = list(engine.iter_frames(engine.prepare_face(frames[0], options), mels, timings=timings))
    assert encoded == [1] and timings["infer"] > 0
    assert [len(batch) for batch in image] == [engine.batch_size, engine.batch_size, 3]
    assert not generator.whole.compiled  # compiled on first use, by a video
    video = list(engine.iter_frames(engine.prepare_face(frames, options), mels))
    assert encoded == [1] and generator.whole.compiled
    assert sum(map(len, video)) == len(mels)


def test_generate_lip_sync_and_mel_chunks(engine, face_image, speech):
    top, bottom, left, right = FACE_BOX
    mels = engine.audio_to_mel_windows(speech, fps=25)
    assert mels.shape == (
        len(reference_pipeline.mel_windows(reference_pipeline.mel(speech), 25)),
        80,
        16,
    )
    mouths = engine.generate_lip_sync(face_image[top:bottom, left:right], mels)
    assert mouths.shape == (len(mels), 96, 96, 3) and mouths.dtype == np.uint8
    assert mouths.std() > 5, "untrained generator output should still vary"
    exact = engine.audio_to_mel_windows(speech, fps=25, num_frames=40)
    assert exact.shape == (40, 80, 16)


def test_exact_frame_count_covers_the_audio(engine, face_image, speech):
    num_frames = audio.num_video_frames(len(speech), 25)
    frames = engine.render(face_image, speech, box=FACE_BOX, num_frames=num_frames)
    assert len(frames) == num_frames == 33  # 1.3 s at 25 fps


def test_no_face_raises_face_not_detected(blind_models, small_face, speech):
    engine = Wav2LipInferenceEngine(blind_models, precision="f32")
    with pytest.raises(FaceNotDetectedError):
        engine.detect_face(small_face)
    with pytest.raises(FaceNotDetectedError, match="frame 0"):
        engine.render([small_face, small_face], speech)
    # An explicit box needs no detector.
    assert len(engine.render(small_face, speech, box=(0, 128, 0, 128))) > 0


def test_bad_options_raise_value_error_naming_them(engine, face_image, speech):
    for kwargs, name in [
        ({"fps": 0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"pads": (0, -1, 0, 0)}, "pads"),
        ({"model": "wav3lip"}, "model"),
        ({"box": (0, 10, 0)}, "box"),
        ({"box": (0, 600, 0, 10)}, "box"),
    ]:
        with pytest.raises(ValueError, match=name):
            engine.render(face_image, speech, **kwargs)


def test_missing_model_is_reported_and_models_compile_lazily_once(
    untrained_models, tmp_path, face_image, speech
):
    for ext in (".xml", ".bin"):
        (tmp_path / f"wav2lip{ext}").symlink_to(untrained_models / f"wav2lip{ext}")
    engine = Wav2LipInferenceEngine(tmp_path, precision="f32")
    status = engine.model_status()
    assert status["wav2lip"]["present"] and not status["wav2lip"]["compiled"]
    assert not status["face_detection"]["present"]
    with pytest.raises(ModelNotFoundError, match="face_detection"):
        engine.detect_face(face_image)
    with pytest.raises(ModelNotFoundError, match="wav2lip_gan"):
        engine.render(face_image, speech, box=FACE_BOX, model="wav2lip_gan")

    results, compiled = [], []
    for network in engine._networks["wav2lip"]:  # face encoder, decoder
        preprocess = network._preprocess  # runs exactly once per compilation

        def counting_preprocess(model, preprocess=preprocess, name=network):
            compiled.append(name)
            return preprocess(model)

        network._preprocess = counting_preprocess
    threads = [
        threading.Thread(
            target=lambda: results.append(engine.render(face_image, speech, box=FACE_BOX))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(compiled) == len(set(compiled)) == 2 and len(results) == 3
    np.testing.assert_array_equal(results[0], results[1])
    assert engine.model_status()["wav2lip"]["compiled"]
