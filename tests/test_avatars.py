"""Avatars: register once, generate by id, persistence across app instances, video avatars."""

from __future__ import annotations

import base64
import io
import threading
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from helpers import ASSETS, assert_error, b64, decode, wav_bytes

from lipsync.avatars import AVATAR_ID_PATTERN
from lipsync.faces import frame_order
from lipsync.server.app import create_app


@pytest.fixture(scope="module")
def face_png() -> bytes:
    """The portrait at 256x256, where the untrained detector finds a face (see test_engine)."""
    image = cv2.resize(
        cv2.imread(str(ASSETS / "face.jpg")), (256, 256), interpolation=cv2.INTER_AREA
    )
    return cv2.imencode(".png", image)[1].tobytes()


def make_app(models, avatar_dir, **overrides):
    return create_app(
        {"models_dir": models, "cache_dir": None, "avatar_dir": avatar_dir, **overrides}
    )


def register(client, data: bytes, **fields):
    return client.post("/api/avatars", json={"image": b64(data), **fields})


def frames_of(response) -> list[np.ndarray]:
    return decode(base64.b64decode(response.get_json()["video"]))["frames"]


def test_register_generate_by_id_and_restart(untrained_models, tmp_path, face_png):
    client = make_app(untrained_models, tmp_path).test_client()
    first = register(client, face_png)
    assert first.status_code == 201, first.get_json()
    meta = first.get_json()
    assert AVATAR_ID_PATTERN.fullmatch(meta["avatar_id"]) and meta["registered_now"] is True
    assert meta["created"] is True  # the flag's former name, still sent
    assert (meta["kind"], meta["width"], meta["height"], meta["num_frames"]) == (
        "image",
        256,
        256,
        1,
    )
    assert len(meta["boxes"]) == 1 and len(meta["boxes"][0]) == 4
    again = register(client, face_png)
    assert again.status_code == 200 and again.get_json()["avatar_id"] == meta["avatar_id"]
    assert again.get_json()["registered_now"] is again.get_json()["created"] is False

    speech = b64(wav_bytes(0.8))
    by_id = client.post("/api/generate", json={"avatar_id": meta["avatar_id"], "audio": speech})
    direct = client.post("/api/generate", json={"image": b64(face_png), "audio": speech})
    assert by_id.status_code == direct.status_code == 200
    assert by_id.get_json()["avatar_id"] == direct.get_json()["avatar_id"] == meta["avatar_id"]
    assert "detect" not in by_id.get_json()["timings_ms"]
    for a, b in zip(frames_of(by_id), frames_of(direct), strict=True):
        np.testing.assert_array_equal(a, b)

    # A new app instance (a restart, or another worker) on the same directory: the cached
    # detection is used and the detector is never even compiled.
    restarted = make_app(untrained_models, tmp_path)
    response = restarted.test_client().post(
        "/api/generate", json={"avatar_id": meta["avatar_id"], "audio": speech}
    )
    assert response.status_code == 200
    assert (
        restarted.extensions["lipsync"].engine.model_status()["face_detection"]["compiled"] is False
    )
    for a, b in zip(frames_of(response), frames_of(direct), strict=True):
        np.testing.assert_array_equal(a, b)


def test_same_bytes_without_id_hit_the_cache(untrained_models, tmp_path, face_png):
    app = make_app(untrained_models, None)
    client = app.test_client()
    speech = b64(wav_bytes(0.3))
    first = client.post("/api/generate", json={"image": b64(face_png), "audio": speech}).get_json()
    second = client.post("/api/generate", json={"image": b64(face_png), "audio": speech}).get_json()
    assert "detect" in first["timings_ms"] and "detect" not in second["timings_ms"]
    other_pads = client.post(
        "/api/generate", json={"image": b64(face_png), "audio": speech, "pads": [0, 0, 0, 0]}
    )
    assert other_pads.get_json()["avatar_id"] != first["avatar_id"]


def test_list_get_delete(untrained_models, tmp_path, face_png):
    client = make_app(untrained_models, tmp_path).test_client()
    avatar_id = register(client, face_png, box=list((20, 200, 40, 220))).get_json()["avatar_id"]
    assert [a["avatar_id"] for a in client.get("/api/avatars").get_json()["avatars"]] == [avatar_id]
    got = client.get(f"/api/avatars/{avatar_id}").get_json()
    assert got["boxes"] == [[20, 200, 40, 220]] and got["box"] == [20, 200, 40, 220]
    assert (tmp_path / avatar_id).is_dir()
    assert client.delete(f"/api/avatars/{avatar_id}").status_code == 200
    assert not (tmp_path / avatar_id).exists() and list(tmp_path.iterdir()) == []
    assert_error(client.get(f"/api/avatars/{avatar_id}"), 404, "avatar_not_found")
    assert_error(client.delete(f"/api/avatars/{avatar_id}"), 404, "avatar_not_found")
    fresh = make_app(untrained_models, tmp_path).test_client()
    assert_error(fresh.get(f"/api/avatars/{avatar_id}"), 404, "avatar_not_found")


