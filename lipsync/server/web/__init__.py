"""The page for people at /web/: choose a face, hear and watch a streamed reply, talk live.

Plain ES modules and CSS in `static/`, served by Flask as they are (no build step, no CDN,
works offline). The page calls the same API as every client (`/api/avatars`,
`/api/generate` with `stream: true`, the WebSocket `/api/stream`). A browser asking for `/`
is redirected here (lipsync/server/routes/meta.py). The page and its files are public: they
hold nothing secret, and every call they make needs the API key when one is set.
"""

from __future__ import annotations

from flask_openapi3 import APIBlueprint

from lipsync.server.openapi import ok, operation

PAGE_PATH = "/web/"
STATIC_PREFIX = "/web/static/"

web = APIBlueprint(
    "web", __name__, static_folder="static", static_url_path=STATIC_PREFIX.rstrip("/")
)


@web.get(
    PAGE_PATH,
    **operation(
        "web_page", "The page for people: faces, streamed replies, live mode", "meta", public=True
    ),
    responses={
        "200": ok(
            "The HTML page (its scripts and styles are under /web/static/).",
            content={"text/html": {"schema": {"type": "string"}}},
        )
    },
)
def page():
    response = web.send_static_file("index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response
