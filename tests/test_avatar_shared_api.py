"""The HTTP API on a Redis avatar store: two app instances (two workers, or two machines)
on one real redis-server, Redis failures answered 503 `avatar_store_unavailable`, and the
real gunicorn server (gevent worker) on Redis."""

from __future__ import annotations

import base64
import json

import cv2
import pytest
import requests
import websocket
from helpers import FACE_BOX, assert_error, b64, start_server, stop_server, wav_bytes

from lipsync.errors import ErrorCode
from lipsync.server.app import create_app

CODE = ErrorCode.AVATAR_STORE_UNAVAILABLE.code


@pytest.fixture(scope="module")
def face_jpeg(face_image) -> bytes:
    return cv2.imencode(".jpg", face_image)[1].tobytes()


def make_worker(models, url: str, **overrides):
    settings = {"models_dir": models, "cache_dir": None, "avatar_dir": None}
    return create_app({**settings, "avatar_store": url, "retry_after_s": 7, **overrides})


def registration(face: bytes) -> dict:
    return {"image": b64(face), "box": list(FACE_BOX)}


def generate_by_id(client, avatar_id: str):
    return client.post("/api/generate", json={"avatar_id": avatar_id, "audio": b64(wav_bytes(0.3))})


def assert_unavailable(response) -> None:
    assert_error(response, 503, CODE)
    assert response.headers["Retry-After"] == "7"


def test_two_workers_share_registrations(untrained_models, redis_url, face_jpeg):
    first = make_worker(untrained_models, redis_url).test_client()
    second_app = make_worker(untrained_models, redis_url)
    second = second_app.test_client()
    registered = first.post("/api/avatars", json=registration(face_jpeg))
    assert registered.status_code == 201, registered.get_json()
    avatar_id = registered.get_json()["avatar_id"]

    generated = generate_by_id(second, avatar_id)
    assert generated.status_code == 200, generated.get_json()
    assert generated.get_json()["avatar_id"] == avatar_id
    assert "detect" not in generated.get_json()["timings_ms"]
    assert second.get(f"/api/avatars/{avatar_id}").get_json() == {
        k: v for k, v in registered.get_json().items() if k not in ("created", "registered_now")
    }
    assert [a["avatar_id"] for a in second.get("/api/avatars").get_json()["avatars"]] == [avatar_id]
    again = second.post("/api/avatars", json=registration(face_jpeg))
    assert again.status_code == 200 and again.get_json()["registered_now"] is False

    assert second.delete(f"/api/avatars/{avatar_id}").status_code == 200
    assert_error(generate_by_id(first, avatar_id), 404, "avatar_not_found")
    assert_error(first.get(f"/api/avatars/{avatar_id}"), 404, "avatar_not_found")


def test_redis_down_is_503_for_avatars_but_raw_images_work(
    untrained_models, redis_server, redis_url, face_jpeg
):
    client = make_worker(untrained_models, redis_url).test_client()
    avatar_id = client.post("/api/avatars", json=registration(face_jpeg)).get_json()["avatar_id"]
    assert generate_by_id(client, avatar_id).status_code == 200  # now in this worker's memory
    raw = {"image": b64(face_jpeg), "box": list(FACE_BOX), "audio": b64(wav_bytes(0.3))}
    redis_server.stop()
    try:
        assert_unavailable(client.post("/api/avatars", json=registration(face_jpeg)))
        assert_unavailable(generate_by_id(client, avatar_id))
        streamed = {"avatar_id": avatar_id, "audio": b64(wav_bytes(0.3)), "stream": True}
        assert_unavailable(client.post("/api/generate", json=streamed))  # before any byte
        assert_unavailable(client.get(f"/api/avatars/{avatar_id}"))
        assert_unavailable(client.get("/api/avatars"))
        assert_unavailable(client.delete(f"/api/avatars/{avatar_id}"))
        response = client.post("/api/generate", json=raw)
        assert response.status_code == 200, response.get_json()
        metrics = client.get("/metrics").get_data(as_text=True)
        assert f'lipsync_rejected_requests_total{{reason="{CODE}"}}' in metrics  # a refusal
    finally:
        redis_server.start()  # empty: this test server keeps nothing
    # The same worker recovers without a restart.
    assert_error(generate_by_id(client, avatar_id), 404, "avatar_not_found")
    assert client.post("/api/avatars", json=registration(face_jpeg)).status_code == 201
    assert generate_by_id(client, avatar_id).status_code == 200


