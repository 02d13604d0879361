"""tools/quantize_int8.py: NNCF INT8 post-training quantization of the Wav2Lip generator, on
the inputs of tools/generated_inputs.py."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import nncf
import numpy as np
import openvino as ov
import pytest
from helpers import FACE_BOX, generator_from

from lipsync import audio
from lipsync.conversion import generated_inputs, quantize_int8
from lipsync.runtime.wav2lip import AUDIO_INPUT, FACE_INPUT, FACE_SIZE, OUTPUT
from lipsync.util import sha256_file

SAMPLES = 32
# Measured on the seed-0 untrained generator (32 and 300 calibration samples alike):
# PSNR 19.1 dB, mean |diff| 21 grey levels against f32. The random network is chaotic:
# +-1 grey level of input noise alone costs 28.7 dB and bf16 32.5 dB, while unrelated
# outputs are 13.6 dB apart; so this floor only proves the INT8 model computes the same
# function. Trained weights must be judged on their own (the manifest records the PSNR).
MIN_PSNR_DB = 16.0
MAX_MEAN_ABS = 30.0


def shape_spec(port) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]


@pytest.fixture(scope="module")
def quantized_dir(untrained_models, tmp_path_factory):
    """A copy of the untrained wav2lip IR (never the shared cache), quantized by main()."""
    directory = tmp_path_factory.mktemp("int8")
    for name in ("wav2lip.xml", "wav2lip.bin", "manifest.json"):
        shutil.copy(untrained_models / name, directory / name)
    argv = ["--models-dir", str(directory), "--samples", str(SAMPLES), "--seed", "0"]
    assert quantize_int8.main([*argv, "--eval-samples", "32"]) == 0
    return directory


# --- generated calibration inputs (fast) ------------------------------------------------------


def test_calibration_items_are_the_raw_ir_inputs():
    items = generated_inputs.calibration_items(6, seed=3)
    assert len(items) == 6
    for item in items:
        assert set(item) == {AUDIO_INPUT, FACE_INPUT}
        mel, face = item[AUDIO_INPUT], item[FACE_INPUT]
        assert mel.shape == (1, 1, audio.N_MELS, audio.MEL_WINDOW) and mel.dtype == np.float32
        assert face.shape == (1, 6, FACE_SIZE, FACE_SIZE) and face.dtype == np.float32
        assert mel.min() >= -audio.MAX_ABS_VALUE and mel.max() <= audio.MAX_ABS_VALUE
        assert face.min() >= 0.0 and face.max() <= 1.0
        # face_input's layout: the masked crop (lower half zero), then the crop itself.
        assert not face[0, :3, FACE_SIZE // 2 :].any()
        np.testing.assert_array_equal(face[0, :3, : FACE_SIZE // 2], face[0, 3:, : FACE_SIZE // 2])


def test_calibration_inputs_are_seeded():
    a, b = generated_inputs.engine_inputs(8, seed=1), generated_inputs.engine_inputs(8, seed=1)
    c = generated_inputs.engine_inputs(8, seed=2)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)


def test_speech_like_audio_is_speech_shaped():
    wav = generated_inputs.speech_like(3.0, seed=0)
    assert wav.shape == (3 * audio.SAMPLE_RATE,) and wav.dtype == np.float32
    assert np.abs(wav).max() <= 1.0
    np.testing.assert_array_equal(wav, generated_inputs.speech_like(3.0, seed=0))
    mel = audio.melspectrogram(wav)
    # loud voiced frames and quiet pauses both occur
    frame_level = mel.mean(axis=0)
    assert frame_level.max() - frame_level.min() > 2.0


def test_main_refuses_a_directory_without_the_generator(tmp_path, capsys):
    assert quantize_int8.main(["--models-dir", str(tmp_path)]) == 2
    assert "wav2lip.xml not found" in capsys.readouterr().err


# --- the quantized model (slow: one NNCF run per module) --------------------------------------


@pytest.mark.slow
def test_int8_ir_is_written_next_to_the_source(quantized_dir):
    assert (quantized_dir / "wav2lip.int8.xml").is_file()
    assert (quantized_dir / "wav2lip.int8.bin").is_file()
    assert not (quantized_dir / "wav2lip_gan.int8.xml").exists()  # no GAN IR, none made
    assert not list(quantized_dir.glob("*.tmp*"))
    int8_bytes = (quantized_dir / "wav2lip.int8.bin").stat().st_size
    assert int8_bytes < (quantized_dir / "wav2lip.bin").stat().st_size / 3  # i8 weights


@pytest.mark.slow
def test_int8_ir_is_quantized_with_the_same_interface(quantized_dir):
    core = ov.Core()
    original = core.read_model(str(quantized_dir / "wav2lip.xml"))
    model = core.read_model(str(quantized_dir / "wav2lip.int8.xml"))
    ops = Counter(op.get_type_name() for op in model.get_ops())
    weights = Counter(
        op.get_element_type() for op in model.get_ops() if op.get_type_name() == "Constant"
    )
    convolutions = ops["Convolution"] + ops["ConvolutionBackpropData"]
    assert ops["FakeQuantize"] >= convolutions  # activations of every convolution
    assert weights[ov.Type.i8] >= convolutions  # and its weights stored as int8
    for ports_a, ports_b in ((original.inputs, model.inputs), (original.outputs, model.outputs)):
        assert [p.get_names() for p in ports_a] == [p.get_names() for p in ports_b]
        assert [shape_spec(p) for p in ports_a] == [shape_spec(p) for p in ports_b]
    assert model.input(FACE_INPUT).get_partial_shape()[0].is_dynamic
    assert model.input(AUDIO_INPUT).get_partial_shape()[0].is_dynamic
    assert model.output(OUTPUT).get_partial_shape()[0].is_dynamic


@pytest.mark.slow
def test_int8_output_is_close_to_f32_on_held_out_inputs(quantized_dir):
    metrics = quantize_int8.compare_to_reference(
        quantized_dir / "wav2lip.xml", quantized_dir / "wav2lip.int8.xml", samples=48, seed=0
    )
    print(f"int8 vs f32 on 48 held-out 96x96 outputs: {metrics}")
    assert metrics["psnr_db"] > MIN_PSNR_DB
    assert metrics["mean_abs"] < MAX_MEAN_ABS


@pytest.mark.slow
def test_int8_runs_any_batch_size_with_engine_preprocessing(quantized_dir):
    compiled = quantize_int8.compile_generator(ov.Core(), quantized_dir / "wav2lip.int8.xml", "f32")
    mels, faces = generated_inputs.engine_inputs(5, seed=9)
    for batch in (1, 5):
        out = quantize_int8.generate(compiled, mels[:batch], faces[:batch])
        assert out.shape == (batch, FACE_SIZE, FACE_SIZE, 3) and out.dtype == np.uint8


@pytest.mark.slow
def test_int8_split_keeps_the_decoders_input_quantization(quantized_dir):
    """The face features leave the encoder before their FakeQuantize, so the INT8 decoder
    still quantizes them, and one face encoded once gives what the whole INT8 network
    gives for that face in every window (with f32 float layers; bf16 ones round
    differently in each)."""

    from lipsync.runtime.wav2lip import decoder_model

    xml = quantized_dir / "wav2lip.int8.xml"
    decoder = decoder_model(ov.Core().read_model(xml))
    for feature in decoder.get_parameters()[1:]:
        (broadcast,) = [t.get_node() for t in feature.output(0).get_target_inputs()]
        consumers = [t.get_node().get_type_name() for t in broadcast.output(0).get_target_inputs()]
        assert consumers == ["FakeQuantize"], feature.get_friendly_name()
    mels, faces = generated_inputs.engine_inputs(6, seed=8)
    whole = quantize_int8.compile_generator(ov.Core(), xml, "f32")
    expected = quantize_int8.generate(whole, mels, np.repeat(faces[:1], len(mels), axis=0))
    np.testing.assert_array_equal(generator_from(xml).infer(mels, faces[:1]), expected)


@pytest.mark.slow
def test_manifest_records_the_int8_model(quantized_dir, untrained_models):
    manifest = json.loads((quantized_dir / "manifest.json").read_text())
    entry = manifest["int8"]["wav2lip"]
    assert entry["xml"] == "wav2lip.int8.xml" and entry["bin"] == "wav2lip.int8.bin"
    assert entry["source_xml"] == "wav2lip.xml"
    assert entry["source_sha256"] == sha256_file(quantized_dir / "wav2lip.bin")
    assert entry["source_xml_sha256"] == sha256_file(quantized_dir / "wav2lip.xml")
    assert entry["samples"] == SAMPLES and entry["seed"] == 0
    assert entry["preset"] in quantize_int8.PRESETS
    assert entry["nncf_version"] == nncf.__version__
    assert entry["held_out_vs_f32"]["psnr_db"] > MIN_PSNR_DB
    # the converter's entries are kept; the shared cache is untouched
    original = json.loads((untrained_models / "manifest.json").read_text())
    assert manifest["models"] == original["models"]
    assert "int8" not in original


@pytest.mark.slow
def test_quantize_generator_is_importable_and_returns_the_path(quantized_dir, tmp_path):
    out = quantize_int8.quantize_generator(
        quantized_dir / "wav2lip.xml", tmp_path / "custom.int8.xml", samples=4, seed=1
    )
    assert out == tmp_path / "custom.int8.xml"
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert not (tmp_path / "manifest.json").exists()  # the function writes only the IR


@pytest.mark.slow
def test_engine_runs_the_int8_generator(quantized_dir, untrained_models, face_image):
    """precision="int8": the engine loads wav2lip.int8.xml, the detector stays float."""

    from lipsync.engine import ModelNotFoundError, Wav2LipInferenceEngine

    for ext in (".xml", ".bin"):
        (quantized_dir / f"face_detection{ext}").symlink_to(
            untrained_models / f"face_detection{ext}"
        )
    engine = Wav2LipInferenceEngine(quantized_dir, precision="int8")
    assert engine.precision == "int8"
    speech = generated_inputs.speech_like(0.5, seed=1)
    # The whole box pasted (like the reference), so the comparison covers every generated pixel.
    frames = engine.render(face_image, speech, box=FACE_BOX, blend="none")
    reference = Wav2LipInferenceEngine(quantized_dir, precision="f32").render(
        face_image, speech, box=FACE_BOX, blend="none"
    )
    assert frames.shape == reference.shape
    top, bottom, left, right = FACE_BOX
    mouths = frames[:, top:bottom, left:right].astype(int)
    assert np.abs(mouths - reference[:, top:bottom, left:right]).mean() < MAX_MEAN_ABS
    assert engine.model_status()["wav2lip"]["compiled"]
    with pytest.raises(ModelNotFoundError, match=r"wav2lip_gan\.int8\.xml"):
        engine.generator("wav2lip_gan")
