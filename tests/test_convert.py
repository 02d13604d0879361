"""Tests of the PyTorch network definitions and of convert_to_openvino.py (and its modules:
checkpoints, random_init, ir_export; --download is tested in test_checkpoint_download.py).

One seeded random-init conversion is run per session (``converted``); most tests inspect its
checkpoints, IR files and manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from helpers import CONVERTER_SOURCES, ROOT
from torch.nn import functional as F

from lipsync.conversion import checkpoints, ir_export, random_init
from lipsync.conversion import convert as conv
from lipsync.networks import S3FD, L2Norm, Wav2Lip
from lipsync.networks.wav2lip import ConvBlock

SEED = 0
slow = pytest.mark.slow  # needs the session's random-init conversion (~20 s)
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
PIXEL_MEAN = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)

# Official checkpoint layout: 50 conv+BN blocks x 7 entries + the final 1x1 conv (2).
WAV2LIP_KEY_COUNT = 352
WAV2LIP_SHAPES = {
    "face_encoder_blocks.0.0.conv_block.0.weight": (16, 6, 7, 7),
    "face_encoder_blocks.6.1.conv_block.0.weight": (512, 512, 1, 1),
    "audio_encoder.0.conv_block.0.weight": (32, 1, 3, 3),
    "audio_encoder.0.conv_block.1.running_mean": (32,),
    "audio_encoder.3.conv_block.0.weight": (64, 32, 3, 3),
    "face_decoder_blocks.1.0.conv_block.0.weight": (1024, 512, 3, 3),  # ConvTranspose2d
    "face_decoder_blocks.6.0.conv_block.0.weight": (160, 64, 3, 3),
    "output_block.0.conv_block.0.weight": (32, 80, 3, 3),
    "output_block.1.weight": (3, 32, 1, 1),
    "output_block.1.bias": (3,),
}
# 31 convs x (weight, bias) + 3 L2Norm weights.
S3FD_KEY_COUNT = 65
S3FD_SHAPES = {
    "conv1_1.weight": (64, 3, 3, 3),
    "fc6.weight": (1024, 512, 3, 3),
    "fc7.weight": (1024, 1024, 1, 1),
    "conv3_3_norm.weight": (256,),
    "conv5_3_norm.weight": (512,),
    "conv3_3_norm_mbox_conf.weight": (4, 256, 3, 3),
    "conv4_3_norm_mbox_conf.weight": (2, 512, 3, 3),
    "conv7_2_mbox_loc.weight": (4, 256, 3, 3),
}
DETECTOR_OUTPUTS = [f"{k}_s{s}" for s in (4, 8, 16, 32, 64, 128) for k in ("cls", "reg")]


# --- Fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def converted(untrained_models: Path) -> Path:
    """Output dir of `convert_to_openvino.py --random-init SEED` (conftest runs it once)."""
    return untrained_models


@pytest.fixture(scope="session")
def ckpt_dir(converted: Path) -> Path:
    return converted / "untrained-checkpoints"


@pytest.fixture(scope="session")
def wav2lip_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoints.load_wav2lip_state_dict(ckpt_dir / "wav2lip.pth")


@pytest.fixture(scope="session")
def s3fd_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoints.load_s3fd_state_dict(ckpt_dir / "s3fd.pth")


@pytest.fixture(scope="session")
def core() -> ov.Core:
    return ov.Core()


def _raw(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- Network definitions (no conversion needed) ----------------------------------------------


def test_module_state_dicts_have_official_layout() -> None:
    w, s = Wav2Lip().state_dict(), S3FD().state_dict()
    assert len(w) == WAV2LIP_KEY_COUNT
    assert len(s) == S3FD_KEY_COUNT
    for key, shape in WAV2LIP_SHAPES.items():
        assert tuple(w[key].shape) == shape, key
    for key, shape in S3FD_SHAPES.items():
        assert tuple(s[key].shape) == shape, key


def test_wav2lip_forward_shape_and_range() -> None:
    model = Wav2Lip().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_residual_block_adds_input_before_relu() -> None:
    torch.manual_seed(0)
    block = ConvBlock(8, 8, 3, 1, 1, residual=True).eval()
    block.conv_block[1].running_mean.normal_()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        expected = torch.relu(block.conv_block(x) + x)
        assert torch.equal(block(x), expected)


def test_l2norm_eps_after_sqrt() -> None:
    norm = L2Norm(3, scale=2.0)
    x = torch.tensor([3.0, 0.0, 4.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(norm(x).flatten(), torch.tensor([1.2, 0.0, 1.6]))
        # all-zero positions stay finite: 0 / (0 + 1e-10)
        assert torch.equal(norm(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))
    assert norm.eps == 1e-10


def test_s3fd_outputs_and_background_maxout() -> None:
    torch.manual_seed(0)
    model = S3FD().eval()
    raw: list[torch.Tensor] = []
    model.conv3_3_norm_mbox_conf.register_forward_hook(lambda _m, _i, o: raw.append(o))
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96) * 50)
    assert len(outs) == 12
    assert [o.shape[1] for o in outs] == [2, 4] * 6
    assert outs[0].shape[2:] == (16, 24)  # stride 4
    first = raw[0]
    assert first.shape[1] == 4
    assert torch.equal(outs[0][:, 0], first[:, :3].max(dim=1).values)
    assert torch.equal(outs[0][:, 1], first[:, 3])


# --- Random-init checkpoints -----------------------------------------------------------------


@slow
def test_random_wav2lip_checkpoint_format(ckpt_dir: Path) -> None:
    raw = _raw(ckpt_dir / "wav2lip.pth")
    assert set(raw) == {"state_dict", "global_step", "global_epoch"}
    assert raw["global_step"] == 0 and raw["global_epoch"] == 0
    sd = raw["state_dict"]
    assert all(k.startswith("module.") for k in sd)
    assert {k.removeprefix("module.") for k in sd} == set(Wav2Lip().state_dict())
    assert len(sd) == WAV2LIP_KEY_COUNT
    for key, shape in WAV2LIP_SHAPES.items():
        assert tuple(sd[f"module.{key}"].shape) == shape, key
    assert set(_raw(ckpt_dir / "wav2lip_gan.pth")["state_dict"]) == set(sd)


@slow
def test_random_s3fd_checkpoint_format(ckpt_dir: Path) -> None:
    sd = _raw(ckpt_dir / "s3fd.pth")
    assert set(sd) == set(S3FD().state_dict())
    assert len(sd) == S3FD_KEY_COUNT
    for key, shape in S3FD_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert all(v.dtype == torch.float32 for v in sd.values())


@slow
def test_random_init_same_seed_is_byte_identical(ckpt_dir: Path, tmp_path: Path) -> None:
    again = random_init.write_random_checkpoints(SEED, tmp_path)
    for kind, path in again.items():
        assert path.name == checkpoints.CHECKPOINT_FILES[kind]
        assert _file_sha256(path) == _file_sha256(ckpt_dir / path.name), kind


@slow
def test_random_init_different_seeds_differ(ckpt_dir: Path) -> None:
    w = _raw(ckpt_dir / "wav2lip.pth")["state_dict"]
    gan = _raw(ckpt_dir / "wav2lip_gan.pth")["state_dict"]
    key = "module.face_encoder_blocks.0.0.conv_block.0.weight"
    assert not torch.equal(w[key], gan[key])
    a, b = random_init.random_s3fd_state_dict(11), random_init.random_s3fd_state_dict(12)
    assert not torch.equal(a["conv1_1.weight"], b["conv1_1.weight"])
    assert not torch.equal(a["fc7.bias"], b["fc7.bias"])


@slow
def test_random_init_batchnorm_stats_are_nontrivial(wav2lip_state: dict) -> None:
    mean = wav2lip_state["face_encoder_blocks.1.0.conv_block.1.running_mean"]
    var = wav2lip_state["face_encoder_blocks.1.0.conv_block.1.running_var"]
    gamma = wav2lip_state["face_encoder_blocks.1.0.conv_block.1.weight"]
    assert float(mean.abs().mean()) > 1e-3
    assert not torch.allclose(var, torch.ones_like(var))
    assert float(gamma.min()) >= 0.5 and float(gamma.max()) <= 1.5


# --- Loading and validation ------------------------------------------------------------------


@slow
def test_prefixed_and_plain_keys_load_identically(
    ckpt_dir: Path, wav2lip_state: dict, s3fd_state: dict, tmp_path: Path
) -> None:
    assert set(wav2lip_state) == set(Wav2Lip().state_dict())  # "module." stripped
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": wav2lip_state}, plain)
    reloaded = checkpoints.load_wav2lip_state_dict(plain)
    assert all(torch.equal(reloaded[k], v) for k, v in wav2lip_state.items())
    # s3fd: a plain state_dict, and the same with a "module." prefix
    prefixed = tmp_path / "s3fd_prefixed.pth"
    torch.save({f"module.{k}": v for k, v in s3fd_state.items()}, prefixed)
    reloaded = checkpoints.load_s3fd_state_dict(prefixed)
    assert all(torch.equal(reloaded[k], v) for k, v in s3fd_state.items())
    model = checkpoints.build_wav2lip(wav2lip_state)
    assert not model.training


@slow
def test_missing_num_batches_tracked_is_tolerated(s3fd_state: dict, wav2lip_state: dict) -> None:
    trimmed = {k: v for k, v in wav2lip_state.items() if not k.endswith("num_batches_tracked")}
    assert len(trimmed) == WAV2LIP_KEY_COUNT - 50
    model = checkpoints.build_wav2lip(trimmed)
    key = "audio_encoder.0.conv_block.1.running_var"
    assert torch.equal(model.state_dict()[key], wav2lip_state[key])


@slow
@pytest.mark.parametrize(
    ("mutation", "key", "detail"),
    [
        ("missing", "conv4_3_norm_mbox_loc.bias", "missing"),
        ("extra", "conv8_1.weight", "unexpected"),
        ("shape", "fc6.weight", "(1024, 512, 1, 1)"),
    ],
)
def test_mismatching_s3fd_checkpoint_is_refused(
    s3fd_state: dict, tmp_path: Path, mutation: str, key: str, detail: str
) -> None:
    sd = dict(s3fd_state)
    if mutation == "missing":
        del sd[key]
    elif mutation == "extra":
        sd[key] = torch.zeros(3)
    else:
        sd[key] = torch.zeros(1024, 512, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=key) as info:
        checkpoints.load_s3fd_state_dict(path)
    assert detail in str(info.value)
    if mutation == "shape":
        assert "(1024, 512, 3, 3)" in str(info.value)  # both shapes are named


@slow
def test_mismatching_wav2lip_checkpoint_is_refused_by_cli(
    wav2lip_state: dict, ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "face_decoder_blocks.3.1.conv_block.1.running_mean"
    sd = {f"module.{k}": v for k, v in wav2lip_state.items()}
    sd[f"module.{key}"] = torch.zeros(7)
    bad = tmp_path / "bad_wav2lip.pth"
    torch.save({"state_dict": sd, "global_step": 1}, bad)
    out = tmp_path / "out"
    argv = ["--wav2lip", str(bad), "--s3fd", str(ckpt_dir / "s3fd.pth"), "--output-dir", str(out)]
    assert conv.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert key in err and "(7,)" in err and "(384,)" in err
    assert not out.exists()  # nothing written before validation passed


@slow
def test_wrong_architecture_is_refused(s3fd_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "s3fd_as_wav2lip.pth"
    torch.save({"state_dict": s3fd_state}, path)
    with pytest.raises(ValueError, match="not a Wav2Lip checkpoint: checkpoint is missing key"):
        checkpoints.load_wav2lip_state_dict(path)


@slow
def test_non_tensor_checkpoint_falls_back_with_warning(
    s3fd_state: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": s3fd_state, "args": argparse.Namespace(lr=1e-4)}, path)
    with caplog.at_level("WARNING", logger=checkpoints.__name__):
        loaded = checkpoints.load_s3fd_state_dict(path)
    assert torch.equal(loaded["fc6.weight"], s3fd_state["fc6.weight"])
    assert "weights_only=False" in caplog.text


def test_unreadable_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        checkpoints.load_s3fd_state_dict(path)
    with pytest.raises(ValueError, match="not found"):
        checkpoints.load_s3fd_state_dict(tmp_path / "absent.pth")


# --- Converted IR -----------------------------------------------------------------------------


def _shape(port: ov.Output) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]


@slow
@pytest.mark.parametrize("name", ["wav2lip", "wav2lip_gan"])
def test_wav2lip_ir_interface(converted: Path, core: ov.Core, name: str) -> None:
    model = core.read_model(converted / f"{name}.xml")
    inputs = {p.get_any_name(): _shape(p) for p in model.inputs}
    assert inputs == {"audio_sequences": [-1, 1, 80, 16], "face_sequences": [-1, 6, 96, 96]}
    assert [p.get_any_name() for p in model.outputs] == ["lipsync"]
    assert model.output("lipsync").get_partial_shape()[0].is_dynamic
    assert _shape(model.output("lipsync")) == [-1, 3, 96, 96]


@slow
def test_detector_ir_interface(converted: Path, core: ov.Core) -> None:
    model = core.read_model(converted / "face_detection.xml")
    assert [p.get_any_name() for p in model.inputs] == ["image"]
    shape = model.input("image").get_partial_shape()
    assert [shape[i].is_dynamic for i in range(4)] == [True, False, True, True]
    assert shape[1].get_length() == 3
    assert [p.get_any_name() for p in model.outputs] == DETECTOR_OUTPUTS
    for port in model.outputs:
        channels = 2 if port.get_any_name().startswith("cls") else 4
        assert _shape(port) == [-1, channels, -1, -1]


@slow
def test_verify_ir_rejects_static_dims(converted: Path) -> None:
    spec = {"image": [1, 3, -1, -1]}
    with pytest.raises(RuntimeError, match="image"):
        ir_export.verify_ir(converted / "face_detection.xml", spec, ir_export.DETECTOR_OUTPUTS)


@slow
@pytest.mark.parametrize("batch", [1, 5])
def test_wav2lip_ir_matches_pytorch(
    converted: Path, core: ov.Core, wav2lip_state: dict, batch: int
) -> None:
    g = torch.Generator().manual_seed(100 + batch)
    audio = torch.randn((batch, 1, 80, 16), generator=g) * 2.0
    faces = torch.rand((batch, 6, 96, 96), generator=g)
    with torch.no_grad():
        expected = checkpoints.build_wav2lip(wav2lip_state)(audio, faces).numpy()
    compiled = core.compile_model(converted / "wav2lip.xml", "CPU", F32)
    got = compiled({"audio_sequences": audio.numpy(), "face_sequences": faces.numpy()})
    result = got["lipsync"]
    assert result.shape == (batch, 3, 96, 96)
    assert float(np.abs(result - expected).max()) <= 1e-4


# Largest difference from PyTorch per unit of the output's magnitude: f32 rounding through
# the 20-odd layers of VGG (1e-5 measured on AVX2, the worst of 14 outputs).
DETECTOR_PARITY = 2e-5


@slow
@pytest.mark.parametrize("size", [(96, 128), (160, 120)])
def test_detector_ir_matches_pytorch(
    converted: Path, core: ov.Core, s3fd_state: dict, size: tuple[int, int]
) -> None:
    g = torch.Generator().manual_seed(size[0])
    image = torch.rand((2, 3, *size), generator=g) * 255.0 - PIXEL_MEAN
    with torch.no_grad():
        expected = checkpoints.build_s3fd(s3fd_state)(image)
    compiled = core.compile_model(converted / "face_detection.xml", "CPU", F32)
    got = compiled({"image": image.numpy()})
    for name, ref in zip(DETECTOR_OUTPUTS, expected, strict=True):
        assert got[name].shape == tuple(ref.shape), name
        # f32 sums in another order per CPU (AVX2 vs AVX-512 kernels): relative to the
        # output's scale (the random detector's scores reach ~10), not absolute.
        scale = max(1.0, float(np.abs(ref.numpy()).max()))
        assert float(np.abs(got[name] - ref.numpy()).max()) <= DETECTOR_PARITY * scale, name


# --- Random networks are well conditioned -----------------------------------------------------


@slow
def test_random_wav2lip_is_not_saturated(wav2lip_state: dict) -> None:
    g = torch.Generator().manual_seed(1)
    model = checkpoints.build_wav2lip(wav2lip_state)
    audio = torch.randn((4, 1, 80, 16), generator=g) * 2.0
    faces = torch.rand((4, 6, 96, 96), generator=g)
    with torch.no_grad():
        out = model(audio, faces)
        other_audio = model(audio.roll(1, dims=0), faces)
    assert float(out.std()) > 0.05
    assert float(((out > 0.1) & (out < 0.9)).float().mean()) > 0.5
    assert 0.2 < float(out.mean()) < 0.8
    assert float((out - other_audio).abs().mean()) > 1e-3  # the audio path matters


@slow
def test_random_s3fd_scores_are_spread_with_a_clear_maximum(s3fd_state: dict) -> None:
    g = torch.Generator().manual_seed(2)
    image = torch.rand((1, 3, 128, 128), generator=g) * 255.0 - PIXEL_MEAN
    with torch.no_grad():
        outs = checkpoints.build_s3fd(s3fd_state)(image)
    scores = torch.cat([F.softmax(outs[i], dim=1)[:, 1].flatten() for i in range(0, 12, 2)])
    regs = torch.cat([outs[i].flatten() for i in range(1, 12, 2)])
    top = scores.topk(2).values
    assert float(top[0]) > 0.5
    assert float(top[0] - top[1]) > 0.02
    assert 1 <= int((scores > 0.5).sum()) <= 20
    assert float(scores.std()) > 0.01
    assert float((regs.abs() < 3).float().mean()) > 0.99


# --- Manifest ---------------------------------------------------------------------------------


@slow
def test_manifest(converted: Path, ckpt_dir: Path) -> None:
    manifest = json.loads((converted / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["untrained"] is True
    models = manifest["models"]
    assert set(models) == {"wav2lip", "wav2lip_gan", "face_detection"}
    sources = {"wav2lip": "wav2lip.pth", "wav2lip_gan": "wav2lip_gan.pth"}
    sources["face_detection"] = "s3fd.pth"
    for name, entry in models.items():
        assert entry["xml"] == f"{name}.xml" and (converted / entry["xml"]).is_file()
        assert entry["bin"] == f"{name}.bin" and (converted / entry["bin"]).is_file()
        assert entry["source"] == sources[name]
        assert entry["sha256"] == _file_sha256(ckpt_dir / sources[name])
        assert entry["openvino_version"] == ov.get_version()
        assert entry["weights_precision"] == "FP32"
        assert entry["untrained"] is True
        assert entry["random_init_seed"] == SEED
        assert datetime.fromisoformat(entry["created"]).tzinfo is not None
    assert [i["name"] for i in models["wav2lip"]["inputs"]] == ["audio_sequences", "face_sequences"]
    assert models["wav2lip"]["outputs"] == [{"name": "lipsync", "shape": [-1, 3, 96, 96]}]
    assert models["face_detection"]["inputs"] == [{"name": "image", "shape": [-1, 3, -1, -1]}]
    assert [o["name"] for o in models["face_detection"]["outputs"]] == DETECTOR_OUTPUTS


@slow
def test_fp16_weights(s3fd_state: dict, tmp_path: Path, core: ov.Core) -> None:
    xml = tmp_path / "fd16.xml"
    ir_export.convert_s3fd(s3fd_state, xml, fp16_weights=True)
    assert ir_export.stored_precision(xml) == "FP16"
    assert (tmp_path / "fd16.bin").stat().st_size < 50_000_000  # ~half of the 90 MB
    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(3)) * 255.0
    got = core.compile_model(xml, "CPU", F32)({"image": (image - PIXEL_MEAN).numpy()})
    assert got["cls_s4"].shape == (1, 2, 16, 16)


# --- CLI argument handling ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--wav2lip", "a.pth"],
        ["--random-init", "0", "--wav2lip", "a.pth"],
        ["--random-init", "0", "--download"],
    ],
)
def test_cli_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        conv.main(argv)
    assert info.value.code == 2


# --- Test-model cache -----------------------------------------------------------------------


def test_cache_key_hashes_every_module_the_converter_imports() -> None:
    """conftest keys the converted test models by CONVERTER_SOURCES: a project module the
    converter imports but the list misses would leave stale models in .cache after an edit."""

    listing = (
        "import sys, lipsync.conversion.convert\n"
        "prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}\n"
        "for m in list(sys.modules.values()):\n"
        "    f = getattr(m, '__file__', None)\n"
        "    if f and not any(f.startswith(p + '/') for p in prefixes):\n"
        "        print(f)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", listing], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    files = [Path(line).resolve() for line in done.stdout.splitlines() if Path(line).is_absolute()]
    imported = {f.relative_to(ROOT).as_posix() for f in files if f.is_relative_to(ROOT)}
    assert "lipsync/conversion/random_init.py" in imported  # the listing sees the project's modules
    assert imported <= set(CONVERTER_SOURCES), sorted(imported - set(CONVERTER_SOURCES))