def test_a_corrupt_entry_is_404_and_can_be_registered_again(untrained_models, redis_url, face_jpeg):
    import redis

    client = make_worker(untrained_models, redis_url).test_client()
    avatar_id = client.post("/api/avatars", json=registration(face_jpeg)).get_json()["avatar_id"]
    redis.Redis.from_url(redis_url).set(f"lipsync:avatar:{avatar_id}", b"LSAV" + b"\xff" * 64)
    other = make_worker(untrained_models, redis_url).test_client()  # nothing in memory
    assert_error(generate_by_id(other, avatar_id), 404, "avatar_not_found")
    again = other.post("/api/avatars", json=registration(face_jpeg))
    assert again.status_code == 201 and again.get_json()["avatar_id"] == avatar_id
    assert generate_by_id(other, avatar_id).status_code == 200


def test_the_spec_documents_the_code_on_avatar_routes(client):
    spec = client.get("/openapi.json").get_json()
    assert CODE in str(spec["components"]["responses"]["Error503"])
    paths = spec["paths"]
    for path, method in [
        ("/api/avatars", "post"),
        ("/api/avatars", "get"),
        ("/api/avatars/{avatar_id}", "get"),
        ("/api/avatars/{avatar_id}", "delete"),
        ("/api/generate", "post"),
    ]:
        assert "503" in paths[path][method]["responses"], (path, method)


def realtime_start(server, avatar_id: str) -> dict:
    """The first answer to a WebSocket session's start with this avatar (type, code)."""
    url = server.url.replace("http://", "ws://") + "/api/stream"
    ws = websocket.create_connection(url, timeout=60)
    try:
        ws.send(json.dumps({"type": "start", "avatar_id": avatar_id}))
        answer = json.loads(ws.recv())
    finally:
        ws.close()
    return {k: v for k, v in answer.items() if k in ("type", "code")}


def test_the_gunicorn_server_on_redis(
    untrained_models, redis_server, redis_url, tmp_path, face_jpeg
):
    """Two gevent workers: Redis calls run on the hub's native threads and on greenlets."""
    server = start_server(
        untrained_models, tmp_path, LIPSYNC_AVATAR_STORE=redis_url, LIPSYNC_WORKERS="2"
    )
    try:
        registered = server.post("/api/avatars", json=registration(face_jpeg))
        assert registered.status_code == 201, registered.text
        avatar_id = registered.json()["avatar_id"]
        speech = b64(wav_bytes(0.3))
        for _ in range(4):  # new connections: both workers get some
            response = server.post("/api/generate", json={"avatar_id": avatar_id, "audio": speech})
            assert response.status_code == 200, response.text
            assert base64.b64decode(response.json()["video"])
        assert server.get(f"/api/avatars/{avatar_id}").json()["avatar_id"] == avatar_id
        redis_server.stop()
        try:
            down = server.post("/api/generate", json={"avatar_id": avatar_id, "audio": speech})
            assert down.status_code == 503 and down.json()["error"]["code"] == CODE
            assert down.headers["Retry-After"]
            meta = server.get(f"/api/avatars/{avatar_id}")
            assert meta.status_code == 503 and meta.json()["error"]["code"] == CODE
            raw = {"image": b64(face_jpeg), "box": list(FACE_BOX), "audio": speech}
            assert server.post("/api/generate", json=raw).status_code == 200
            assert realtime_start(server, avatar_id) == {"type": "error", "code": CODE}
        finally:
            redis_server.start()
        assert server.post("/api/avatars", json=registration(face_jpeg)).status_code == 201
        response = server.post("/api/generate", json={"avatar_id": avatar_id, "audio": speech})
        assert response.status_code == 200, response.text
        assert realtime_start(server, avatar_id) == {"type": "ready"}
        assert requests.delete(f"{server.url}/api/avatars/{avatar_id}", timeout=30).ok
    finally:
        stop_server(server)
