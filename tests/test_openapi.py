"""The OpenAPI document stays true: valid, every route, every error code, real responses.

Responses are made by the real app (Flask's test client, untrained models) and validated
against the document's response schemas and headers, status by status.
"""

from __future__ import annotations

import base64
import io
import json
import re

import cv2
import pytest
from helpers import ASSETS, FACE_BOX, ROOT, b64, wav_bytes
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from lipsync.errors import ErrorCode
from lipsync.server import openapi
from lipsync.server.app import create_app


@pytest.fixture(scope="module")
def spec() -> dict:
    return openapi.build_spec()


@pytest.fixture(scope="module")
def app(untrained_models, tmp_path_factory):
    return create_app(
        {
            "models_dir": untrained_models,
            "cache_dir": None,
            "avatar_dir": tmp_path_factory.mktemp("openapi-avatars"),
        }
    )


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def face_b64() -> str:
    return b64((ASSETS / "face.jpg").read_bytes())


@pytest.fixture(scope="module")
def small_face() -> bytes:
    image = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (128, 128))
    return cv2.imencode(".png", image)[1].tobytes()


# -- helpers -------------------------------------------------------------------------------


def deref(spec: dict, node: dict) -> dict:
    """Follow local `$ref`s (`#/a/b`) until a real object."""
    while isinstance(node, dict) and "$ref" in node:
        target = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def validate_against(spec: dict, schema: dict, instance) -> None:
    """Validate with the OAS 3.1 dialect; `#/components/...` refs resolve in the spec."""
    OAS31Validator({**schema, "components": spec["components"]}).validate(instance)


def check(spec: dict, response, path: str, method: str) -> dict | None:
    """Assert that a real response is what the spec documents for this operation."""
    operation = spec["paths"][path][method]
    documented = operation["responses"]
    status = str(response.status_code)
    assert status in documented, (
        f"{method.upper()} {path} answered {status}, documented: {sorted(documented)}: "
        f"{response.get_data(as_text=True)[:300]}"
    )
    definition = deref(spec, documented[status])
    for name, header in definition.get("headers", {}).items():
        header = deref(spec, header)
        value = response.headers.get(name)
        if value is None:
            assert not header.get("required"), f"{method.upper()} {path} {status}: no {name}"
            continue
        header_schema = header["schema"]
        typed = {"integer": int, "number": float}.get(header_schema.get("type"), str)(value)
        validate_against(spec, header_schema, typed)
    content = definition.get("content", {})
    if not content:
        return None
    mimetype = response.mimetype
    assert mimetype in content, f"{method.upper()} {path} {status}: {mimetype} not in {content}"
    schema = content[mimetype]["schema"]
    if mimetype == "application/json":
        payload = response.get_json()
        validate_against(spec, schema, payload)
        return payload
    if mimetype.startswith("text/"):
        validate_against(spec, schema, response.get_data(as_text=True))
    else:  # a binary file (format: binary)
        assert schema.get("format") == "binary" and response.get_data()
    return None


def flask_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[-1] == "static":  # files: the app's, Swagger UI's
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def spec_operations(spec: dict) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
    return {(path, m) for path, item in spec["paths"].items() for m in item if m in methods}


def readme_error_table() -> dict[str, int]:
    """code -> status from the README's error table."""
    text = (ROOT / "README.md").read_text()
    table = {}
    for line in text.splitlines():
        match = re.match(r"^\|\s*(\d{3})\s*\|([^|]*)\|", line)
        if match:
            for code in re.findall(r"`([a-z][a-z0-9_]*)`", match.group(2)):
                table[code] = int(match.group(1))
    return table


def spec_enum_values(node) -> set[str]:
    """Every string in an `enum` or `examples` anywhere in the document."""
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("enum", "examples") and isinstance(value, list):
                out |= {v for v in value if isinstance(v, str)}
            else:
                out |= spec_enum_values(value)
    elif isinstance(node, list):
        for value in node:
            out |= spec_enum_values(value)
    return out


# -- the document itself -------------------------------------------------------------------


def test_spec_is_valid_openapi_3_1(spec):
    validate_spec(spec)
    assert spec["openapi"].startswith("3.1")
    json.dumps(spec)  # JSON-ready


def test_spec_builds_without_an_app_and_with_settings():
    from lipsync.settings import Settings

    spec = openapi.build_spec(Settings(max_body_mb=7))
    assert "body 7 MB" in spec["paths"]["/api/generate"]["post"]["description"]


def test_every_flask_route_is_documented_and_nothing_else(app, spec):
    assert flask_routes(app) == spec_operations(spec)


