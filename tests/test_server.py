"""End to end against the real gunicorn server on loopback (untrained models)."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
import soundfile as sf
from helpers import ASSETS, FACE_BOX, decode

SPEECH_SECONDS = 88014 / 16000  # test_assets/speech.wav
FRAME = 1 / 25


def check_video(video: bytes, codecs: tuple[str, str]) -> dict:
    info = decode(video)
    assert (info["video_codec"], info["audio_codec"]) in {
        codecs,
        (codecs[0].replace("h264", "libx264"), codecs[1]),
    }
    assert info["fps"] == 25.0
    assert len(info["frames"]) == int(np.ceil(SPEECH_SECONDS * 25))
    assert info["frames"][0].shape == (512, 512, 3)
    # The audio track carries the whole speech, within one video frame.
    assert abs(info["audio_samples"] / info["audio_rate"] - SPEECH_SECONDS) < FRAME
    return info


@pytest.mark.slow
def test_json_request_returns_webm_with_audio(live_server):
    payload = {
        "image": base64.b64encode((ASSETS / "face.jpg").read_bytes()).decode(),
        "audio": base64.b64encode((ASSETS / "speech.wav").read_bytes()).decode(),
        "box": list(FACE_BOX),
    }
    response = live_server.post("/api/generate", json=payload)
    assert response.status_code == 200, response.text
    meta = response.json()
    info = check_video(base64.b64decode(meta["video"]), ("vp9", "opus"))
    assert meta["num_frames"] == len(info["frames"])
    # Outside the face box the photo is unchanged (up to lossy coding).
    original = (ASSETS / "face.jpg").read_bytes()
    photo = av.open(io.BytesIO(original)).decode(video=0).__next__().to_ndarray(format="bgr24")
    assert np.abs(info["frames"][10][300:, :].astype(int) - photo[300:, :]).mean() < 6


@pytest.mark.slow
def test_multipart_request_returns_mp4_with_audio(live_server):
    files = {
        "image": ("face.jpg", (ASSETS / "face.jpg").read_bytes(), "image/jpeg"),
        "audio": ("speech.wav", (ASSETS / "speech.wav").read_bytes(), "audio/wav"),
    }
    data = {"format": "mp4", "box": "50,180,165,280"}
    response = live_server.post("/api/generate", files=files, data=data)
    assert response.status_code == 200, response.text
    check_video(base64.b64decode(response.json()["video"]), ("h264", "aac"))


@pytest.mark.slow
def test_audio_at_other_rates_and_layouts(live_server):
    """A 44.1 kHz stereo float WAV: decoded, resampled for the model, kept for the track."""
    rate = 44100
    t = np.arange(int(1.0 * rate)) / rate
    stereo = np.column_stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 300 * t)]) * 0.3
    buf = io.BytesIO()
    sf.write(buf, stereo, rate, format="WAV", subtype="FLOAT")
    payload = {
        "image": base64.b64encode((ASSETS / "face.jpg").read_bytes()).decode(),
        "audio": base64.b64encode(buf.getvalue()).decode(),
        "box": list(FACE_BOX),
    }
    response = live_server.post("/api/generate", json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["num_frames"] == 25


@pytest.mark.slow
def test_health_and_errors_from_the_real_server(live_server):
    health = live_server.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert all(m["compiled"] for m in health.json()["models"].values()), "compiled at worker start"
    bad = live_server.post(
        "/api/generate", data=b"\x00\x01", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"


@pytest.mark.slow
def test_no_temp_files_are_left_behind(live_server):
    """After good and bad requests (run before this one too), the server's TMPDIR is empty."""
    live_server.post("/api/generate", json={"image": "AAAA", "audio": "AAAA"})
    live_server.post(
        "/api/generate",
        files={"image": ("x.png", b"\x89PNG\r\n\x1a\nbroken"), "audio": ("a.wav", b"RIFFxxxx")},
    )
    assert list(live_server.tmpdir.iterdir()) == []
