"""The page for people as files and routes (Flask's test client; no models, no browser):
content negotiation on `/`, the page and its modules served, nothing loaded from elsewhere,
the page public when an API key is set. tests/test_browser.py runs it in Chromium."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

from lipsync.server.app import create_app

STATIC = ROOT / "lipsync" / "server" / "web" / "static"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def web_client(tmp_path):
    return create_app({"models_dir": tmp_path, "cache_dir": None, "avatar_dir": None}).test_client()


def referenced_files() -> set[str]:
    """Every file the page loads: index.html's href/src and the modules' imports."""
    html = (STATIC / "index.html").read_text()
    names = {m for m in re.findall(r'(?:href|src)="static/([^"]+)"', html)}
    for module in STATIC.glob("*.js"):
        text = module.read_text()
        names |= set(re.findall(r'from "\./([^"]+)"', text))
        names |= set(re.findall(r'new URL\("\./([^"]+)", import\.meta\.url\)', text))
    return names


@pytest.mark.parametrize(
    ("accept", "json_index"),
    [(None, True), ("*/*", True), ("application/json", True), (BROWSER_ACCEPT, False)],
)
def test_browsers_are_sent_to_the_page_and_api_clients_get_the_index(
    web_client, accept, json_index
):
    response = web_client.get("/", headers={"Accept": accept} if accept else {})
    assert response.headers["Vary"] == "Accept"
    if json_index:
        assert response.status_code == 200
        assert response.get_json()["endpoints"]["GET /web/"]
    else:
        assert response.status_code == 302
        assert response.headers["Location"] == "web/"  # relative: works behind a path prefix


def test_the_page_and_every_file_it_loads_are_served(web_client):
    page = web_client.get("/web/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert '<script type="module" src="static/app.js">' in page.get_data(as_text=True)
    names = referenced_files()
    assert {"app.js", "api.js", "face.js", "reply.js", "live.js", "frames.js"} <= names
    assert {"style.css", "pcm-worklet.js"} <= names
    assert names == {p.name for p in STATIC.iterdir()} - {"index.html"}  # nothing unused
    for name in names:
        response = web_client.get(f"/web/static/{name}")
        assert response.status_code == 200, name
        expected = "text/css" if name.endswith(".css") else "text/javascript"
        assert response.mimetype == expected, name


def test_nothing_is_loaded_from_another_site():
    for path in STATIC.iterdir():
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", path.read_text()), path.name


def test_the_page_needs_no_key_but_the_api_does(tmp_path):
    app = create_app(
        {"models_dir": tmp_path, "cache_dir": None, "avatar_dir": None, "api_key": "s3cret"}
    )
    client = app.test_client()
    assert client.get("/web/").status_code == 200
    assert client.get("/web/static/app.js").status_code == 200
    assert client.get("/web/static/no-such-file.js").status_code == 404
    assert client.get("/", headers={"Accept": BROWSER_ACCEPT}).status_code == 401
    assert client.get("/api/avatars").status_code == 401
    assert client.get("/api/avatars", headers={"X-API-Key": "s3cret"}).status_code == 200
