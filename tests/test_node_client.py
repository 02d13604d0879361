"""The Node.js example client (examples/node/generate.mjs) against the real gunicorn server.

The models are untrained, so the detector may miss the test face: every run passes the face
box explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import wave
from pathlib import Path

import pytest
from helpers import ASSETS, FACE_BOX, ROOT, probe_video

NODE = shutil.which("node")
SCRIPT = ROOT / "examples" / "node" / "generate.mjs"
BOX = ",".join(str(v) for v in FACE_BOX)

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not on PATH (the example needs Node 18+)"),
    pytest.mark.slow,
]


def speech_seconds() -> float:
    with wave.open(str(ASSETS / "speech.wav")) as wav:
        return wav.getnframes() / wav.getframerate()


def run_node(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    return subprocess.run(
        [NODE, *args],
        cwd=ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def generate(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_node(
        str(SCRIPT), "--audio", str(ASSETS / "speech.wav"), "--out", str(out), *args, **env
    )


def check_video(path: Path, codecs: tuple[str, str]) -> None:
    info = probe_video(path.read_bytes())
    assert (info["video_codec"], info["audio_codec"]) == codecs
    assert (info["width"], info["height"]) == (512, 512)
    assert info["fps"] == 25.0
    assert abs(info["audio_duration"] - speech_seconds()) < 0.04


def test_webm_by_default(live_server, tmp_path):
    out = tmp_path / "out" / "talking.webm"  # the client creates the directory
    result = generate(
        out, "--url", live_server.url, "--image", str(ASSETS / "face.jpg"), "--box", BOX
    )
    assert result.returncode == 0, result.stderr
    check_video(out, ("vp9", "opus"))
    summary = result.stdout.strip()
    assert summary.count("\n") == 0
    assert str(out) in summary
    assert "frames" in summary and "timings_ms" in summary


def test_mp4_with_url_and_key_from_the_environment(live_server, tmp_path):
    out = tmp_path / "talking.bin"
    result = generate(
        out,
        "--format",
        "mp4",
        "--model",
        "wav2lip_gan",
        "--image",
        str(ASSETS / "face.jpg"),
        "--box",
        BOX,
        LIPSYNC_URL=live_server.url,
        LIPSYNC_API_KEY="test-key",
    )
    assert result.returncode == 0, result.stderr
    check_video(out, ("h264", "aac"))


def test_service_error_is_printed_as_json_and_exits_1(live_server, tmp_path):
    out = tmp_path / "never.webm"
    result = generate(out, "--url", live_server.url, "--image", str(ROOT / "README.md"))
    assert result.returncode == 1
    error = json.loads(result.stderr.strip().splitlines()[-1])
    assert error["success"] is False
    assert error["error"]["code"] == "unsupported_media"
    assert error["error"]["message"]
    assert not out.exists()


def test_unreachable_server_exits_1(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        result = generate(tmp_path / "x.webm", "--url", url, "--image", str(ASSETS / "face.jpg"))
    assert result.returncode == 1
    assert json.loads(result.stderr.strip())["error"]["code"] == "unreachable"


@pytest.mark.parametrize(
    "args",
    [
        [],  # no --image / --avatar-id
        ["--image", "face.jpg", "--box", "1,2,3"],
        ["--image", "face.jpg", "--no-such-option"],
    ],
)
def test_usage_errors_exit_2(args, tmp_path):
    result = generate(tmp_path / "x.webm", *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_generate_video_is_importable_without_running_the_cli():
    code = (
        f"import({json.dumps(SCRIPT.as_uri())}).then((m) => console.log(JSON.stringify("
        "{fn: typeof m.generateVideo, err: typeof m.LipSyncError, url: m.DEFAULT_URL})))"
    )
    result = run_node("--input-type=module", "-e", code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "fn": "function",
        "err": "function",
        "url": "http://127.0.0.1:5001",
    }
    assert "usage" not in result.stdout + result.stderr
