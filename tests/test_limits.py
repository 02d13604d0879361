"""Every limit is declared once (lipsync/limits.py): the published schemas (`/openapi.json`,
`/api/stream/protocol.json`) show exactly the numbers the code enforces."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from lipsync.errors import InvalidFieldError
from lipsync.limits import (
    AUDIO_CHANNELS,
    AUDIO_SAMPLE_RATE_HZ,
    FACE_SIDES,
    FPS,
    JPEG_QUALITY,
    LEAD_MS,
    MIN_PAD,
    SILENCE_FADE_FRAMES,
    SILENCE_THRESHOLD_DB,
    Range,
)
from lipsync.options import RenderOptions
from lipsync.server.app import create_app
from lipsync.server.openapi import document
from lipsync.server.realtime import protocol as p
from lipsync.server.schemas import GenerateRequest
from lipsync.settings import Settings

BOUND_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
ITEM_KEYWORDS = ("minItems", "maxItems")

# (property, keyword) -> the enforced constant. A request limit comes from lipsync.limits.
LIMITS: dict[tuple[str, str], float] = {
    ("fps", "minimum"): FPS.minimum,
    ("fps", "maximum"): FPS.maximum,
    ("silence_threshold_db", "minimum"): SILENCE_THRESHOLD_DB.minimum,
    ("silence_threshold_db", "maximum"): SILENCE_THRESHOLD_DB.maximum,
    ("silence_fade_frames", "minimum"): SILENCE_FADE_FRAMES.minimum,
    ("silence_fade_frames", "maximum"): SILENCE_FADE_FRAMES.maximum,
    ("sample_rate", "minimum"): AUDIO_SAMPLE_RATE_HZ.minimum,
    ("sample_rate", "maximum"): AUDIO_SAMPLE_RATE_HZ.maximum,
    ("channels", "minimum"): AUDIO_CHANNELS.minimum,
    ("channels", "maximum"): AUDIO_CHANNELS.maximum,
    ("jpeg_quality", "minimum"): JPEG_QUALITY.minimum,
    ("jpeg_quality", "maximum"): JPEG_QUALITY.maximum,
    ("quality", "minimum"): JPEG_QUALITY.minimum,  # jpeg_quality's old name (deprecated)
    ("quality", "maximum"): JPEG_QUALITY.maximum,
    ("lead_ms", "minimum"): LEAD_MS.minimum,
    ("lead_ms", "maximum"): LEAD_MS.maximum,
    ("pads", "minItems"): FACE_SIDES,
    ("pads", "maxItems"): FACE_SIDES,
    ("box", "minItems"): FACE_SIDES,
    ("box", "maxItems"): FACE_SIDES,
    ("pads.items", "minimum"): MIN_PAD,
}
# Bounds of what an answer reports (sizes and counts of what was made), not request limits.
FACTS: dict[tuple[str, str], float] = {
    ("width", "minimum"): 1,
    ("height", "minimum"): 1,
    ("num_frames", "minimum"): 1,
    ("duration", "minimum"): 0,
    ("silent_frames", "minimum"): 0,
    ("Retry-After", "minimum"): 0,
}


def bounds(node: Any, name: str = "") -> Iterator[tuple[str, str, float]]:
    """(property, keyword, value) of every numeric bound in a JSON Schema document; the
    property is the nearest named one (`pads.items` for the items of `pads`)."""
    if isinstance(node, list):
        for item in node:
            yield from bounds(item, name)
        return
    if not isinstance(node, dict):
        return
    for keyword in (*BOUND_KEYWORDS, *ITEM_KEYWORDS):
        if keyword in node:
            yield name, keyword, node[keyword]
    for key, value in node.items():
        if key == "properties":
            for prop, schema in value.items():
                yield from bounds(schema, prop)
        elif key == "items":
            yield from bounds(value, f"{name}.items")
        elif key in ("headers",) and isinstance(value, dict):
            for header, schema in value.items():
                yield from bounds(schema, header)
        elif key not in (*BOUND_KEYWORDS, *ITEM_KEYWORDS):
            yield from bounds(value, name)


@pytest.fixture(scope="module")
def published() -> dict[str, Any]:
    app = create_app(settings=Settings(compile_on_start=False, cache_dir=None, avatar_dir=None))
    client = app.test_client()
    documents = {
        "openapi": client.get("/openapi.json").get_json(),
        "protocol": client.get("/api/stream/protocol.json").get_json(),
    }
    assert documents["openapi"] == document(app)
    return documents


@pytest.mark.parametrize("which", ["openapi", "protocol"])
def test_every_published_bound_is_the_enforced_constant(published, which):
    found = list(bounds(published[which]))
    assert found, "no bounds found: the walk is broken"
    for prop, keyword, value in found:
        key = (prop, keyword)
        assert key in LIMITS or key in FACTS, f"{which}: {prop} {keyword} {value} is undeclared"
        assert value == LIMITS.get(key, FACTS.get(key)), f"{which}: {prop} {keyword} {value}"
    seen = {(prop, keyword) for prop, keyword, _ in found}
    if which == "protocol":  # every WebSocket limit is published
        for name in ("fps", "silence_threshold_db", "sample_rate", "channels", "jpeg_quality"):
            assert {(name, "minimum"), (name, "maximum")} <= seen, name
    else:
        for name in ("fps", "silence_threshold_db", "silence_fade_frames"):
            assert {(name, "minimum"), (name, "maximum")} <= seen, name


def _options(field: str) -> Callable[[float], object]:
    return lambda value: RenderOptions(**{field: value})


def _sample_rate(value: float) -> object:
    return Settings(min_audio_sample_rate=int(value), max_audio_sample_rate=int(value))


def _start(field: str, nested: str | None = None) -> Callable[[float], object]:
    def build(value: float) -> object:
        given = {field: value} if nested is None else {nested: {field: value}}
        return p.Start(type="start", avatar_id="0" * 32, **given)

    return build


def _http(field: str) -> Callable[[float], object]:
    return lambda value: GenerateRequest(audio=b"x", image=b"y", **{field: value})


# Each limit and the code enforcing it, at every layer that checks it.
ENFORCED = [
    (FPS, _options("fps")),
    (FPS, _start("fps")),
    (FPS, _http("fps")),
    (SILENCE_THRESHOLD_DB, _options("silence_threshold_db")),
    (SILENCE_THRESHOLD_DB, _start("silence_threshold_db")),
    (SILENCE_THRESHOLD_DB, _http("silence_threshold_db")),
    (SILENCE_FADE_FRAMES, _options("silence_fade_frames")),
    (SILENCE_FADE_FRAMES, _http("silence_fade_frames")),
    (AUDIO_SAMPLE_RATE_HZ, _sample_rate),
    (AUDIO_SAMPLE_RATE_HZ, _start("sample_rate", "audio")),
    (AUDIO_CHANNELS, _start("channels", "audio")),
    (JPEG_QUALITY, _start("jpeg_quality", "output")),
    (LEAD_MS, _start("lead_ms")),
]


@pytest.mark.parametrize(("limit", "make"), ENFORCED)
def test_the_code_accepts_each_limit_and_refuses_beyond_it(limit: Range, make):
    step = 1 if limit.integer else 0.001
    make(limit.minimum)
    make(limit.maximum)
    for beyond in (limit.minimum - step, limit.maximum + step):
        with pytest.raises((InvalidFieldError, ValidationError, ValueError)):
            make(int(beyond) if limit.integer else beyond)


def test_pads_are_four_non_negative_sides():
    RenderOptions(pads=(MIN_PAD,) * FACE_SIDES)
    with pytest.raises(InvalidFieldError, match="pads"):
        RenderOptions(pads=(MIN_PAD - 1,) + (MIN_PAD,) * (FACE_SIDES - 1))
    with pytest.raises(InvalidFieldError, match="pads"):
        RenderOptions(pads=(MIN_PAD,) * (FACE_SIDES + 1))  # type: ignore[arg-type]
