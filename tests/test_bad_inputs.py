"""A hand-written corpus of bad inputs: each gets a clean 4xx with the right error code.

Broken, lying or hostile media (truncated images and videos, decompression-bomb headers,
WAVs whose headers lie, NaN samples, odd sample rates), wrong types for every field, and
malformed bodies. Nothing here may produce a 5xx, and a refused registration leaves
nothing in the avatar directory.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import soundfile as sf
from helpers import ASSETS, FACE_BOX, assert_error, b64, make_clip, png_header_only, wav_bytes

from lipsync.media import images
from lipsync.server.app import create_app

SPEECH_SECONDS = 0.6
SPEECH_FRAMES = 15  # ceil(0.6 s * 25 fps)


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    return (ASSETS / "face.jpg").read_bytes()


@pytest.fixture(scope="module")
def speech() -> bytes:
    return wav_bytes(SPEECH_SECONDS)


def generate(client, face: bytes, audio: bytes, /, **fields):
    """POST /api/generate with this face and speech, fields overriding (None drops one)."""
    body = {"image": b64(face), "audio": b64(audio), "box": list(FACE_BOX), **fields}
    return client.post("/api/generate", json={k: v for k, v in body.items() if v is not None})


# -- media builders ------------------------------------------------------------------------


def face_png() -> bytes:
    return cv2.imencode(".png", cv2.imread(str(ASSETS / "face.jpg")))[1].tobytes()


def tiny_png(size: int = 16) -> bytes:
    """Smaller than the face detector's input can be (its pooling needs >= 32 px)."""
    return cv2.imencode(".png", np.full((size, size, 3), 128, np.uint8))[1].tobytes()


def clip(fps: Fraction = Fraction(25), fmt: str = "mp4", codec: str = "libx264") -> bytes:
    return make_clip(fmt, codec, num_frames=4, width=64, height=64, fps=fps)[0]


def audio_only_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


def wav_fmt_offset(wav: bytes) -> int:
    """Offset of the `fmt ` chunk's payload (format code, channels, rate, ..., bits)."""
    return wav.index(b"fmt ") + 8


def patched_wav(wav: bytes, offset_in_fmt: int, fmt: str, value: int) -> bytes:
    data = bytearray(wav)
    struct.pack_into(fmt, data, wav_fmt_offset(wav) + offset_in_fmt, value)
    return bytes(data)


def lying_data_size(wav: bytes) -> bytes:
    """The `data` chunk claims 100 MB; the file holds 0.6 s."""
    data = bytearray(wav)
    struct.pack_into("<I", data, wav.index(b"data") + 4, 100_000_000)
    return bytes(data)


def lying_riff_size(wav: bytes) -> bytes:
    data = bytearray(wav)
    struct.pack_into("<I", data, 4, 0xFFFFFFFF)
    return bytes(data)


def float_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def with_sample(value: float) -> bytes:
    samples = np.zeros(int(SPEECH_SECONDS * 16000), np.float32)
    samples[100] = value
    return float_wav(samples)


