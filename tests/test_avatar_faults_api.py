"""The avatar routes under faults, end to end: a full avatar disk answers `507
storage_full` (documented, no traceback) while everything that needs no room keeps
working, and on the real 2-worker gunicorn server a delete on one worker is a 404 on every
worker right after (local directory and Redis), and a dead worker's temporary is removed."""

from __future__ import annotations

import socket

import cv2
import pytest
import requests
from helpers import FACE_BOX, assert_error, b64, start_server, stop_server, wav_bytes
from test_avatar_faults import MODES, FullDisk, dead_pid, leave
from test_avatar_shared_api import realtime_start, registration
from test_openapi import check

from lipsync.errors import ErrorCode
from lipsync.server import openapi
from lipsync.server.app import create_app

CODE = ErrorCode.STORAGE_FULL.code
NOT_FOUND = ErrorCode.AVATAR_NOT_FOUND.code
# Reads on new connections until the worker that did not register has loaded the avatar.
WARM_UP_READS = 40
# Reads after a delete, on new connections (both workers answer some of them).
READS_AFTER_DELETE = 12


@pytest.fixture(scope="module")
def face_jpeg(face_image) -> bytes:
    return cv2.imencode(".jpg", face_image)[1].tobytes()


@pytest.fixture(params=MODES)
def full_disk(request, tmp_path, monkeypatch):
    disk = FullDisk(request.param, tmp_path, monkeypatch)
    yield disk
    disk.close()


def speech() -> dict:
    return {"audio": b64(wav_bytes(0.3))}


def test_a_full_disk_is_507_and_what_needs_no_room_works(untrained_models, full_disk, face_jpeg):
    settings = {"models_dir": untrained_models, "cache_dir": None}
    client = create_app({**settings, "avatar_dir": full_disk.directory}).test_client()
    spec = openapi.build_spec()
    kept = client.post("/api/avatars", json=registration(face_jpeg))
    assert kept.status_code == 201, kept.get_json()
    kept_id = kept.get_json()["avatar_id"]
    full_disk.fill()
    other = {**registration(face_jpeg), "pads": [0, 12, 0, 0]}  # another avatar
    refused = client.post("/api/avatars", json=other)
    assert_error(refused, 507, CODE)
    assert "Retry-After" not in refused.headers  # freeing space is an operator's job
    check(spec, refused, "/api/avatars", "post")

    raw = client.post("/api/generate", json={**other, **speech()})  # no room needed
    assert raw.status_code == 200, raw.get_json()
    refused_id = raw.get_json()["avatar_id"]  # the id the registration would have had
    assert_error(client.get(f"/api/avatars/{refused_id}"), 404, NOT_FOUND)
    by_refused_id = client.post("/api/generate", json={"avatar_id": refused_id, **speech()})
    assert_error(by_refused_id, 404, NOT_FOUND)
    listed = client.get("/api/avatars").get_json()["avatars"]
    assert [a["avatar_id"] for a in listed] == [kept_id]
    by_id = client.post("/api/generate", json={"avatar_id": kept_id, **speech()})
    assert by_id.status_code == 200, by_id.get_json()
    assert client.post("/api/avatars", json=registration(face_jpeg)).status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'lipsync_rejected_requests_total{{reason="{CODE}"}}' in metrics
    assert sorted(p.name for p in full_disk.directory.iterdir()) == [kept_id]  # no temporary

    full_disk.free()
    again = client.post("/api/avatars", json=other)
    assert again.status_code == 201 and again.get_json()["avatar_id"] == refused_id


def generate_by_id(server, avatar_id: str) -> requests.Response:
    """A generation on a new connection (either worker may take it)."""
    return requests.post(
        f"{server.url}/api/generate", json={"avatar_id": avatar_id, **speech()}, timeout=60
    )


def warm_up_both_workers(server, avatar_id: str) -> None:
    """Reads until the worker that did not register has loaded the avatar into memory."""
    for _ in range(WARM_UP_READS):
        assert generate_by_id(server, avatar_id).status_code == 200
        if f"loaded avatar {avatar_id} from" in server.log_path.read_text():
            return
    pytest.fail(f"{WARM_UP_READS} reads all reached the worker that registered")


@pytest.mark.parametrize("store", ["local", "redis"])
def test_a_delete_is_seen_by_every_gunicorn_worker(
    untrained_models, tmp_path, face_jpeg, redis_server, store
):
    env = {"LIPSYNC_WORKERS": "2"}
    if store == "redis":
        redis_server.start()
        redis_server.flush()
        env["LIPSYNC_AVATAR_STORE"] = redis_server.url
    else:  # what a worker killed mid-registration left
        (tmp_path / "avatars").mkdir()
        leave(tmp_path / "avatars", f".tmp-{socket.gethostname()}-{dead_pid()}-k3j2h1gf")
    server = start_server(untrained_models, tmp_path, **env)
    try:
        registered = requests.post(
            f"{server.url}/api/avatars", json=registration(face_jpeg), timeout=60
        )
        assert registered.status_code == 201, registered.text
        avatar_id = registered.json()["avatar_id"]
        warm_up_both_workers(server, avatar_id)
        assert requests.delete(f"{server.url}/api/avatars/{avatar_id}", timeout=30).ok
        for _ in range(READS_AFTER_DELETE):
            gone = generate_by_id(server, avatar_id)
            assert gone.status_code == 404, gone.text
            meta = requests.get(f"{server.url}/api/avatars/{avatar_id}", timeout=30)
            assert meta.status_code == 404, meta.text
            assert requests.get(f"{server.url}/api/avatars", timeout=30).json()["avatars"] == []
            assert realtime_start(server, avatar_id) == {"type": "error", "code": NOT_FOUND}
        if store == "local":
            assert [p.name for p in (tmp_path / "avatars").iterdir()] == []
            metrics = requests.get(f"{server.url}/metrics", timeout=30).text
            assert "lipsync_avatar_stale_temporaries_removed_total 1.0" in metrics
    finally:
        stop_server(server)


def test_a_full_disk_on_the_gunicorn_server(untrained_models, tmp_path, face_jpeg, monkeypatch):
    """A real ENOSPC in the server's processes: the avatar directory on a full tmpfs."""
    disk = FullDisk("tmpfs", tmp_path, monkeypatch)
    server = None
    try:
        server = start_server(
            untrained_models, tmp_path, LIPSYNC_AVATAR_DIR=str(disk.directory), LIPSYNC_WORKERS="2"
        )
        kept = requests.post(f"{server.url}/api/avatars", json=registration(face_jpeg), timeout=60)
        assert kept.status_code == 201, kept.text
        kept_id = kept.json()["avatar_id"]
        disk.fill()
        other = {**registration(face_jpeg), "pads": [0, 12, 0, 0]}
        for _ in range(4):  # either worker
            refused = requests.post(f"{server.url}/api/avatars", json=other, timeout=60)
            assert refused.status_code == 507 and refused.json()["error"]["code"] == CODE
            assert generate_by_id(server, kept_id).status_code == 200
            assert realtime_start(server, kept_id) == {"type": "ready"}
            raw = {"image": b64(face_jpeg), "box": list(FACE_BOX), **speech()}
            assert requests.post(f"{server.url}/api/generate", json=raw, timeout=60).ok
        assert "Traceback" not in server.log_path.read_text()
        assert [p.name for p in disk.directory.iterdir()] == [kept_id]
    finally:
        if server is not None:
            stop_server(server)
        disk.close()
