"""Files the CLI and the Python API write get the user's umask, as any tool's files do:
0666 & ~umask (0644 under umask 022, 0600 under 077), through the atomic rename."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ASSETS, FACE_BOX, ROOT, probe_video, wav_bytes

from lipsync.talking_head import Wav2LipTalkingHead
from lipsync.util import write_atomically

UMASKS = {0o022: 0o644, 0o077: 0o600}  # umask -> the mode of a new file


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    path.write_bytes(wav_bytes(1.0))
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), UMASKS.items())
def test_an_atomic_write_has_the_umasks_mode(tmp_path, mask, expected):
    new, replaced = tmp_path / "new.webm", tmp_path / "replaced.webm"
    replaced.write_bytes(b"old")
    replaced.chmod(0o400)  # the replaced file's mode is not kept: the new file is new
    with umask(mask):
        write_atomically(new, b"video")
        write_atomically(replaced, b"video")
    assert (mode(new), mode(replaced)) == (expected, expected)
    assert replaced.read_bytes() == b"video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.webm", "replaced.webm"]


@pytest.mark.slow
@pytest.mark.parametrize(("mask", "expected"), UMASKS.items())
def test_the_cli_writes_with_the_users_umask(untrained_models, speech, tmp_path, mask, expected):
    out = tmp_path / "talking.webm"
    box = ",".join(map(str, FACE_BOX))
    generate = ["generate", ASSETS / "face.jpg", speech, "-o", out, "--box", box, "-q"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            *map(str, generate),
            "--models-dir",
            untrained_models,
        ],
        cwd=ROOT,
        env={**os.environ, "LIPSYNC_CACHE_DIR": "none"},
        capture_output=True,
        text=True,
        timeout=300,
        umask=mask,
    )
    assert done.returncode == 0, done.stderr
    assert mode(out) == expected
    assert probe_video(out.read_bytes())["video_codec"] == "vp9"


@pytest.mark.slow
@pytest.mark.parametrize(("mask", "expected"), UMASKS.items())
def test_the_python_api_writes_with_the_users_umask(
    untrained_models, speech, tmp_path, mask, expected
):
    head = Wav2LipTalkingHead(ASSETS / "face.jpg", model_path=untrained_models, box=FACE_BOX)
    with head, umask(mask):
        out = Path(head.generate(speech, tmp_path / "reply.mp4"))
    assert mode(out) == expected
    assert probe_video(out.read_bytes())["video_codec"] == "h264"
