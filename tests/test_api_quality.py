"""Output-quality fields through the HTTP API: output size, blend, silence gate, avatars."""

from __future__ import annotations

import io

import cv2
import numpy as np
import soundfile as sf
from helpers import ASSETS, FACE_BOX, assert_error, b64, wav_bytes


def face_upscaled(factor: int) -> bytes:
    """The test portrait enlarged `factor` times (a large phone-like photo), as JPEG."""
    image = cv2.imread(str(ASSETS / "face.jpg"))
    big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    return cv2.imencode(".jpg", big)[1].tobytes()


def silence_wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate)), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_standard_quality_fits_a_large_photo_within_720p(client):
    big_box = [v * 4 for v in FACE_BOX]  # the box is given in the uploaded image's pixels
    response = client.post(
        "/api/generate",
        json={"image": b64(face_upscaled(4)), "audio": b64(wav_bytes(0.4)), "box": big_box},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    payload = response.get_json()
    assert (payload["width"], payload["height"]) == (720, 720)  # 2048x2048 -> within 1280x720
    original = client.post(
        "/api/generate",
        json={
            "image": b64(face_upscaled(2)),
            "audio": b64(wav_bytes(0.4)),
            "box": [v * 2 for v in FACE_BOX],
            "quality": "original",
        },
    ).get_json()
    assert (original["width"], original["height"]) == (1024, 1024)


def test_an_avatar_keeps_its_registered_quality(client):
    registered = client.post(
        "/api/avatars",
        json={
            "image": b64((ASSETS / "face.jpg").read_bytes()),
            "box": list(FACE_BOX),
            "quality": "original",
        },
    )
    assert registered.status_code in (200, 201)
    avatar = registered.get_json()
    assert avatar["quality"] == "original"
    audio = b64(wav_bytes(0.4))
    same = client.post("/api/generate", json={"avatar_id": avatar["avatar_id"], "audio": audio})
    assert same.status_code == 200
    other = client.post(
        "/api/generate",
        json={"avatar_id": avatar["avatar_id"], "audio": audio, "quality": "high"},
    )
    assert_error(other, 400, "invalid_field", "quality")


def test_the_silence_gate_skips_silent_frames_and_says_so(client):
    image = b64((ASSETS / "face.jpg").read_bytes())
    response = client.post(
        "/api/generate",
        json={
            "image": image,
            "audio": b64(silence_wav(0.8)),
            "box": list(FACE_BOX),
            "silence_gate": True,
            "response": "binary",
        },
    )
    assert response.status_code == 200
    num_frames = int(response.headers["X-Num-Frames"])
    assert int(response.headers["X-Silent-Frames"]) == num_frames == 20
    ungated = client.post(
        "/api/generate",
        json={"image": image, "audio": b64(silence_wav(0.8)), "box": list(FACE_BOX)},
    ).get_json()
    assert ungated["silent_frames"] == 0


def test_bad_output_quality_fields_are_named(client):
    image = b64((ASSETS / "face.jpg").read_bytes())
    for field, value in [("quality", "4k"), ("blend", "hard"), ("silence_fade_frames", -1)]:
        response = client.post(
            "/api/generate",
            json={"image": image, "audio": b64(wav_bytes(0.4)), field: value},
        )
        assert_error(response, 400, "invalid_field", field)