@pytest.mark.parametrize(
    "bad", ["abc", "0" * 31, "G" * 32, "A" * 32, "." * 32, "..\\..\\etc", "0" * 33]
)
def test_malformed_ids_are_400(untrained_models, tmp_path, bad):
    client = make_app(untrained_models, tmp_path).test_client()
    assert_error(client.get(f"/api/avatars/{bad}"), 400, "invalid_avatar_id")
    assert_error(client.delete(f"/api/avatars/{bad}"), 400, "invalid_avatar_id")
    response = client.post("/api/generate", json={"avatar_id": bad, "audio": b64(wav_bytes(0.3))})
    assert_error(response, 400, "invalid_avatar_id", "avatar_id")
    assert_error(
        client.get("/api/avatars/..%2F..%2Fetc%2Fpasswd"), 404, "not_found"
    )  # routing refuses slashes


@pytest.mark.parametrize(
    ("route", "faces", "form"),
    [
        ("/api/avatars", ("image", "video"), False),
        ("/api/avatars", ("image", "video"), True),
        ("/api/generate", ("avatar_id", "image"), False),
        ("/api/generate", ("avatar_id", "video"), True),
    ],
)
def test_a_request_naming_two_faces_is_refused_naming_both(
    untrained_models, tmp_path, face_png, route, faces, form
):
    """Ambiguous requests are a client's bug: 400 naming both fields, in JSON and forms,
    rather than one face used silently."""
    client = make_app(untrained_models, tmp_path).test_client()
    media = {"image": face_png, "video": face_png, "audio": wav_bytes(0.4)}
    fields = {name: media[name] for name in ("audio", *faces) if name in media}
    if "avatar_id" in faces:  # refused before any lookup: no need to register it
        fields["avatar_id"] = "0" * 32
    if form:
        body = {k: (io.BytesIO(v), k) if isinstance(v, bytes) else v for k, v in fields.items()}
        response = client.post(route, data=body, content_type="multipart/form-data")
    else:
        body = {k: b64(v) if isinstance(v, bytes) else v for k, v in fields.items()}
        response = client.post(route, json=body)
    assert_error(response, 400, "invalid_field", faces[0])
    assert faces[1] in response.get_json()["error"]["message"]


def test_unknown_id_in_generate_is_404(untrained_models, tmp_path):
    client = make_app(untrained_models, tmp_path).test_client()
    response = client.post(
        "/api/generate", json={"avatar_id": "0" * 32, "audio": b64(wav_bytes(0.3))}
    )
    assert_error(response, 404, "avatar_not_found")


def test_concurrent_registrations_make_one_entry(untrained_models, tmp_path, face_png):
    app = make_app(untrained_models, tmp_path, max_queue=10)  # all wait; none is refused
    results, barrier = [], threading.Barrier(6)

    def worker():
        client = app.test_client()
        barrier.wait()
        response = register(client, face_png)
        results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(status for status, _ in results) == [200] * 5 + [201]
    assert len({body["avatar_id"] for _, body in results}) == 1
    (entry,) = list(tmp_path.iterdir())  # one directory, no leftover temporary ones
    assert sorted(p.name for p in entry.iterdir()) == [
        "boxes.npy",
        "crops.npy",
        "meta.json",
        "source.bin",
    ]
    fresh = make_app(untrained_models, tmp_path).extensions["lipsync"].store
    assert fresh.get(entry.name).prepared.crops.shape == (1, 96, 96, 3)


def test_binary_response(untrained_models, tmp_path, face_png):
    client = make_app(untrained_models, None).test_client()
    payload = {"image": b64(face_png), "audio": b64(wav_bytes(0.4)), "box": [0, 256, 0, 256]}
    response = client.post("/api/generate", json=payload, headers={"Accept": "video/mp4"})
    assert response.status_code == 200 and response.mimetype == "video/mp4"
    assert response.headers["X-Num-Frames"] == "10" and response.headers["X-Fps"] == "25.0"
    assert "infer" in response.headers["X-Timings-Ms"]
    assert len(decode(response.data)["frames"]) == 10
    explicit = client.post("/api/generate", json={**payload, "response": "binary"})
    assert explicit.mimetype == "video/webm"


# -- video avatars -------------------------------------------------------------------------

MARKER = (slice(0, 16), slice(0, 16))  # a corner square outside the face box, brightness = frame id
CLIP_FRAMES = 8


def marked_clip(fps: int = 25) -> bytes:
    """An MP4 of the portrait whose corner square encodes the frame index (30 * i)."""
    base = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (256, 256))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width = stream.height = 256
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for i in range(CLIP_FRAMES):
            frame = base.copy()
            frame[MARKER] = 30 * i
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode())
    return buf.getvalue()


def source_indices(frames: list[np.ndarray]) -> list[int]:
    return [round(float(f[MARKER].mean()) / 30) for f in frames]


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [0.2, 1.0])
def test_video_avatar_through_the_server(live_server, seconds):
    clip = marked_clip()
    registered = live_server.post(
        "/api/avatars",
        files={"video": ("clip.mp4", clip, "video/mp4")},
        data={"box": "60,200,60,200"},
    )
    assert registered.status_code in (200, 201), registered.text
    meta = registered.json()
    assert (meta["kind"], meta["num_frames"], meta["fps"]) == ("video", CLIP_FRAMES, 25.0)
    response = live_server.post(
        "/api/generate",
        json={"avatar_id": meta["avatar_id"], "audio": b64(wav_bytes(seconds))},
        headers={"Accept": "video/webm"},
    )
    assert response.status_code == 200, response.text
    frames = decode(response.content)["frames"]
    expected = int(np.ceil(seconds * 25))
    assert len(frames) == expected
    assert source_indices(frames) == frame_order(expected, CLIP_FRAMES).tolist()
