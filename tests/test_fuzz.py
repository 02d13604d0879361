"""Property-based fuzzing of the live gunicorn server from its own OpenAPI document.

Schemathesis generates valid and invalid requests for every operation (JSON, multipart
and urlencoded bodies, path and header parameters) and checks each answer: never a 5xx,
a documented status code, content type, headers (X-Request-ID on every answer) and body
schema, and that invalid data is refused with a 4xx. A second part posts mutated real
files (truncated, bytes flipped, extreme integers in headers) where random bytes never get:
the image, video and audio decoders and the face detector.

Bounded: a fixed number of examples per test (LIPSYNC_FUZZ_EXAMPLES, default 50),
deterministic (the same cases on every run), no example database on disk. Generated media
are junk or tiny (schemathesis makes 1x1 PNGs for file fields) and the mutated seeds are
64x64 images, 4-frame clips and 0.3 s of speech, so a request does little work; the
server's own limits (body size, pixels, frames, seconds) bound the rest. About 40 s.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import time

import cv2
import numpy as np
import pytest
import schemathesis
import soundfile as sf
from helpers import ASSETS, FACE_BOX, b64, make_clip, wav_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lipsync.server import openapi

# Per operation and generation phase; LIPSYNC_FUZZ_EXAMPLES=500 for a deeper run, and
# LIPSYNC_FUZZ_RANDOM=1 for new cases on every run (else the same cases each time).
MAX_EXAMPLES = int(os.environ.get("LIPSYNC_FUZZ_EXAMPLES", "50"))
DETERMINISTIC = os.environ.get("LIPSYNC_FUZZ_RANDOM", "") in ("", "0")
REQUEST_TIMEOUT_S = 30
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

pytestmark = pytest.mark.slow


# Built from the spec module at collection (the live server's port is not known yet);
# test_served_spec_matches_the_module checks that the server serves this very document.
# (`schemathesis.pytest.from_fixture`, which would load the served one, fails under
# pytest 9: it sets `Function._nodeid`, which pytest no longer has.)
# Hypothesis settings of the mutated-file tests: bounded, reproducible, no database on disk.
MUTATION_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=DETERMINISTIC,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
schema = schemathesis.openapi.from_dict(openapi.build_spec())
schema.config.update(request_timeout=REQUEST_TIMEOUT_S)
schema.config.generation.update(
    max_examples=MAX_EXAMPLES, deterministic=DETERMINISTIC, database="none"
)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])


@schema.parametrize()
@settings(
    deadline=None,
    max_examples=MAX_EXAMPLES,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
def test_api_conforms_to_its_spec(case, live_server):
    case.call_and_validate(base_url=live_server.url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)


def test_served_spec_matches_the_module(live_server):
    response = live_server.get("/openapi.json")
    assert response.status_code == 200
    served, built = response.json(), openapi.build_spec()
    assert {p: sorted(ops) for p, ops in served["paths"].items()} == {
        p: sorted(ops) for p, ops in built["paths"].items()
    }
    assert served["components"]["responses"] == built["components"]["responses"]


def test_successful_generation_conforms(live_server):
    """The one path random data cannot reach: a real 200, as JSON and as a binary file."""
    operation = schema["/api/generate"]["POST"]
    body = {
        "image": base64.b64encode((ASSETS / "face.jpg").read_bytes()).decode(),
        "audio": base64.b64encode(wav_bytes(0.3)).decode(),
        "box": list(FACE_BOX),
        "format": "mp4",
    }
    start = time.monotonic()
    for extra, headers in (({}, {}), ({"response": "binary"}, {"X-Request-ID": "fuzz-1"})):
        case = operation.Case(body={**body, **extra}, media_type="application/json")
        response = case.call_and_validate(
            base_url=live_server.url, checks=CHECKS, headers=headers, timeout=120
        )
        assert response.status_code == 200
        if headers:
            assert response.headers["content-type"] == ["video/mp4"]
            assert response.headers["x-request-id"] == ["fuzz-1"]
    assert time.monotonic() - start < 120


# -- mutated real media: the decoders' paths random bytes never reach ---------------------


def seed_media() -> dict[str, bytes]:
    """Small valid files of every kind the service decodes."""
    face = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (64, 64))
    clip, _ = make_clip("mp4", "libx264", num_frames=6, width=64, height=64)
    webm, _ = make_clip("webm", "libvpx-vp9", num_frames=4, width=64, height=64)
    wav = wav_bytes(0.3)
    return {
        "png": cv2.imencode(".png", face)[1].tobytes(),
        "jpeg": cv2.imencode(".jpg", face)[1].tobytes(),
        "mp4": clip,
        "webm": webm,
        "wav": wav,
        "float_wav": float_wav(0.3),
    }


def float_wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    samples = np.zeros(int(seconds * 16000), dtype=np.float32)
    sf.write(buf, samples, 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


EXTREMES = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` with a few structural mutations: cuts, flipped bytes, extreme integers."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "int", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip":
            out[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif kind == "int":
            value = draw(st.sampled_from(EXTREMES))
            order = draw(st.sampled_from(["<", ">"]))
            out[at : at + 4] = struct.pack(f"{order}I", value)
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del out[at : at + draw(st.integers(1, 64))]
    return bytes(out)


@pytest.fixture(scope="module")
def media() -> dict[str, bytes]:
    return seed_media()


@pytest.mark.parametrize(
    ("field", "kinds"),
    [("image", ["png", "jpeg", "mp4", "webm"]), ("audio", ["wav", "float_wav"])],
)
def test_mutated_media_never_break_the_server(live_server, media, field, kinds):
    """Mutated files as the face (with a box: no detector work) or as the speech: every
    answer is documented and not a 5xx."""
    operation = schema["/api/generate"]["POST"]
    valid = {"image": b64(media["png"]), "audio": b64(media["wav"]), "box": [8, 56, 8, 56]}

    @MUTATION_SETTINGS
    @given(data=st.data())
    def check(data):
        kind = data.draw(st.sampled_from(kinds), label="kind")
        payload = data.draw(mutated(media[kind]), label="payload")
        body = {**valid, field: b64(payload)}
        case = operation.Case(body=body, media_type="application/json")
        response = case.call_and_validate(
            base_url=live_server.url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S
        )
        assert response.status_code in (200, 400, 413, 415, 422), response.text

    check()


def test_mutated_faces_for_registration_never_break_the_server(live_server, media):
    """The same for registration without a box: the detector runs on whatever decodes."""
    operation = schema["/api/avatars"]["POST"]

    @MUTATION_SETTINGS
    @given(data=st.data())
    def check(data):
        kind = data.draw(st.sampled_from(["png", "jpeg", "mp4", "webm"]), label="kind")
        payload = data.draw(mutated(media[kind]), label="payload")
        case = operation.Case(body={"image": b64(payload)}, media_type="application/json")
        response = case.call_and_validate(
            base_url=live_server.url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S
        )
        assert response.status_code in (200, 201, 400, 413, 415, 422), response.text

    check()
