"""The generator cut in two at load time: face encoder + decoder against the whole IR, in f32."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
from helpers import generator_from

from lipsync.conversion import generated_inputs, quantize_int8
from lipsync.runtime.wav2lip import (
    AUDIO_INPUT,
    FACE_INPUT,
    FEATURES,
    decoder_model,
    face_encoder_model,
    face_feature_outputs,
)

# The outputs of Wav2Lip's 7 face encoder blocks (channels, side), which the decoder
# concatenates in reverse order.
SKIP_FEATURES = [(16, 96), (32, 48), (64, 24), (128, 12), (256, 6), (512, 3), (512, 1)]


@pytest.fixture(scope="module")
def generator_xml(untrained_models):
    return untrained_models / "wav2lip.xml"


@pytest.fixture(scope="module")
def generator(generator_xml):
    return generator_from(generator_xml)


@pytest.fixture(scope="module")
def whole(generator_xml):
    return quantize_int8.compile_generator(ov.Core(), generator_xml, "f32")


def test_the_cut_is_the_face_encoders_seven_skip_features(generator_xml):
    model = ov.Core().read_model(generator_xml)
    shapes = [
        tuple(d.get_length() for d in out.get_partial_shape()[1:])
        for out in face_feature_outputs(model)
    ]
    assert shapes == [(c, side, side) for c, side in SKIP_FEATURES]
    encoder = face_encoder_model(ov.Core().read_model(generator_xml))
    decoder = decoder_model(ov.Core().read_model(generator_xml))
    names = [f"{FEATURES}.{i}" for i in range(len(SKIP_FEATURES))]
    assert [out.get_any_name() for out in encoder.outputs] == names
    assert [inp.get_any_name() for inp in decoder.inputs] == [AUDIO_INPUT, *names]
    assert all(FACE_INPUT not in p.output(0).get_names() for p in decoder.get_parameters())


def test_a_face_per_window_runs_the_whole_network(generator, whole):
    mels, faces = generated_inputs.engine_inputs(5, seed=4)
    expected = quantize_int8.generate(whole, mels, faces)
    np.testing.assert_array_equal(generator.infer(mels, faces), expected)
    np.testing.assert_array_equal(generator.start(mels, faces).wait(), expected)


def test_one_face_is_encoded_once_for_every_window(generator, whole):
    mels, faces = generated_inputs.engine_inputs(6, seed=5)
    features = generator.encode_face(faces[:1])
    assert [f.shape for f in features.values()] == [(1, c, s, s) for c, s in SKIP_FEATURES]
    assert all(f.dtype == np.float32 for f in features.values())
    expected = quantize_int8.generate(whole, mels, np.repeat(faces[:1], 6, axis=0))
    np.testing.assert_array_equal(generator.start_with_face(mels, features).wait(), expected)
    np.testing.assert_array_equal(generator.infer(mels, faces[:1]), expected)
    np.testing.assert_array_equal(
        generator.start_with_face(mels[:2], features).wait(), expected[:2]
    )


def test_face_and_window_counts_must_agree(generator):
    mels, faces = generated_inputs.engine_inputs(3, seed=6)
    with pytest.raises(ValueError, match="3 mel windows for 2 faces"):
        generator.infer(mels, faces[:2])
    with pytest.raises(ValueError, match="one face, got 2"):
        generator.encode_face(faces[:2])


def test_a_network_without_a_face_encoder_is_refused():
    face = ops.parameter([-1, 6, 96, 96], ov.Type.f32, name=FACE_INPUT)
    face.output(0).set_names({FACE_INPUT})
    audio = ops.parameter([-1, 6, 96, 96], ov.Type.f32, name=AUDIO_INPUT)
    audio.output(0).set_names({AUDIO_INPUT})
    model = ov.Model([ops.result(ops.add(face, audio))], [face, audio])
    with pytest.raises(ValueError, match="no face encoder"):
        face_feature_outputs(model)
    face_only = ov.Model([ops.result(ops.relu(face))], [face])
    with pytest.raises(ValueError, match="no input named 'audio_sequences'"):
        decoder_model(face_only)