def test_spec_error_codes_are_exactly_the_enum(spec):
    documented = spec_enum_values(spec["components"]["schemas"]["ErrorDetail"])
    assert documented == {member.code for member in ErrorCode}
    by_status = {
        int(name.removeprefix("Error")): set(spec_enum_values(response))
        for name, response in spec["components"]["responses"].items()
    }
    assert by_status == {
        status: {c.code for c in codes} for status, codes in ErrorCode.answered().items()
    }
    # Werkzeug's own errors are named after their status text.
    for code in ("not_found", "method_not_allowed", "payload_too_large"):
        assert code in spec_enum_values(spec)


def test_readme_error_table_agrees_with_the_spec():
    table = readme_error_table()
    assert len(table) >= 10, "README error table not found"
    for code, status in table.items():
        assert ErrorCode.from_code(code).status == status, f"README: {status} {code}"


def test_served_spec_is_build_spec(client, spec):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(spec))
    check(spec, response, "/openapi.json", "get")


# -- real responses against the document ---------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/health", "/health/live", "/health/ready", "/metrics"])
def test_simple_gets_conform(client, spec, path):
    response = client.get(path)
    assert response.status_code in (200, 503)
    check(spec, response, path, "get")


def test_request_id_is_echoed(client, spec):
    response = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    fresh = client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(openapi.REQUEST_ID_PATTERN, fresh.headers["X-Request-ID"])
    assert fresh.headers["X-Request-ID"] != "bad id with spaces"


def test_generate_json_and_binary_conform(client, spec, face_b64):
    body = {"image": face_b64, "audio": b64(wav_bytes(0.3)), "box": list(FACE_BOX)}
    response = client.post("/api/generate", json=body)
    payload = check(spec, response, "/api/generate", "post")
    assert response.status_code == 200 and payload["success"] is True
    assert base64.b64decode(payload["video"])[:4] == b"\x1a\x45\xdf\xa3"  # EBML (WebM)

    binary = client.post("/api/generate", json=body, headers={"Accept": "video/mp4"})
    assert binary.status_code == 200 and binary.mimetype == "video/mp4"
    check(spec, binary, "/api/generate", "post")
    assert int(binary.headers["X-Num-Frames"]) == payload["num_frames"]

    form = {
        "image": (io.BytesIO(base64.b64decode(face_b64)), "face.jpg"),
        "audio": (io.BytesIO(wav_bytes(0.3)), "a.wav"),
        "box": ",".join(map(str, FACE_BOX)),
        "response": "binary",
        "format": "webm",
    }
    multipart = client.post("/api/generate", data=form, content_type="multipart/form-data")
    assert multipart.status_code == 200 and multipart.mimetype == "video/webm"
    check(spec, multipart, "/api/generate", "post")


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"fps": "x"}, 400, "invalid_field"),
        ({"image": "%%%"}, 400, "invalid_base64"),
        ({"image": None}, 400, "missing_field"),
        ({"avatar_id": "NOT-AN-ID", "image": None}, 400, "invalid_avatar_id"),
        ({"avatar_id": "0" * 32, "image": None}, 404, "avatar_not_found"),
        ({"image": b64(b"plain text")}, 415, "unsupported_media"),
        ({"audio": b64(b"RIFF\0\0\0\0WAVEjunk")}, 415, "unsupported_audio"),
        ({"box": [0, 600, 0, 100]}, 422, "invalid_input"),
    ],
)
def test_generate_errors_conform(client, spec, face_b64, payload, status, code):
    body = {"image": face_b64, "audio": b64(wav_bytes(0.3)), "box": list(FACE_BOX), **payload}
    response = client.post("/api/generate", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == status, response.get_json()
    assert check(spec, response, "/api/generate", "post")["error"]["code"] == code


def test_avatar_lifecycle_conforms(client, spec, small_face):
    body = {"image": b64(small_face), "box": [20, 100, 20, 100]}
    created = client.post("/api/avatars", json=body)
    assert created.status_code == 201, created.get_json()
    avatar_id = check(spec, created, "/api/avatars", "post")["avatar_id"]
    again = client.post("/api/avatars", json=body)
    assert again.status_code == 200
    check(spec, again, "/api/avatars", "post")

    listing = client.get("/api/avatars")
    assert avatar_id in [
        a["avatar_id"] for a in check(spec, listing, "/api/avatars", "get")["avatars"]
    ]
    one = client.get(f"/api/avatars/{avatar_id}")
    assert check(spec, one, "/api/avatars/{avatar_id}", "get")["avatar_id"] == avatar_id
    deleted = client.delete(f"/api/avatars/{avatar_id}")
    assert check(spec, deleted, "/api/avatars/{avatar_id}", "delete")["deleted"] is True

    for method in ("get", "delete"):
        gone = client.open(f"/api/avatars/{avatar_id}", method=method.upper())
        assert gone.status_code == 404
        check(spec, gone, "/api/avatars/{avatar_id}", method)
        bad = client.open("/api/avatars/XYZ", method=method.upper())
        assert bad.status_code == 400
        assert check(spec, bad, "/api/avatars/{avatar_id}", method)["error"]["code"] == (
            "invalid_avatar_id"
        )

    refused = client.post("/api/avatars", json={"image": b64(b"GIF89a" + b"\0" * 40)})
    assert refused.status_code == 415
    check(spec, refused, "/api/avatars", "post")


def test_method_not_allowed_matches_the_component(client, spec):
    response = client.get("/api/generate")
    assert response.status_code == 405
    schema = deref(spec, spec["components"]["responses"]["Error405"])["content"]
    validate_against(spec, schema["application/json"]["schema"], response.get_json())


def test_payload_too_large_conforms(untrained_models, spec, face_b64):
    client = create_app(
        {"models_dir": untrained_models, "cache_dir": None, "avatar_dir": None, "max_body_mb": 0.01}
    ).test_client()
    response = client.post("/api/generate", json={"image": face_b64, "audio": "AAAA"})
    assert response.status_code == 413
    check(spec, response, "/api/generate", "post")


def test_missing_models_conform(tmp_path, spec, face_b64):
    client = create_app(
        {"models_dir": tmp_path, "cache_dir": None, "avatar_dir": None}
    ).test_client()
    health = client.get("/health")
    assert health.status_code == 503
    check(spec, health, "/health", "get")
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    check(spec, ready, "/health/ready", "get")
    body = {"image": face_b64, "audio": b64(wav_bytes(0.3)), "box": list(FACE_BOX)}
    response = client.post("/api/generate", json=body)
    assert response.status_code == 503
    assert check(spec, response, "/api/generate", "post")["error"]["code"] == "model_unavailable"


def test_api_key_errors_conform(untrained_models, spec):
    client = create_app(
        {"models_dir": untrained_models, "cache_dir": None, "avatar_dir": None, "api_key": "s3cret"}
    ).test_client()
    for path, method in sorted(spec_operations(spec)):
        response = client.open(path.replace("{avatar_id}", "0" * 32), method=method.upper())
        if spec["paths"][path][method]["security"] == []:  # public: /health/live
            assert response.status_code == 200, path
        else:
            assert response.status_code == 401, path
            assert response.get_json()["error"]["code"] == "unauthorized"
        check(spec, response, path, method)
    assert client.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/avatars", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/api/avatars", headers={"X-API-Key": "wrong"}).status_code == 401


