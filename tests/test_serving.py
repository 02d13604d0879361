"""The serving layer on its own: the face of a request and the options every transport
builds the same way (lipsync/serving/)."""

from __future__ import annotations

import pytest

from lipsync.errors import ErrorCode, InvalidFieldError, InvalidInputError, NotFoundError
from lipsync.options import RenderOptions
from lipsync.serving.engine import build_store
from lipsync.serving.faces import resolve_face
from lipsync.serving.options import SERVER_DEFAULTS, render_options, server_defaults
from lipsync.serving.payloads import decode_base64
from lipsync.settings import Settings

SETTINGS = Settings(avatar_dir=None, cache_dir=None)


def no_engine():
    raise AssertionError("these requests are refused before any detection")


@pytest.fixture
def store():
    return build_store(SETTINGS, no_engine, registered=False)


def test_a_request_names_exactly_one_face(store):
    with pytest.raises(InvalidFieldError) as both:
        resolve_face(store, RenderOptions(), avatar_id="0" * 32, face=b"image bytes")
    assert both.value.field == "avatar_id" and "image" in both.value.message
    with pytest.raises(InvalidFieldError) as neither:
        resolve_face(store, RenderOptions())
    assert neither.value.code is ErrorCode.MISSING_FIELD
    with pytest.raises(NotFoundError) as unknown:
        resolve_face(store, RenderOptions(), avatar_id="0" * 32)
    assert (unknown.value.code, unknown.value.field) == (ErrorCode.AVATAR_NOT_FOUND, "avatar_id")


def test_render_options_are_the_fields_over_the_server_defaults():
    server = Settings(default_quality="high", default_blend="none", fill_missing_faces=True)
    assert render_options(server) == RenderOptions(
        quality="high", blend="none", fill_missing_faces=True
    )
    given = render_options(server, fps=30, pads=[1, 2, 3, 4], blend="soft", audio=b"x", box=None)
    assert given == RenderOptions(
        fps=30, pads=(1, 2, 3, 4), quality="high", blend="soft", fill_missing_faces=True
    )
    with pytest.raises(InvalidFieldError, match="fps"):
        render_options(server, fps=0.5)
    assert set(server_defaults(server)) == set(SERVER_DEFAULTS)
    assert server_defaults(server)["quality"] == "high"


@pytest.mark.parametrize(
    ("text", "data"),
    [("aGk=", b"hi"), (" aG\nk= ", b"hi"), ("data:image/png;base64,aGk=", b"hi"), ("", b"")],
)
def test_base64_is_read_one_way(text, data):
    assert decode_base64(text) == data


@pytest.mark.parametrize("text", ["@@@", "aGk", "data:image/png,aGk="])
def test_bad_base64_is_invalid_base64(text):
    with pytest.raises(InvalidInputError) as caught:
        decode_base64(text)
    assert caught.value.code is ErrorCode.INVALID_BASE64
