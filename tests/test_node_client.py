"""The Node.js example clients (examples/node/) against the real gunicorn server: whole
replies (generate.mjs), streamed replies (stream.mjs) and a chat backend forwarding them
(chat-server.mjs), live WebSocket sessions (live.mjs).

The models are untrained, so the detector may miss the test face: every run passes the face
box explicitly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import wave
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
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


# -- streamed replies, a chat backend forwarding them, live sessions -------------------------

STREAM = ROOT / "examples" / "node" / "stream.mjs"
CHAT_SERVER = ROOT / "examples" / "node" / "chat-server.mjs"
LIVE = ROOT / "examples" / "node" / "live.mjs"
NODE_MODULES = ROOT / "examples" / "node" / "node_modules"
SMALL = 256  # a 256x256 face keeps the CPU low
needs_ws = pytest.mark.skipif(
    not all((NODE_MODULES / name).is_dir() for name in ("ws", "jpeg-js")),
    reason="`ws` or `jpeg-js` is not installed: npm ci --prefix examples/node "
    "(scripts/test.sh does that)",
)
SMALL_BOX = [v * SMALL // 512 for v in FACE_BOX]


@pytest.fixture(scope="module")
def small_face(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("node-face") / "face256.jpg"
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (SMALL, SMALL)))
    return path


@pytest.fixture(scope="module")
def avatar_id(live_server, small_face) -> str:
    response = live_server.post(
        "/api/avatars",
        files={"image": small_face.read_bytes()},
        data={"box": ",".join(map(str, SMALL_BOX))},
    )
    assert response.status_code in (200, 201), response.text
    return response.json()["avatar_id"]


def expected_frames() -> int:
    return math.ceil(speech_seconds() * 25)


def test_streamed_reply_is_written_to_disk_as_it_arrives(live_server, avatar_id, tmp_path):
    out = tmp_path / "reply" / "out.webm"
    result = run_node(
        str(STREAM),
        "--url", live_server.url,
        "--avatar-id", avatar_id,
        "--audio", str(ASSETS / "speech.wav"),
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["num_frames"] == expected_frames()
    assert summary["chunks"] > 1 and summary["first_chunk_ms"] < summary["done_ms"]
    assert summary["bytes"] == out.stat().st_size
    info = probe_video(out.read_bytes())
    assert (info["video_codec"], info["audio_codec"]) == ("vp9", "opus")
    assert info["num_frames"] == summary["num_frames"]
    assert abs(info["audio_duration"] - speech_seconds()) < 0.04


@pytest.fixture
def chat_server(live_server, avatar_id):
    """examples/node/chat-server.mjs on a free port, forwarding to the live server."""
    process = subprocess.Popen(
        [NODE, str(CHAT_SERVER), "--port", "0", "--url", live_server.url, "--avatar-id", avatar_id],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line, process.stderr.read()
        yield json.loads(line)["listening"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_chat_backend_forwards_the_stream_as_it_is_made(chat_server, tmp_path):
    speech = (ASSETS / "speech.wav").read_bytes()
    with requests.post(f"{chat_server}/reply", data=speech, stream=True, timeout=300) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "video/webm"
        assert response.headers["X-Codecs"] == "vp9,opus"
        assert "Content-Length" not in response.headers  # forwarded as it comes
        chunks = list(response.iter_content(chunk_size=None))
    assert len(chunks) > 1
    info = probe_video(b"".join(chunks))
    assert info["num_frames"] == int(response.headers["X-Num-Frames"]) == expected_frames()
    assert (info["width"], info["height"]) == (SMALL, SMALL)
    assert abs(info["audio_duration"] - speech_seconds()) < 0.04


def test_chat_backend_forwards_the_service_errors(chat_server):
    response = requests.post(f"{chat_server}/reply", data=b"not audio", timeout=60)
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_audio" and error["message"]


def run_live(live_server, avatar_id: str, out_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """live.mjs: test_assets/speech.wav in real time, the frames saved in `out_dir`."""
    speech = str(ASSETS / "speech.wav")
    return run_node(
        str(LIVE), "--url", live_server.url, "--avatar-id", avatar_id, "--audio", speech,
        "--out-dir", str(out_dir), *args,
    )  # fmt: skip


def saved_frames(out_dir: Path, summary: dict) -> list[np.ndarray]:
    """The frames live.mjs saved, checked against frames.json and its summary line."""
    frames = json.loads((out_dir / "frames.json").read_text())
    assert summary["frames"] == summary["flushed"] == len(frames) == expected_frames()
    assert summary["dropped"] == 0
    assert [f["index"] for f in frames] == list(range(len(frames)))
    assert [f["pts_ms"] for f in frames] == [round(i * 40) for i in range(len(frames))]
    images = []
    for frame in frames:
        jpeg = (out_dir / f"{frame['index']:06d}.jpg").read_bytes()
        assert len(jpeg) == frame["bytes"]
        assert zlib.crc32(jpeg) == frame["crc32"]
        images.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
        assert images[-1].shape == (SMALL, SMALL, 3)
    received = sum(f["received"] for f in frames)
    assert summary["bytes_per_frame"] == round(summary["bytes_received"] / len(frames))
    assert summary["bytes_received"] >= received
    if summary["format"] == "patch":
        assert {f["base"] for f in frames} == {0}  # an image avatar: one base frame...
        assert summary["bases"] == 1  # ...received once
    else:
        assert summary["bytes_received"] == received
        assert {f["base"] for f in frames} == {None} and summary["bases"] == 0
    return images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@needs_ws
def test_live_session_saves_every_frame_checked(live_server, avatar_id, tmp_path):
    """Patch output (the default) composited by the client gives the frames jpeg output
    gives, within JPEG error, for far fewer bytes."""
    results = {}
    for output, args in (("patch", []), ("jpeg", ["--format", "jpeg"])):
        out_dir = tmp_path / output
        result = run_live(live_server, avatar_id, out_dir, *args)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["format"] == output
        results[output] = (summary, saved_frames(out_dir, summary))
        print(
            f"live session, {output}: {summary['fps']} fps, latency {summary['latency_ms']} ms, "
            f"{summary['bytes_per_frame']} bytes per frame ({summary['bitrate_kbps']} kbit/s)"
        )
    (patch, composited), (jpeg, whole) = results["patch"], results["jpeg"]
    worst = min(psnr(a, b) for a, b in zip(composited, whole, strict=True))
    print(f"composited against whole frames: PSNR >= {worst:.1f} dB")
    assert worst >= 35
    assert patch["bytes_per_frame"] < jpeg["bytes_per_frame"] / 3


@needs_ws
def test_live_format_must_be_patch_or_jpeg(tmp_path):
    speech = str(ASSETS / "speech.wav")
    result = run_node(
        str(LIVE), "--avatar-id", "0" * 32, "--audio", speech, "--out-dir", str(tmp_path),
        "--format", "webm",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--format must be patch or jpeg" in result.stderr and "usage:" in result.stderr


@needs_ws
def test_live_session_reports_the_service_error(live_server, tmp_path):
    result = run_live(live_server, "0" * 32, tmp_path / "frames")
    assert result.returncode == 1
    error = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "avatar_not_found" and "not found" in error["message"]
