"""Shared fixtures: untrained models made by the real converter, test media, servers.

No trained weights exist on test machines. `untrained_models` writes seeded random-init
checkpoints in the official formats and converts them with convert_to_openvino.py, once,
cached under .cache/test-models/ keyed by the converter's source (so an edited network or
converter is converted again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import ASSETS, CONVERTER_SOURCES, ROOT, SEED, LiveServer, start_server, stop_server

from tools.redis_server import RedisServer

# Fixtures that need converted models: a test using any of them (directly or through another
# fixture) is marked slow, so `pytest -m "not slow"` runs without converting anything.
MODEL_FIXTURES = frozenset({"untrained_models", "blind_models"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _source_key() -> str:
    """Cache key of the converted test models: the seed and the converter's source files."""
    digest = hashlib.sha256(str(SEED).encode())
    for name in sorted(CONVERTER_SOURCES):
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def _build_once(target: Path, build) -> Path:
    """Run `build(tmp_dir)` unless `target` exists; publish the result atomically."""
    if (target / "manifest.json").is_file():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process published it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(autouse=True)
def root_logger_restored():
    """Every test leaves the root logger as it found it: a test that runs a command's main()
    (configure_logging) would otherwise leave handlers on a stream pytest has closed since."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def untrained_models() -> Path:
    """A models dir with wav2lip, wav2lip_gan and face_detection IR from random-init weights."""
    from lipsync.conversion import convert as convert_to_openvino

    def build(tmp: Path) -> None:
        assert convert_to_openvino.main(["--random-init", str(SEED), "--output-dir", str(tmp)]) == 0

    return _build_once(ROOT / ".cache" / "test-models" / _source_key(), build)


@pytest.fixture(scope="session")
def blind_models(untrained_models: Path) -> Path:
    """Like `untrained_models`, but the detector's face logits are pushed far down: it is
    a real network that never finds a face, for the face_not_detected paths."""
    from lipsync.conversion.checkpoints import load_s3fd_state_dict
    from lipsync.conversion.ir_export import convert_s3fd

    def build(tmp: Path) -> None:
        state = load_s3fd_state_dict(untrained_models / "untrained-checkpoints" / "s3fd.pth")
        for name, tensor in state.items():
            if "mbox_conf" in name and name.endswith("bias"):
                tensor[-1] = -1e4  # the face channel of every confidence head
        convert_s3fd(state, tmp / "face_detection.xml")
        for name in ("wav2lip", "wav2lip_gan"):
            for ext in (".xml", ".bin"):
                os.symlink(untrained_models / f"{name}{ext}", tmp / f"{name}{ext}")
        (tmp / "manifest.json").write_text("{}")

    return _build_once(untrained_models.with_name(untrained_models.name + "-blind"), build)


@pytest.fixture(scope="module")
def client(untrained_models):
    """Flask's test client on the untrained models; no OpenVINO cache, avatars in memory."""
    from lipsync.server.app import create_app

    return create_app(
        {"models_dir": untrained_models, "cache_dir": None, "avatar_dir": None}
    ).test_client()


@pytest.fixture(scope="session")
def face_image() -> np.ndarray:
    """The 512x512 test portrait, BGR uint8."""
    return cv2.imread(str(ASSETS / "face.jpg"))


@pytest.fixture(scope="session")
def speech_bytes() -> bytes:
    """5.5 s of 16 kHz mono speech (espeak-ng), as a WAV file."""
    return (ASSETS / "speech.wav").read_bytes()


@pytest.fixture(scope="session")
def live_server(untrained_models, tmp_path_factory) -> LiveServer:
    """The real gunicorn server on loopback, serving the untrained models."""
    server = start_server(untrained_models, tmp_path_factory.mktemp("live"))
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """A real redis-server on loopback (tools/redis_server.py): `.url`, `.stop()`, `.start()`
    (same port and URL), `.flush()`. Tests that stop it start it again; use `redis_url` for
    a running, empty one."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, running (a test before may have stopped it) and empty."""
    redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="module")
def web_server(blind_models, tmp_path_factory) -> LiveServer:
    """The real server for the browser tests: its detector never finds a face (faces come
    with an explicit box, and a face without one is the no-face error), speech up to 10 s,
    one generation at a time and none queued (a second one is a 503, Retry-After: 2)."""
    server = start_server(
        blind_models,
        tmp_path_factory.mktemp("web"),
        LIPSYNC_MAX_AUDIO_SECONDS="10",
        LIPSYNC_MAX_CONCURRENT="1",
        LIPSYNC_MAX_QUEUE="0",
        LIPSYNC_RETRY_AFTER_S="2",
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """Headless Chromium (Debian's `chromium`, driven by playwright) whose microphone is
    Chromium's fake device playing test_assets/speech.wav in a loop."""
    browser_path = shutil.which("chromium")
    if browser_path is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    flags = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={ASSETS / 'speech.wav'}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=flags)
        yield browser
        browser.close()
