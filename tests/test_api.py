"""The HTTP contract through Flask's test client: happy paths and every error class."""

from __future__ import annotations

import base64
import io
import logging
import re

import pytest
from helpers import ASSETS, FACE_BOX, assert_error, b64, probe_video, wav_bytes

from lipsync.server.app import create_app


@pytest.fixture(scope="module")
def image_b64() -> str:
    return b64((ASSETS / "face.jpg").read_bytes())


@pytest.fixture(scope="module")
def short_audio() -> bytes:
    return wav_bytes(0.6)


def body(image_b64, audio: bytes, **fields):
    return {"image": image_b64, "audio": b64(audio), "box": list(FACE_BOX), **fields}


def test_generate_json_returns_a_playable_video(client, image_b64, short_audio):
    response = client.post("/api/generate", json=body(image_b64, short_audio))
    assert response.status_code == 200
    payload = response.get_json()
    assert payload["success"] is True
    assert payload["mime_type"] == "video/webm"
    assert (payload["width"], payload["height"], payload["fps"]) == (512, 512, 25.0)
    assert payload["num_frames"] == 15  # ceil(0.6 s * 25)
    assert payload["duration"] == pytest.approx(0.6)
    assert set(payload["timings_ms"]) >= {"mel", "detect", "infer", "paste", "encode"}
    info = probe_video(base64.b64decode(payload["video"]))
    assert (info["video_codec"], info["audio_codec"]) == ("vp9", "opus")
    assert info["num_frames"] == 15
    assert info["audio_duration"] == pytest.approx(0.6, abs=0.04)


def test_generate_accepts_data_urls_mp4_and_options(client, image_b64, short_audio):
    response = client.post(
        "/api/generate",
        json=body(
            "data:image/jpeg;base64," + image_b64,
            short_audio,
            format="mp4",
            fps=30,
            model="wav2lip_gan",
            smooth=False,
            pads=[0, 0, 0, 0],
        ),
    )
    assert response.status_code == 200, response.get_json()
    payload = response.get_json()
    assert payload["mime_type"] == "video/mp4" and payload["num_frames"] == 18
    info = probe_video(base64.b64decode(payload["video"]))
    assert (info["video_codec"], info["audio_codec"], info["fps"]) == ("h264", "aac", 30.0)


def test_generate_multipart(client, short_audio):
    data = {
        "image": (io.BytesIO((ASSETS / "face.jpg").read_bytes()), "face.jpg"),
        "audio": (io.BytesIO(short_audio), "speech.wav"),
        "box": ",".join(map(str, FACE_BOX)),
        "fps": "25",
        "smooth": "false",
        "format": "mp4",
    }
    response = client.post("/api/generate", data=data, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["num_frames"] == 15


def test_health_reports_models(client):
    response = client.get("/health")
    assert response.status_code == 200
    payload = response.get_json()
    assert payload["status"] == "ok"
    assert set(payload["models"]) == {"face_detection", "wav2lip", "wav2lip_gan"}
    assert all(m["present"] for m in payload["models"].values())
    assert payload["openvino_version"] and payload["device"] == "CPU"


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"image": None}, "missing_field", "image"),
        ({"audio": None}, "missing_field", "audio"),
        ({"image": "not base64!"}, "invalid_base64", "image"),
        ({"audio": 12}, "invalid_field", "audio"),
        ({"fps": "fast"}, "invalid_field", "fps"),
        ({"fps": 1e9}, "invalid_field", "fps"),
        ({"fps": True}, "invalid_field", "fps"),
        ({"pads": [0, 10, 0]}, "invalid_field", "pads"),
        ({"pads": [0, -5, 0, 0]}, "invalid_field", "pads"),
        ({"box": [1, 2, "3", 4]}, "invalid_field", "box"),
        ({"smooth": "maybe"}, "invalid_field", "smooth"),
        ({"model": "wav3lip"}, "invalid_field", "model"),
        ({"format": "avi"}, "invalid_field", "format"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    client, image_b64, short_audio, payload, code, field
):
    merged = {k: v for k, v in {**body(image_b64, short_audio), **payload}.items() if v is not None}
    assert_error(client.post("/api/generate", json=merged), 400, code, field)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [("{not json", "application/json"), ("[1, 2]", "application/json"), ("hello", "text/plain")],
)
def test_malformed_bodies_are_400(client, data, content_type):
    assert_error(
        client.post("/api/generate", data=data, content_type=content_type), 400, "invalid_json"
    )