def test_overloaded_and_timeout_conform(untrained_models, spec, face_b64):
    body = {"image": face_b64, "audio": b64(wav_bytes(0.3)), "box": list(FACE_BOX)}
    app = create_app(
        {
            "models_dir": untrained_models,
            "cache_dir": None,
            "avatar_dir": None,
            "max_concurrent": 1,
            "max_queue": 0,
        }
    )
    service = app.extensions["lipsync"]
    with service.admission.slot():  # the only slot is taken: the next request is refused
        response = app.test_client().post("/api/generate", json=body)
    assert response.status_code == 503
    assert check(spec, response, "/api/generate", "post")["error"]["code"] == "overloaded"
    assert int(response.headers["Retry-After"]) >= 0

    slow = create_app(
        {
            "models_dir": untrained_models,
            "cache_dir": None,
            "avatar_dir": None,
            "request_timeout_s": 1e-9,
        }
    ).test_client()
    response = slow.post("/api/generate", json=body)
    assert response.status_code == 504
    assert check(spec, response, "/api/generate", "post")["error"]["code"] == "timeout"


def test_json_error_bodies_name_their_field(client, spec, face_b64):
    response = client.post("/api/generate", json={"image": face_b64, "audio": b64(b"x"), "fps": 0})
    payload = check(spec, response, "/api/generate", "post")
    assert payload["error"]["field"] == "fps"


def test_degraded_health_names_the_models_missing_code(spec):
    # schemas.HealthError spells the code as a literal (mypy cannot read an enum's value).
    code = spec["components"]["schemas"]["HealthError"]["properties"]["code"]
    assert code["const"] == ErrorCode.MODELS_MISSING.code
