"""The `lipsync` command: generate end to end, one-line errors, serve and convert dispatch."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile
from helpers import ASSETS, FACE_BOX, ROOT, probe_video

from lipsync import cli
from lipsync.media.encode import encode_video
from lipsync.serving import engine as serving_engine

FACE = ASSETS / "face.jpg"
BOX = ",".join(str(v) for v in FACE_BOX)
SPEECH_SECONDS = 1.0
SPEECH_FRAMES = 25  # 1.0 s at 25 fps


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """The first second of the test speech, as a WAV file."""
    track, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    soundfile.write(path, track[: int(SPEECH_SECONDS * rate)], rate)
    return path


def run_cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m lipsync.cli ARGS` as a user runs it: its own process, exit code, streams."""
    return subprocess.run(
        [sys.executable, "-m", "lipsync.cli", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "LIPSYNC_CACHE_DIR": "none", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_in_process(capsys, monkeypatch, *args: str | Path) -> tuple[int, str]:
    """cli.main(ARGS) -> (exit status, stderr); logging is left alone (pytest captures it)."""
    monkeypatch.setattr(cli, "configure_logging", lambda **kwargs: None)
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", "none")
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        status = exc.code
    return status, capsys.readouterr().err


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_writes_a_video_that_decodes(untrained_models, speech, tmp_path):
    out = tmp_path / "talking.mp4"
    result = run_cli(
        "generate", FACE, speech, "-o", out, "--box", BOX, "--models-dir", untrained_models
    )
    assert result.returncode == 0, result.stderr
    info = probe_video(out.read_bytes())
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert (info["width"], info["height"], info["num_frames"]) == (512, 512, SPEECH_FRAMES)
    assert info["audio_duration"] == pytest.approx(SPEECH_SECONDS, abs=0.05)
    # Progress on stderr, ending with every frame done; nothing on stdout.
    assert f"{SPEECH_FRAMES}/{SPEECH_FRAMES} frames" in result.stderr.splitlines()[-1]
    assert result.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["talking.mp4"]  # no temp file left


@pytest.mark.slow
def test_generate_from_a_video_keeps_its_frame_rate(untrained_models, speech, tmp_path):
    image = cv2.imread(str(FACE))
    frames = [np.roll(image, shift, axis=1) for shift in range(5)]
    face = tmp_path / "face.webm"
    face.write_bytes(
        encode_video(iter(frames), width=512, height=512, fps=10).data,
    )
    out = tmp_path / "out.webm"
    result = run_cli(
        *("generate", face, speech, "-o", out, "--box", BOX, "--fps", "25", "--quiet"),
        *("--models-dir", untrained_models, "--model", "wav2lip_gan"),
    )
    assert result.returncode == 0, result.stderr
    info = probe_video(out.read_bytes())
    assert (info["video_codec"], info["fps"], info["num_frames"]) == ("vp9", 10.0, 10)
    assert "frames" not in result.stderr  # --quiet: no progress


@pytest.mark.slow
def test_log_level_reaches_the_cli_loggers(untrained_models, speech, tmp_path):
    args = ("generate", FACE, speech, "-o", tmp_path / "a.webm", "--box", BOX, "-q")
    args += ("--models-dir", str(untrained_models))
    info = run_cli(*args, LIPSYNC_LOG_LEVEL="info")
    quiet = run_cli(*args, LIPSYNC_LOG_LEVEL="WARNING")
    assert info.returncode == quiet.returncode == 0
    assert " INFO lipsync.runtime.core: compiled " in info.stderr
    assert quiet.stderr == ""


# -- one-line errors ---------------------------------------------------------------------------


def assert_one_line_error(status: int, stderr: str, expected_status: int, *words: str) -> None:
    assert status == expected_status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lipsync") and "error: " in lines[0], stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["missing.jpg", "{speech}", "-o", "{out}"], ["face file not found", "missing.jpg"]),
        (["{face}", "missing.wav", "-o", "{out}"], ["audio file not found", "missing.wav"]),
        (["{face}", "{face}", "-o", "{out}"], ["audio could not be decoded"]),
        (["{speech}", "{speech}", "-o", "{out}"], ["face file", "speech.wav", "image"]),
        (["{face}", "{speech}", "-o", "{out}", "--box", "1,2,3"], ["--box", "T,B,L,R"]),
        (["{face}", "{speech}", "-o", "{out}", "--box", "400,300,0,10"], ["box", "512x512"]),
        (["{face}", "{speech}", "-o", "{out}", "--fps", "0"], ["fps"]),
        (["{face}", "{speech}", "-o", "{out}", "--pads", "0", "-1", "0", "0"], ["pads"]),
        (["{face}", "{speech}", "-o", "out.avi"], ["out.avi", ".webm or .mp4"]),
        (["{face}", "{speech}", "-o", "{out}", "--format", "mp4"], ["--format mp4", "out.webm"]),
        (["{face}", "{speech}", "-o", "no/such/dir/out.webm"], ["output directory not found"]),
        (["{face}", "{speech}"], ["-o/--output"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, speech, tmp_path, args, words):
    values = {"face": FACE, "speech": speech, "out": tmp_path / "out.webm"}
    argv = [a.format(**values) for a in args]
    status, stderr = run_in_process(capsys, monkeypatch, "generate", *argv)
    assert_one_line_error(status, stderr, 2, *words)
    assert not list(tmp_path.iterdir())


def test_an_unreadable_input_is_one_line_and_exit_1(capsys, monkeypatch, speech, tmp_path):
    real = Path.read_bytes

    def refuses_the_speech(path: Path) -> bytes:
        if path == Path(speech):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", refuses_the_speech)
    status, stderr = run_in_process(
        capsys, monkeypatch, "generate", FACE, speech, "-o", tmp_path / "a.webm"
    )
    assert_one_line_error(status, stderr, 1, "cannot read", "Permission denied")


@pytest.mark.slow
def test_settings_reach_the_engine(capsys, monkeypatch, untrained_models, speech, tmp_path):
    """LIPSYNC_BATCH_SIZE and LIPSYNC_INFERENCE_THREADS configure the CLI's engine as they
    do the server's (the engine is built by the one serving function)."""
    built = []

    def build_and_keep(settings):
        built.append(real_build(settings))
        return built[-1]

    real_build = serving_engine.build_engine
    monkeypatch.setattr(serving_engine, "build_engine", build_and_keep)
    monkeypatch.setenv("LIPSYNC_BATCH_SIZE", "3")
    monkeypatch.setenv("LIPSYNC_INFERENCE_THREADS", "1")
    out = tmp_path / "a.webm"
    argv = (FACE, speech, "-o", out, "--box", BOX, "--models-dir", untrained_models, "-q")
    status, stderr = run_in_process(capsys, monkeypatch, "generate", *argv)
    assert status == 0, stderr
    (engine,) = built
    assert engine.batch_size == 3
    assert engine.core.get_property("CPU", "INFERENCE_NUM_THREADS") == 1
    assert probe_video(out.read_bytes())["num_frames"] == SPEECH_FRAMES


def test_invalid_setting_is_one_line_and_exit_2(capsys, monkeypatch, speech, tmp_path):
    monkeypatch.setenv("LIPSYNC_BATCH_SIZE", "many")
    status, stderr = run_in_process(
        capsys, monkeypatch, "generate", FACE, speech, "-o", tmp_path / "a.webm"
    )
    assert_one_line_error(status, stderr, 2, "LIPSYNC_BATCH_SIZE", "'many'")


@pytest.mark.slow
def test_no_face_is_one_line_and_exit_2(capsys, monkeypatch, blind_models, speech, tmp_path):
    out = tmp_path / "a.webm"
    status, stderr = run_in_process(
        capsys, monkeypatch, "generate", FACE, speech, "-o", out, "--models-dir", blind_models
    )
    assert_one_line_error(status, stderr, 2, "no face detected")
    assert not out.exists()


def test_missing_models_are_one_line_and_exit_1(capsys, monkeypatch, speech, tmp_path):
    status, stderr = run_in_process(
        *(capsys, monkeypatch, "generate", FACE, speech, "-o", tmp_path / "a.webm"),
        *("--models-dir", tmp_path / "empty"),
    )
    assert_one_line_error(status, stderr, 1, "not installed", "lipsync convert")


def test_a_real_process_reports_bad_input_in_one_line(tmp_path):
    result = run_cli("generate", FACE, tmp_path / "none.wav", "-o", tmp_path / "a.webm")
    assert_one_line_error(result.returncode, result.stderr, 2, "audio file not found")


# -- pieces ----------------------------------------------------------------------------------


def test_parse_box():
    assert cli.parse_box("50,180,165,280") == (50, 180, 165, 280)
    for bad in ("1,2,3", "1,2,3,4,5", "a,b,c,d", ""):
        with pytest.raises(Exception, match="T,B,L,R"):
            cli.parse_box(bad)


def test_output_container():
    assert cli.output_container(Path("a.MP4"), None) == "mp4"
    assert cli.output_container(Path("a.webm"), "webm") == "webm"
    assert cli.output_container(Path("a.video"), "mp4") == "mp4"
    with pytest.raises(cli.UserError):
        cli.output_container(Path("a.mp4"), "webm")
    with pytest.raises(cli.UserError):
        cli.output_container(Path("a"), None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_pipe_reports_frames_rate_and_eta():
    stream, clock = io.StringIO(), FakeClock()
    progress = cli.Progress(stream, interval=0.1, clock=clock)  # not a tty: every 2 s
    progress(1, 101)  # the first report starts the clock
    clock.now += 1.0
    progress(11, 101)  # too soon: skipped
    clock.now += 1.5
    progress(26, 101)  # 25 frames in 2.5 s -> 10 fps, 75 left -> 7.5 s
    clock.now += 0.1
    progress(101, 101)  # the last frame is always shown
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("] 1/101 frames")
    assert lines[1].endswith("] 26/101 frames  10.0 fps  ETA 0:08")
    assert lines[2].startswith("[" + "#" * cli.Progress.WIDTH + "] 101/101 frames")


def test_progress_on_a_terminal_redraws_one_line():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream, clock = Terminal(), FakeClock()
    progress = cli.Progress(stream, interval=0.1, clock=clock)
    for done in range(1, 11):
        clock.now += 0.2
        progress(done, 10)
    text = stream.getvalue()
    assert text.count("\r") == 10 and text.endswith("\n") and text.count("\n") == 1


def test_serve_execs_gunicorn_with_the_service_config(monkeypatch):
    calls = []

    def fake_execv(path, argv):
        calls.append((path, argv, dict(os.environ)))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_execv)
    monkeypatch.setenv("PORT", "5001")
    with pytest.raises(SystemExit):
        cli.main(["serve", "--port", "6123", "--workers", "3"])
    ((path, argv, env),) = calls
    assert path == sys.executable
    assert argv[1:] == [
        "-m",
        "gunicorn",
        "-c",
        "python:lipsync.server.gunicorn_conf",
        "lipsync.server.wsgi:app",
    ]
    assert (env["PORT"], env["LIPSYNC_WORKERS"]) == ("6123", "3")


def test_serve_refuses_invalid_settings_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("gunicorn started"))
    monkeypatch.setenv("LIPSYNC_THREADS", "0")
    status, stderr = run_in_process(capsys, monkeypatch, "serve")
    assert_one_line_error(status, stderr, 2, "LIPSYNC_THREADS must be >= 1")


def test_convert_passes_every_flag_to_the_converter(monkeypatch):
    seen = []
    fake = types.ModuleType("lipsync.conversion.convert")
    fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lipsync.conversion.convert", fake)
    assert cli.main(["convert", "--help", "--random-init", "0"]) == 7
    assert seen == [["--help", "--random-init", "0"]]


def test_convert_without_the_converter_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as in the serving image
    monkeypatch.delitem(sys.modules, "lipsync.conversion.convert", raising=False)
    status, stderr = run_in_process(capsys, monkeypatch, "convert", "--random-init", "0")
    assert_one_line_error(status, stderr, 1, "needs torch", "conversion")