def test_undecodable_image_is_415(client, short_audio):
    response = client.post(
        "/api/generate", json={"image": b64(b"GIF89a" + b"\0" * 40), "audio": b64(short_audio)}
    )
    assert_error(response, 415, "unsupported_media")
    response = client.post(
        "/api/generate", json={"image": b64(b"plain text"), "audio": b64(short_audio)}
    )
    assert_error(response, 415, "unsupported_media")


def test_undecodable_audio_is_415(client, image_b64):
    response = client.post(
        "/api/generate", json={"image": image_b64, "audio": b64(b"RIFF\0\0\0\0WAVEjunk")}
    )
    assert_error(response, 415, "unsupported_audio")


def test_box_outside_the_image_is_rejected(client, image_b64, short_audio):
    response = client.post("/api/generate", json=body(image_b64, short_audio, box=[0, 600, 0, 100]))
    assert_error(response, 422, "invalid_input")
    assert "box" in response.get_json()["error"]["message"]


def test_audio_too_short_and_too_long_are_422(untrained_models, image_b64):
    client = create_app(
        {
            "models_dir": untrained_models,
            "cache_dir": None,
            "avatar_dir": None,
            "max_audio_seconds": 1.0,
        }
    ).test_client()
    assert_error(
        client.post("/api/generate", json=body(image_b64, wav_bytes(0.02))), 422, "audio_too_short"
    )
    assert_error(
        client.post("/api/generate", json=body(image_b64, wav_bytes(1.5))), 422, "audio_too_long"
    )


def test_body_over_the_limit_is_413(untrained_models, image_b64, short_audio):
    client = create_app(
        {"models_dir": untrained_models, "cache_dir": None, "avatar_dir": None, "max_body_mb": 0.05}
    ).test_client()
    assert_error(
        client.post("/api/generate", json=body(image_b64, short_audio)), 413, "payload_too_large"
    )


def test_no_face_is_422(blind_models, image_b64, short_audio):
    client = create_app(
        {"models_dir": blind_models, "cache_dir": None, "avatar_dir": None}
    ).test_client()
    payload = {"image": image_b64, "audio": b64(short_audio)}
    assert_error(client.post("/api/generate", json=payload), 422, "face_not_detected")


def test_missing_models_are_503_with_the_fix(tmp_path, image_b64, short_audio):
    client = create_app(
        {"models_dir": tmp_path, "cache_dir": None, "avatar_dir": None}
    ).test_client()
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["status"] == "degraded"
    assert "convert_to_openvino.py" in health.get_json()["error"]["fix"]
    assert_error(
        client.post("/api/generate", json=body(image_b64, short_audio)), 503, "model_unavailable"
    )


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/api/generate"), 405, "method_not_allowed")


def test_an_internal_value_error_is_a_logged_500(
    client, image_b64, short_audio, monkeypatch, caplog
):
    """A bug deep in generation (a numpy-style ValueError) is the server's fault: 500
    internal_error naming the request id, logged with its traceback, its text not shown."""
    secret = "operands could not be broadcast together with shapes (80,16) (3,)"

    def broken(*args, **kwargs):
        raise ValueError(secret)

    monkeypatch.setattr("lipsync.audio.melspectrogram", broken)
    with caplog.at_level(logging.ERROR):
        response = client.post(
            "/api/generate",
            json=body(image_b64, short_audio),
            headers={"X-Request-ID": "req-bug-42"},
        )
    assert_error(response, 500, "internal_error")
    message = response.get_json()["error"]["message"]
    assert "req-bug-42" in message and secret not in message and "ValueError" not in message
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert logged, "the failure was not logged"
    assert "req-bug-42" in logged[0].getMessage()
    assert isinstance(logged[0].exc_info[1], ValueError)


def test_docs_are_served_locally(client):
    page = client.get("/docs/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html and "swagger-ui-bundle.js" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "a remote asset"
    for asset in re.findall(r"""(?:src|href)=["']([^"']+)["']""", html):
        served = client.get(f"/docs/{asset}")
        assert served.status_code == 200 and served.get_data(), asset
    assert client.get("/docs").status_code in (301, 308)  # to /docs/