def empty_wav() -> bytes:
    """A 44-byte WAV: a valid header and no frames."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, np.int16), 16000, format="WAV", subtype="PCM_16")
    assert len(buf.getvalue()) == 44
    return buf.getvalue()


# -- faces ---------------------------------------------------------------------------------

BAD_FACES = {
    # name: (builder, status, code)
    "truncated_png": (lambda: face_png()[: len(face_png()) // 2], 415, "unsupported_media"),
    "png_signature_only": (lambda: face_png()[:24], 415, "unsupported_media"),
    "truncated_jpeg": (
        lambda: (ASSETS / "face.jpg").read_bytes()[:5000],
        415,
        "unsupported_media",
    ),
    "png_header_20000x20000": (lambda: png_header_only(20000, 20000), 413, "image_too_large"),
    "plain_text": (lambda: b"this is not an image", 415, "unsupported_media"),
    "gif_header_only": (lambda: b"GIF89a" + b"\0" * 40, 415, "unsupported_media"),
    "truncated_mp4": (lambda: clip()[: len(clip()) // 2], 415, "unsupported_media"),
    "mp4_header_only": (lambda: clip()[:64], 415, "unsupported_media"),
    "truncated_webm": (
        lambda: clip(fmt="webm", codec="libvpx-vp9")[:200],
        415,
        "unsupported_media",
    ),
    "mp4_without_video": (audio_only_mp4, 415, "unsupported_media"),
    # An MP4 whose video codec FFmpeg does not know (sample entry `avc1` renamed).
    "mp4_unknown_codec": (
        lambda: clip().replace(b"avc1", b"zzzz"),
        415,
        "unsupported_media",
    ),
    # README: "a video frame rate outside 1–60" is 422 invalid_video.
    "mp4_at_1000_fps": (lambda: clip(Fraction(1000)), 422, "invalid_video"),
    "mp4_at_half_fps": (lambda: clip(Fraction(1, 2)), 422, "invalid_video"),
    # Detection on an image smaller than the detector's receptive field: no face.
    "png_16x16": (tiny_png, 422, "face_not_detected"),
    "png_1x512": (
        lambda: cv2.imencode(".png", np.zeros((512, 1, 3), np.uint8))[1].tobytes(),
        422,
        "face_not_detected",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FACES))
def test_bad_face_for_generation(client, speech, name):
    build, status, code = BAD_FACES[name]
    response = generate(client, build(), speech, box=None)
    assert_error(response, status, code)


@pytest.mark.parametrize("name", list(BAD_FACES))
def test_bad_face_for_registration(client, name):
    build, status, code = BAD_FACES[name]
    assert_error(client.post("/api/avatars", json={"image": b64(build())}), status, code)


def test_huge_image_is_refused_before_decoding(client, speech, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("a 20000x20000 image reached the decoder")

    monkeypatch.setattr(images.cv2, "imdecode", no_decoding)
    response = generate(client, png_header_only(20000, 20000), speech)
    assert_error(response, 413, "image_too_large")
    assert "20000x20000" in response.get_json()["error"]["message"]


def test_tiny_image_with_a_box_needs_no_detector(client, speech):
    response = generate(client, tiny_png(16), speech, box=[0, 16, 0, 16])
    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["width"], response.get_json()["height"]) == (16, 16)


# -- speech --------------------------------------------------------------------------------

BAD_AUDIO = {
    # name: (builder(valid wav) -> bytes, status, code)
    "zero_length_wav": (lambda wav: empty_wav(), 415, "unsupported_audio"),
    "header_only": (lambda wav: wav[:44], 415, "unsupported_audio"),
    "nan_sample": (lambda wav: with_sample(np.nan), 415, "unsupported_audio"),
    "inf_sample": (lambda wav: with_sample(np.inf), 415, "unsupported_audio"),
    "zero_bits_per_sample": (lambda wav: patched_wav(wav, 14, "<H", 0), 415, "unsupported_audio"),
    "zero_channels": (lambda wav: patched_wav(wav, 2, "<H", 0), 415, "unsupported_audio"),
    "65535_channels": (lambda wav: patched_wav(wav, 2, "<H", 65535), 415, "unsupported_audio"),
    "unknown_format_code": (
        lambda wav: patched_wav(wav, 0, "<H", 0x1234),
        415,
        "unsupported_audio",
    ),
    "rate_0": (lambda wav: patched_wav(wav, 4, "<I", 0), 415, "unsupported_audio"),
    # Outside audio.py's own decoding range (4 kHz..384 kHz): undecodable, 415.
    "rate_1": (lambda wav: patched_wav(wav, 4, "<I", 1), 415, "unsupported_audio"),
    # Decodable, but outside the service's accepted range (8 kHz..192 kHz): 422.
    "rate_4000": (lambda wav: patched_wav(wav, 4, "<I", 4000), 422, "unsupported_sample_rate"),
    "rate_200000": (
        lambda wav: patched_wav(wav, 4, "<I", 200_000),
        422,
        "unsupported_sample_rate",
    ),
    "image_bytes": (lambda wav: (ASSETS / "face.jpg").read_bytes(), 415, "unsupported_audio"),
    "riff_without_data": (lambda wav: b"RIFF\0\0\0\0WAVEjunk", 415, "unsupported_audio"),
}


@pytest.mark.parametrize("name", list(BAD_AUDIO))
def test_bad_audio(client, face_jpeg, speech, name):
    build, status, code = BAD_AUDIO[name]
    assert_error(generate(client, face_jpeg, build(speech)), status, code)


@pytest.mark.parametrize(
    ("name", "build"),
    [
        # libsndfile reads the frames that are there and ignores the claimed sizes.
        ("data_chunk_claims_100_MB", lying_data_size),
        ("riff_size_claims_4_GB", lying_riff_size),
    ],
)
def test_wav_with_lying_sizes_reads_what_is_there(client, face_jpeg, speech, name, build):
    response = generate(client, face_jpeg, build(speech))
    assert response.status_code == 200, response.get_json()
    payload = response.get_json()
    assert (payload["num_frames"], payload["duration"]) == (SPEECH_FRAMES, SPEECH_SECONDS)


@pytest.mark.parametrize("rate", [8000, 11025, 44100, 96000, 192000])
def test_any_accepted_rate_is_resampled(client, face_jpeg, rate):
    response = generate(client, face_jpeg, wav_bytes(SPEECH_SECONDS, rate))
    assert response.status_code == 200, response.get_json()
    payload = response.get_json()
    assert (payload["num_frames"], payload["duration"]) == (SPEECH_FRAMES, SPEECH_SECONDS)


def test_too_short_speech_is_422(client, face_jpeg):
    assert_error(generate(client, face_jpeg, wav_bytes(0.02)), 422, "audio_too_short")


# -- fields --------------------------------------------------------------------------------

BAD_FIELDS = [
    # (overrides, code, field)
    ({"fps": "x"}, "invalid_field", "fps"),
    ({"fps": 1e308}, "invalid_field", "fps"),
    ({"fps": 61}, "invalid_field", "fps"),
    ({"fps": 0}, "invalid_field", "fps"),
    ({"fps": -25}, "invalid_field", "fps"),
    ({"fps": "NaN"}, "invalid_field", "fps"),
    ({"fps": "inf"}, "invalid_field", "fps"),
    ({"fps": True}, "invalid_field", "fps"),
    ({"fps": [25]}, "invalid_field", "fps"),
    ({"pads": "abc"}, "invalid_field", "pads"),
    ({"pads": [1, 2]}, "invalid_field", "pads"),
    ({"pads": [1.5, 0, 0, 0]}, "invalid_field", "pads"),
    ({"pads": [0, -1, 0, 0]}, "invalid_field", "pads"),
    ({"pads": [True, 0, 0, 0]}, "invalid_field", "pads"),
    ({"pads": {"a": 1}}, "invalid_field", "pads"),
    ({"pads": 5}, "invalid_field", "pads"),
    ({"box": {"a": 1}}, "invalid_field", "box"),
    ({"box": [1, 2, 3]}, "invalid_field", "box"),
    ({"box": "abc"}, "invalid_field", "box"),
    ({"box": [1.5, 2, 3, 4]}, "invalid_field", "box"),
    ({"box": ["1", "2", "3", "4"]}, "invalid_field", "box"),
    ({"smooth": "yes"}, "invalid_field", "smooth"),
    ({"smooth": 2}, "invalid_field", "smooth"),
    ({"smooth": []}, "invalid_field", "smooth"),
    ({"model": 5}, "invalid_field", "model"),
    ({"model": "wav3lip"}, "invalid_field", "model"),
    ({"model": ["wav2lip"]}, "invalid_field", "model"),
    ({"format": "avi"}, "invalid_field", "format"),
    ({"format": []}, "invalid_field", "format"),
    ({"format": 0}, "invalid_field", "format"),
    ({"format": False}, "invalid_field", "format"),
    ({"response": 5}, "invalid_field", "response"),
    ({"response": "xml"}, "invalid_field", "response"),
    ({"image": 123}, "invalid_field", "image"),
    ({"image": [1, 2]}, "invalid_field", "image"),
    ({"image": {"a": 1}}, "invalid_field", "image"),
    ({"image": None}, "missing_field", "image"),
    ({"image": ""}, "missing_field", "image"),
    ({"image": "not base64!"}, "invalid_base64", "image"),
    ({"image": "AAA"}, "invalid_base64", "image"),
    ({"image": "data:image/png,abc"}, "invalid_base64", "image"),
    ({"image": "data:image/png;base64"}, "invalid_base64", "image"),
    ({"image": "data:image/png;base64,@@@@"}, "invalid_base64", "image"),
    ({"audio": None}, "missing_field", "audio"),
    ({"audio": ""}, "missing_field", "audio"),
    ({"audio": 12}, "invalid_field", "audio"),
    ({"audio": "%%%%"}, "invalid_base64", "audio"),
    ({"avatar_id": 12, "image": None}, "invalid_avatar_id", "avatar_id"),
    ({"avatar_id": "ABC", "image": None}, "invalid_avatar_id", "avatar_id"),
    ({"avatar_id": "../" * 10 + "ab", "image": None}, "invalid_avatar_id", "avatar_id"),
    ({"avatar_id": ["a"], "image": None}, "invalid_avatar_id", "avatar_id"),
]


@pytest.mark.parametrize(("overrides", "code", "field"), BAD_FIELDS, ids=repr)
def test_wrong_field_is_400_naming_it(client, face_jpeg, speech, overrides, code, field):
    assert_error(generate(client, face_jpeg, speech, **overrides), 400, code, field)


@pytest.mark.parametrize(
    ("form", "code", "field"),
    [
        ({"fps": "x"}, "invalid_field", "fps"),
        ({"fps": "1e308"}, "invalid_field", "fps"),
        ({"pads": "abc"}, "invalid_field", "pads"),
        ({"pads": "1,2"}, "invalid_field", "pads"),
        ({"pads": "[1.5,0,0,0]"}, "invalid_field", "pads"),
        ({"pads": "0,-1,0,0"}, "invalid_field", "pads"),
        ({"box": "1,2,3"}, "invalid_field", "box"),
        ({"box": "{}"}, "invalid_field", "box"),
        ({"smooth": "yes"}, "invalid_field", "smooth"),
        ({"model": "5"}, "invalid_field", "model"),
        ({"format": "avi"}, "invalid_field", "format"),
        ({"response": "xml"}, "invalid_field", "response"),
        ({"avatar_id": "12"}, "invalid_avatar_id", "avatar_id"),
    ],
    ids=repr,
)
def test_wrong_form_field_is_400_naming_it(client, face_jpeg, speech, form, code, field):
    data = {
        "image": (io.BytesIO(face_jpeg), "face.jpg"),
        "audio": (io.BytesIO(speech), "speech.wav"),
        **form,
    }
    response = client.post("/api/generate", data=data, content_type="multipart/form-data")
    assert_error(response, 400, code, field)


@pytest.mark.parametrize(
    "box",
    [
        [0, 600, 0, 100],  # below the image
        [180, 50, 165, 280],  # top below bottom
        [50, 50, 165, 165],  # empty
        [-10, 100, 0, 100],  # negative
        [0, 2**63, 0, 10],  # beyond int64
    ],
)
def test_box_that_does_not_fit_the_image_is_422(client, face_jpeg, speech, box):
    response = generate(client, face_jpeg, speech, box=box)
    assert_error(response, 422, "invalid_input")
    assert "box" in response.get_json()["error"]["message"]


# -- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"", "application/json"),
        (b"", None),
        (b"[1, 2]", "application/json"),
        (b'"image"', "application/json"),
        (b"null", "application/json"),
        (b"42", "application/json"),
        (b"{not json", "application/json"),
        (b'{"image": "AAAA"}', "text/plain"),
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("path", ["/api/generate", "/api/avatars"])
def test_body_that_is_not_an_object_is_400(client, path, data, content_type):
    response = client.post(path, data=data, content_type=content_type)
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("path", ["/api/generate", "/api/avatars"])
def test_multipart_without_files_is_400(client, path):
    response = client.post(path, data={"fps": "25"}, content_type="multipart/form-data")
    assert_error(response, 400, "missing_field", "image")
    empty = {"image": (io.BytesIO(b""), "face.jpg"), "audio": (io.BytesIO(b""), "a.wav")}
    response = client.post(path, data=empty, content_type="multipart/form-data")
    assert_error(response, 400, "missing_field", "image")


def test_multipart_without_audio_is_400(client, face_jpeg):
    data = {"image": (io.BytesIO(face_jpeg), "face.jpg")}
    response = client.post("/api/generate", data=data, content_type="multipart/form-data")
    assert_error(response, 400, "missing_field", "audio")


def test_urlencoded_non_base64_media_is_400(client):
    response = client.post(
        "/api/generate",
        data={"image": "not base64!", "audio": "AAAA"},
        content_type="application/x-www-form-urlencoded",
    )
    assert_error(response, 400, "invalid_base64", "image")


# -- nothing is kept from a refused registration -------------------------------------------


def test_refused_registrations_leave_nothing_on_disk(untrained_models, tmp_path, speech):
    avatar_dir = tmp_path / "avatars"
    client = create_app(
        {"models_dir": untrained_models, "cache_dir": None, "avatar_dir": avatar_dir}
    ).test_client()
    statuses = []
    for build, _, _ in BAD_FACES.values():
        statuses.append(client.post("/api/avatars", json={"image": b64(build())}).status_code)
    face_fields = {"image", "fps", "pads", "box", "smooth", "model"}
    for overrides, _, field in BAD_FIELDS:
        if field in face_fields:
            body = {"image": b64(face_png()), "box": list(FACE_BOX), **overrides}
            body = {k: v for k, v in body.items() if v is not None}
            statuses.append(client.post("/api/avatars", json=body).status_code)
    outside = {"image": b64(face_png()), "box": [0, 600, 0, 10]}
    statuses.append(client.post("/api/avatars", json=outside).status_code)
    assert all(status >= 400 for status in statuses), statuses
    assert sorted(p.name for p in avatar_dir.iterdir()) == []
    assert client.get("/api/avatars").get_json() == {"avatars": []}


# -- bodies that once reached a 500 --------------------------------------------------------
# An integer beyond float range in a number field raised OverflowError, and JSON nested
# deeper than the parser's recursion limit (in the body, or in a form's `pads`/`box` text)
# raised RecursionError, which Werkzeug's silent get_json does not catch.

DEEP = 100_000


@pytest.mark.parametrize("path", ["/api/generate", "/api/avatars"])
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"fps": 10**400}, "fps"),
        ({"fps": -(10**400)}, "fps"),
        ({"fps": "1e400"}, "fps"),
        ({"fps": "1" + "0" * 400}, "fps"),
        ({"pads": [0, -(10**30), 0, 0]}, "pads"),
        ({"box": "0," + "9" * 5000 + ",0,10"}, "box"),
    ],
    ids=repr,
)
def test_numbers_beyond_range_are_400(client, face_jpeg, speech, path, overrides, field):
    body = {"image": b64(face_jpeg), "audio": b64(speech), "box": list(FACE_BOX), **overrides}
    assert_error(client.post(path, json=body), 400, "invalid_field", field)


def test_box_beyond_any_image_is_422(client, face_jpeg, speech):
    response = generate(client, face_jpeg, speech, box=[0, 10**30, 0, 10])
    assert_error(response, 422, "invalid_input", "box")


@pytest.mark.parametrize("path", ["/api/generate", "/api/avatars"])
@pytest.mark.parametrize(
    "data",
    [
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        b'{"image": "AAAA", "extra": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"fps": "\xff\xfe"}',  # not UTF-8
        b'{"fps": 1' + b"0" * 5000 + b"}",  # beyond Python's integer-digits limit
    ],
    ids=["deep_array", "deep_object", "deep_field", "not_utf8", "5000_digits"],
)
def test_json_the_parser_cannot_read_is_400(client, path, data):
    response = client.post(path, data=data, content_type="application/json")
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_json_literals_are_400(client, face_jpeg, speech, literal):
    body = b'{"image": "%s", "audio": "%s", "fps": %s}' % (
        b64(face_jpeg).encode(),
        b64(speech).encode(),
        literal,
    )
    response = client.post("/api/generate", data=body, content_type="application/json")
    assert_error(response, 400, "invalid_field", "fps")


@pytest.mark.parametrize("field", ["pads", "box"])
@pytest.mark.parametrize(
    "text", ["[" * DEEP + "]" * DEEP, "0," + "9" * 5000 + ",0,0"], ids=["deep", "5000_digits"]
)
def test_form_lists_the_parser_cannot_read_are_400(client, face_jpeg, speech, field, text):
    data = {
        "image": (io.BytesIO(face_jpeg), "face.jpg"),
        "audio": (io.BytesIO(speech), "speech.wav"),
        field: text,
    }
    response = client.post("/api/generate", data=data, content_type="multipart/form-data")
    assert_error(response, 400, "invalid_field", field)


@pytest.mark.parametrize("field", ["fps", "pads", "smooth", "model", "avatar_id", "response"])
def test_a_file_where_text_belongs_is_400(client, face_jpeg, speech, field):
    data = {
        "image": (io.BytesIO(face_jpeg), "face.jpg"),
        "audio": (io.BytesIO(speech), "speech.wav"),
        field: (io.BytesIO(b"25"), "value.txt"),
    }
    response = client.post("/api/generate", data=data, content_type="multipart/form-data")
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["field"] == field
