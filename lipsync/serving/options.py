"""Render options of a request: its own fields over the server's defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

from lipsync.options import RenderOptions
from lipsync.settings import Settings

# Request fields whose default is a server setting (field -> Settings attribute); the
# published schemas take these defaults from the running server's Settings.
SERVER_DEFAULTS = {
    "format": "default_format",
    "quality": "default_quality",
    "blend": "default_blend",
}
# The library's defaults of every other option (the schemas' defaults too).
LIBRARY_DEFAULTS = RenderOptions()
# Request fields that are RenderOptions fields of the same name.
RENDER_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(RenderOptions))


def server_defaults(settings: Settings) -> dict[str, Any]:
    """{request field: its default on this server} for the fields of SERVER_DEFAULTS."""
    return {name: getattr(settings, attribute) for name, attribute in SERVER_DEFAULTS.items()}


def render_options(settings: Settings, **given: Any) -> RenderOptions:
    """RenderOptions of the `given` request fields (None or absent: not given; fields that
    are not options are ignored) over the server's defaults and the library's.

    InvalidFieldError naming the first option out of range."""
    fields = {
        name: tuple(value) if name in ("pads", "box") else value
        for name, value in given.items()
        if name in RENDER_OPTION_NAMES and value is not None
    }
    defaults = {
        name: value
        for name, value in server_defaults(settings).items()
        if name in RENDER_OPTION_NAMES
    }
    defaults["fill_missing_faces"] = settings.fill_missing_faces
    return RenderOptions(**{**defaults, **fields})
