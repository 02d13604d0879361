"""The request models (lipsync/server/schemas.py) on their own: each field's accepted forms,
each refusal's error code and field, and the form schemas derived from the same model."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from lipsync.errors import ErrorCode, InvalidFieldError
from lipsync.options import DEFAULT_PADS, RenderOptions
from lipsync.server import openapi
from lipsync.server.parsing import field_error, validate
from lipsync.server.schemas import GenerateRequest, RegisterAvatarRequest
from lipsync.settings import Settings

FACE = b"\x89PNG fake face"
SPEECH = b"RIFF fake speech"
REQUIRED = {"image": base64.b64encode(FACE).decode(), "audio": base64.b64encode(SPEECH).decode()}


def parsed(**fields) -> GenerateRequest:
    return validate(GenerateRequest, {**REQUIRED, **fields})


def refusal(schema=GenerateRequest, /, **fields) -> InvalidFieldError:
    with pytest.raises(InvalidFieldError) as caught:
        validate(schema, {**REQUIRED, **fields})
    return caught.value


@pytest.mark.parametrize(
    ("field", "given", "value"),
    [
        ("fps", 30, 30.0),
        ("fps", 29.97, 29.97),
        ("fps", "25", 25.0),
        ("fps", " 12.5 ", 12.5),
        ("fps", None, None),
        ("pads", [0, 10, 0, 0], [0, 10, 0, 0]),
        ("pads", "0,10,0,0", [0, 10, 0, 0]),
        ("pads", " [1, 2, 3, 4] ", [1, 2, 3, 4]),
        ("box", [50, 180, 165, 280], [50, 180, 165, 280]),
        ("box", "50,180,165,280", [50, 180, 165, 280]),
        ("box", "", None),
        ("box", "null", None),
        ("box", [-5, 10, 0, 10], [-5, 10, 0, 10]),  # the image decides (422 invalid_input)
        ("smooth", True, True),
        ("smooth", "false", False),
        ("smooth", "TRUE", True),
        ("smooth", "0", False),
        ("smooth", "1", True),
        ("model", "wav2lip_gan", "wav2lip_gan"),
        ("format", "mp4", "mp4"),
        ("response", "binary", "binary"),
    ],
    ids=repr,
)
def test_accepted_forms(field, given, value):
    assert getattr(parsed(**{field: given}), field) == value


def test_an_avatar_id_alone_names_the_face():
    request = validate(GenerateRequest, {"audio": REQUIRED["audio"], "avatar_id": "0" * 32})
    assert request.avatar_id == "0" * 32 and request.face is None


@pytest.mark.parametrize(
    ("schema", "fields", "named"),
    [
        (GenerateRequest, {"avatar_id": "0" * 32}, ("avatar_id", "image")),
        (GenerateRequest, {"video": REQUIRED["image"]}, ("image", "video")),
        (RegisterAvatarRequest, {"video": REQUIRED["image"]}, ("image", "video")),
    ],
)
def test_two_faces_are_refused_naming_both(schema, fields, named):
    """A request naming two faces is ambiguous: 400 naming both, never one silently used."""
    error = refusal(schema, **fields)
    assert error.code is ErrorCode.INVALID_FIELD and error.field == named[0]
    assert all(name in error.message for name in named), error.message


@pytest.mark.parametrize(
    "given",
    [
        base64.b64encode(FACE).decode(),
        "data:image/png;base64," + base64.b64encode(FACE).decode(),
        " " + base64.b64encode(FACE).decode()[:8] + "\n" + base64.b64encode(FACE).decode()[8:],
        FACE,  # an uploaded file's bytes
    ],
    ids=["base64", "data_url", "with_whitespace", "upload"],
)
def test_media_forms(given):
    request = parsed(image=None, video=given)
    assert request.video == FACE and request.face == FACE


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"fps": "fast"}, ErrorCode.INVALID_FIELD, "fps"),
        ({"fps": True}, ErrorCode.INVALID_FIELD, "fps"),
        ({"fps": 0}, ErrorCode.INVALID_FIELD, "fps"),
        ({"fps": 60.5}, ErrorCode.INVALID_FIELD, "fps"),
        ({"fps": float("nan")}, ErrorCode.INVALID_FIELD, "fps"),
        ({"fps": 10**400}, ErrorCode.INVALID_FIELD, "fps"),
        ({"fps": [25]}, ErrorCode.INVALID_FIELD, "fps"),
        ({"pads": [0, 10, 0]}, ErrorCode.INVALID_FIELD, "pads"),
        ({"pads": [0, -1, 0, 0]}, ErrorCode.INVALID_FIELD, "pads"),
        ({"pads": [0.5, 1, 0, 0]}, ErrorCode.INVALID_FIELD, "pads"),
        ({"pads": [True, 1, 0, 0]}, ErrorCode.INVALID_FIELD, "pads"),
        ({"pads": "[" * 5000 + "]" * 5000}, ErrorCode.INVALID_FIELD, "pads"),
        ({"box": ["1", "2", "3", "4"]}, ErrorCode.INVALID_FIELD, "box"),
        ({"box": {"top": 1}}, ErrorCode.INVALID_FIELD, "box"),
        ({"smooth": "yes"}, ErrorCode.INVALID_FIELD, "smooth"),
        ({"smooth": 2}, ErrorCode.INVALID_FIELD, "smooth"),
        ({"model": "wav3lip"}, ErrorCode.INVALID_FIELD, "model"),
        ({"model": ["wav2lip"]}, ErrorCode.INVALID_FIELD, "model"),
        ({"format": "avi"}, ErrorCode.INVALID_FIELD, "format"),
        ({"format": False}, ErrorCode.INVALID_FIELD, "format"),
        ({"response": "xml"}, ErrorCode.INVALID_FIELD, "response"),
        ({"image": 12}, ErrorCode.INVALID_FIELD, "image"),
        ({"image": "not base64!"}, ErrorCode.INVALID_BASE64, "image"),
        ({"image": "data:image/png,abc"}, ErrorCode.INVALID_BASE64, "image"),
        ({"video": "AAA"}, ErrorCode.INVALID_BASE64, "video"),
        ({"audio": "%%%%"}, ErrorCode.INVALID_BASE64, "audio"),
        ({"image": None}, ErrorCode.MISSING_FIELD, "image"),
        ({"image": ""}, ErrorCode.MISSING_FIELD, "image"),
        ({"audio": None}, ErrorCode.MISSING_FIELD, "audio"),
        ({"image": None, "audio": None}, ErrorCode.MISSING_FIELD, "image"),
        ({"image": None, "avatar_id": "ABC"}, ErrorCode.INVALID_AVATAR_ID, "avatar_id"),
        ({"image": None, "avatar_id": 12}, ErrorCode.INVALID_AVATAR_ID, "avatar_id"),
    ],
    ids=repr,
)
def test_refusals_name_code_and_field(fields, code, field):
    error = refusal(**fields)
    assert (error.code, error.field) == (code, field)
    assert error.message.startswith(f"{field}: ")
    assert len(error.message) < 200  # values are quoted short


def test_an_avatar_id_stands_for_the_face():
    request = parsed(image=None, avatar_id="a" * 32)
    assert request.face is None and request.avatar_id == "a" * 32


def test_registration_needs_a_face_but_no_audio():
    assert validate(RegisterAvatarRequest, {"video": REQUIRED["image"]}).face == FACE
    error = refusal(RegisterAvatarRequest, image=None, audio=None)
    assert (error.code, error.field) == (ErrorCode.MISSING_FIELD, "image")


def test_unknown_fields_are_ignored():
    assert not hasattr(parsed(colour="blue"), "colour")


def test_render_options_take_defaults_for_what_is_not_given():
    assert parsed().render_options(Settings()) == RenderOptions()
    options = parsed(fps="30", pads="1,2,3,4", box="5,6,7,8", smooth="0", model="wav2lip_gan")
    assert options.render_options(Settings(fill_missing_faces=True)) == RenderOptions(
        fps=30.0,
        pads=(1, 2, 3, 4),
        box=(5, 6, 7, 8),
        smooth=False,
        model="wav2lip_gan",
        fill_missing_faces=True,
    )
    assert RenderOptions().pads == DEFAULT_PADS


def test_quality_and_blend_default_to_the_servers_settings():
    server = Settings(default_quality="original", default_blend="none")
    assert parsed().render_options(server) == RenderOptions(quality="original", blend="none")
    given = parsed(quality="high", blend="soft").render_options(server)
    assert (given.quality, given.blend) == ("high", "soft")


@pytest.mark.parametrize(
    ("field", "given", "value"),
    [
        ("quality", "original", "original"),
        ("blend", "none", "none"),
        ("silence_gate", "1", True),
        ("silence_gate", False, False),
        ("silence_threshold_db", "-70.5", -70.5),
        ("silence_threshold_db", -100, -100.0),
        ("silence_fade_frames", "5", 5),
        ("silence_fade_frames", 0, 0),
    ],
)
def test_output_quality_fields_reach_the_render_options(field, given, value):
    options = parsed(**{field: given}).render_options(Settings())
    assert getattr(options, field) == value


@pytest.mark.parametrize(
    ("field", "given"),
    [
        ("quality", "ultra"),
        ("blend", "hard"),
        ("silence_gate", "maybe"),
        ("silence_threshold_db", 5),
        ("silence_threshold_db", "-inf"),
        ("silence_fade_frames", 2.5),
        ("silence_fade_frames", True),
        ("silence_fade_frames", 26),
        ("silence_fade_frames", "three"),
    ],
)
def test_output_quality_fields_refuse_bad_values(field, given):
    error = refusal(**{field: given})
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, field)


def test_pydantic_errors_map_to_codes():
    with pytest.raises(ValidationError) as caught:
        GenerateRequest.model_validate("not a mapping")
    error = field_error(caught.value)
    assert error.code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("model", [GenerateRequest, RegisterAvatarRequest])
def test_every_field_is_documented_for_json_and_forms(model):
    """One model: the JSON schema and both form schemas name exactly its fields."""
    spec = openapi.build_spec()
    body = spec["paths"]["/api/generate" if model is GenerateRequest else "/api/avatars"]
    content = body["post"]["requestBody"]["content"]
    json_fields = set(spec["components"]["schemas"][model.__name__]["properties"])
    assert json_fields == set(model.model_fields)
    for kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        assert set(content[kind]["schema"]["properties"]) == set(model.model_fields)
    media = content["multipart/form-data"]["schema"]["properties"]["image"]
    assert media["format"] == "binary"
