"""python -m bench.pipeline --quick runs end to end and writes a well-formed report.

Structure only: speed targets never go in unit tests (this machine is shared and noisy).
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from lipsync.runtime.core import cpu_supports_bf16

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("image_decode", "audio_decode", "mel", "detect", "infer", "paste", "encode", "total")


@pytest.fixture(scope="module")
def precision() -> str:
    return "bf16" if cpu_supports_bf16(ov.Core()) else "f32"


@pytest.fixture(scope="module")
def quick_run(untrained_models, tmp_path_factory, precision):
    out = tmp_path_factory.mktemp("bench") / "x.json"
    command = [
        sys.executable,
        "-m",
        "bench.pipeline",
        "--quick",
        "--no-torch-baseline",
        "--precisions",
        precision,
        "--models-dir",
        str(untrained_models),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_report_describes_machine_and_settings(quick_run, precision):
    stdout, report = quick_run
    assert report["untrained_weights"] is True
    assert "UNTRAINED" in stdout and "UNTRAINED" in report["warning"]
    machine = report["machine"]
    for key in ("cpu_model", "logical_cores", "openvino_version", "bf16_supported", "cpu_flags"):
        assert key in machine
    assert machine["openvino_version"] == ov.get_version()
    settings = report["settings"]
    assert settings["quick"] is True and settings["repeats"] == 1
    assert settings["durations_s"] == [5.0] and settings["sizes"] == ["720x576"]
    assert settings["precisions"] == [precision]


@pytest.mark.slow
def test_pipeline_row_has_stages_fps_rtf_and_peak_rss(quick_run, precision):
    _, report = quick_run
    [row] = report["pipeline"]
    assert (row["precision"], row["duration_s"], row["size"]) == (precision, 5.0, "720x576")
    assert row["frames"] == 125  # ceil(5 s * 25 fps)
    stages = row["stages_s"]
    for stage in (*STAGES, "detect_s3fd", "detect_box", "total_box"):
        assert isinstance(stages[stage], float) and stages[stage] >= 0, stage
    parts = sum(stages[s] for s in STAGES if s != "total")
    assert parts <= stages["total"] * 1.05
    assert row["wav2lip_fps"] > 0 and row["stream_fps"] > 0
    assert row["rtf"] == pytest.approx(stages["total"] / 5.0, rel=1e-3)
    assert row["peak_rss_mb"] >= row["rss_after_compile_mb"] > 0
    assert len(row["runs"]) == 1


@pytest.mark.slow
def test_microbenchmark_and_no_torch_baseline(quick_run, precision):
    stdout, report = quick_run
    micro = report["micro"][precision]
    assert micro["fps"]["16"] > 0 and micro["fps_whole"]["16"] > 0
    assert "against the whole network" in stdout
    assert "torch_baseline" not in report
    assert "Pipeline" in stdout and "frames/s" in stdout
    accuracy = report["micro"][precision]["vs_f32"]
    assert accuracy["samples"] > 0 and accuracy["max_abs"] >= 0
    assert accuracy["psnr_db"] > 20  # bf16 vs f32 on the same inputs (~32 dB measured)
    assert "Difference from f32" in stdout


def test_reference_write_makes_the_references_mp4(tmp_path):
    """The torch baseline's video writing: DIVX AVI, then H.264 + AAC in MP4 with the speech."""
    import av
    import soundfile as sf

    from bench.torch_baseline import reference_write

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(10, 64, 96, 3), dtype=np.uint8)
    wav = tmp_path / "speech.wav"
    sf.write(wav, rng.uniform(-0.5, 0.5, 6400).astype(np.float32), 16000, subtype="PCM_16")

    data = reference_write(frames, 29.97, wav)

    with av.open(io.BytesIO(data)) as mp4:
        video, sound = mp4.streams.video[0], mp4.streams.audio[0]
        assert (video.codec_context.name, sound.codec_context.name) == ("h264", "aac")
        decoded = [f.to_ndarray(format="bgr24") for f in mp4.decode(video=0)]
    assert len(decoded) == len(frames)
    assert decoded[0].shape == frames[0].shape
    assert video.average_rate == Fraction(2997, 100)


def test_pairs_must_be_positive():
    from bench import pipeline as bench

    assert bench.build_parser().parse_args(["--pairs", "2"]).pairs == 2
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--pairs", "0"])


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")
)
def test_every_benchmark_module_imports(name):
    """A benchmark that no longer imports (a moved helper) fails here, not when run."""
    importlib.import_module(f"bench.{name}")
