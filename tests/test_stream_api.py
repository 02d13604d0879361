"""Streamed replies (`"stream": true`) through the HTTP API: the same video as the whole-file
answer, errors before the first byte as JSON, metadata in headers, a hang-up that stops the
generation, a failure after the first byte that truncates the transfer."""

from __future__ import annotations

import json
import logging
import time
import uuid

import numpy as np
import pytest
import requests
from helpers import ASSETS, FACE_BOX, assert_error, b64, decode, wav_bytes

SPEECH = (ASSETS / "speech.wav").read_bytes()


def payload(**fields) -> dict:
    image = b64((ASSETS / "face.jpg").read_bytes())
    return {"image": image, "audio": b64(SPEECH), "box": list(FACE_BOX), **fields}


@pytest.mark.parametrize("fmt", ["webm", "mp4"])
def test_a_streamed_reply_is_the_whole_file_video(client, fmt):
    streamed = client.post("/api/generate", json=payload(format=fmt, stream=True))
    assert streamed.status_code == 200
    assert streamed.mimetype == f"video/{fmt}"
    assert "Content-Length" not in streamed.headers
    ours = decode(streamed.data)  # reading the body runs the generation (it holds the slot)
    whole = client.post("/api/generate", json=payload(format=fmt, response="binary"))
    theirs = decode(whole.data)
    assert len(ours["frames"]) == len(theirs["frames"]) == int(streamed.headers["X-Num-Frames"])
    assert int(streamed.headers["X-Width"]) == ours["frames"][0].shape[1]
    assert streamed.headers["X-Codecs"].split(",")[1] in ("opus", "mp4a.40.2")
    if fmt == "webm":  # the same VP9 bitstream: identical frames
        for a, b in zip(ours["frames"], theirs["frames"], strict=True):
            assert np.array_equal(a, b)
    assert abs(ours["audio_samples"] / ours["audio_rate"] - len(SPEECH) / 2 / 16000) < 0.05


def test_errors_before_the_first_byte_are_json(client):
    assert_error(
        client.post("/api/generate", json=payload(audio=b64(b"not audio"), stream=True)),
        415,
        "unsupported_audio",
    )
    assert_error(
        client.post("/api/generate", json=payload(audio=b64(wav_bytes(0.01)), stream=True)),
        422,
        "audio_too_short",
    )
    assert_error(client.post("/api/generate", json=payload(stream="yes")), 400, "invalid_field")


def test_a_failure_after_the_first_byte_truncates_and_is_counted(client, monkeypatch, caplog):
    from lipsync.engine import Wav2LipInferenceEngine

    real = Wav2LipInferenceEngine.iter_frames

    def breaks_after_one_batch(self, *args, **kwargs):
        batches = real(self, *args, **kwargs)
        yield next(batches)
        batches.close()
        raise RuntimeError("injected failure mid-stream")

    monkeypatch.setattr(Wav2LipInferenceEngine, "iter_frames", breaks_after_one_batch)
    caplog.set_level(logging.INFO)
    response = client.post(
        "/api/generate",
        json=payload(stream=True),
        headers={"X-Request-ID": "req-stream-7"},
        buffered=False,
    )
    assert response.status_code == 200
    received = bytearray()
    with pytest.raises(RuntimeError, match="injected failure"):
        for chunk in response.response:
            received += chunk
    response.close()
    assert received  # the first batch was sent before the failure
    assert "req-stream-7" in caplog.text and "failed after the first byte" in caplog.text
    ended = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lipsync.access"]
    assert {"event": "stream_end", "outcome": "failed"}.items() <= ended[-1].items()


def test_a_client_that_hangs_up_stops_the_generation(live_server):
    """Read the first bytes of a long reply, then close: the server stops generating and
    logs the stream as client_gone with fewer bytes than a whole reply."""
    long_speech = b64(wav_bytes(20.0))
    body = payload(audio=long_speech, stream=True)
    request_id = "hangs-up-" + uuid.uuid4().hex  # the server log is shared with other tests
    with requests.post(
        live_server.url + "/api/generate",
        json=body,
        stream=True,
        timeout=60,
        headers={"X-Request-ID": request_id},
    ) as r:
        assert r.status_code == 200
        assert next(r.iter_content(1024))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ends = [
            json.loads(line)
            for line in live_server.log_path.read_text().splitlines()
            if '"stream_end"' in line and request_id in line
        ]
        if ends:
            break
        time.sleep(0.2)
    assert ends and ends[-1]["outcome"] == "client_gone"
    metrics = live_server.get("/metrics").text
    assert 'lipsync_streams_total{outcome="client_gone"}' in metrics
    assert live_server.get("/health/ready").status_code == 200  # the slot is free again


def test_the_openapi_document_describes_streamed_replies(client):
    spec = client.get("/openapi.json").get_json()
    field = spec["components"]["schemas"]["GenerateRequest"]["properties"]["stream"]
    assert "truncated" in field["description"]
    answer = spec["paths"]["/api/generate"]["post"]["responses"]["200"]
    assert "stream" in answer["description"] and "video/webm" in answer["content"]
    assert "X-Codecs" in answer["headers"]


@pytest.fixture
def impatient_client(untrained_models):
    """One slot and a short queue: a leaked slot shows as 503 on the next request (a freed
    one lets it run once the stopped generation has finished its batch)."""
    from lipsync.server.app import create_app

    app = create_app(
        {
            "models_dir": untrained_models,
            "cache_dir": None,
            "avatar_dir": None,
            "max_queue": 1,
            "max_queue_wait_s": 15,
        }
    )
    return app.test_client()


def test_a_failure_before_the_first_byte_is_a_json_error(impatient_client, monkeypatch):
    from lipsync.engine import Wav2LipInferenceEngine

    def fails_at_once(self, *args, **kwargs):
        raise RuntimeError("injected failure before any frame")
        yield  # a generator, like the real one

    monkeypatch.setattr(Wav2LipInferenceEngine, "iter_frames", fails_at_once)
    response = impatient_client.post("/api/generate", json=payload(stream=True))
    assert_error(response, 500, "internal_error")
    monkeypatch.undo()
    again = impatient_client.post("/api/generate", json=payload(stream=True))
    assert again.status_code == 200  # the slot was released
    assert again.data


def test_a_body_never_sent_still_frees_the_slot(impatient_client):
    response = impatient_client.post("/api/generate", json=payload(stream=True), buffered=False)
    assert response.status_code == 200
    response.close()  # the server gives up on the body without reading it
    again = impatient_client.post("/api/generate", json=payload(stream=True))
    assert again.status_code == 200
    assert decode(again.data)["frames"]
