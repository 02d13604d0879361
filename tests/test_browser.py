"""The page for people (/web/) in a real headless Chromium, against the real server.

The server's detector never finds a face (`blind_models`): the page registers the 256x256
test face with its box typed in, and a face without a box is the no-face error. The live
mode's microphone is Chromium's fake device playing test_assets/speech.wav. Screenshots of
each mode are written to tests/artifacts/.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import websocket
from helpers import ASSETS, FACE_BOX, ROOT

from lipsync.server.realtime import protocol

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "tests" / "artifacts"
FACE_SIZE = 256  # small frames keep the CPU low
BOX = ",".join(str(v * FACE_SIZE // 512) for v in FACE_BOX)  # the test face is 512x512
LIVE_FRAMES = 150  # 6 s of frames at 25 fps
LIVE_FPS = 25  # the page's session fps: frames are drawn on their timestamps, never faster
LIVE_JPEG_QUALITY = 80  # the page's (live.js)
TIMEOUT_MS = 120_000
ID = "document.getElementById"


@pytest.fixture(scope="module")
def face_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("face") / "face256.jpg"
    face = cv2.resize(cv2.imread(str(ASSETS / "face.jpg")), (FACE_SIZE, FACE_SIZE))
    cv2.imwrite(str(path), face)
    return path


@pytest.fixture
def page(chromium, web_server):
    """A fresh page of the app, loaded; console errors and page errors are collected."""
    context = chromium.new_context(viewport={"width": 1100, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.goto(web_server.url + "/")
    page.wait_for_function("() => window.lipsync && document.querySelector('#avatars li')")
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"browser-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def register_face(page, face_file, box: str = BOX) -> None:
    page.set_input_files("#face-file", str(face_file))
    page.fill("#face-box", box)
    page.click("#register")
    page.wait_for_function("() => $('face-info').textContent.startsWith('Avatar')".replace("$", ID))


def shown_error(page) -> str:
    page.wait_for_selector("#error:not([hidden])")
    return page.text_content("#error")


def api_error(web_server, path: str, **files) -> dict:
    """The service's own error for the same request, asked directly."""
    response = web_server.post(path, files=files)
    assert not response.ok
    return response.json()["error"]


def long_speech(seconds: float) -> bytes:
    """test_assets/speech.wav repeated to at least `seconds`."""
    with wave.open(str(ASSETS / "speech.wav")) as source:
        params, samples = source.getparams(), source.readframes(source.getnframes())
    repeats = int(seconds * params.framerate // params.nframes) + 1
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setparams(params)
        target.writeframes(samples * repeats)
    return out.getvalue()


def test_browsers_get_the_page_and_it_loads_without_errors(page, web_server):
    assert page.url == web_server.url + "/web/"
    assert page.text_content("#health").startswith("Service ready")
    # Every form control has a label; tabs work from the keyboard.
    unlabeled = page.evaluate(
        "() => [...document.querySelectorAll('input, select')]"
        ".filter((el) => !el.labels.length).map((el) => el.id)"
    )
    assert unlabeled == []
    page.focus("#tab-reply")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => document.activeElement.id") == "tab-live"
    assert page.is_visible("#panel-live") and not page.is_visible("#panel-reply")
    # A phone's width: nothing wider than the screen.
    page.set_viewport_size({"width": 360, "height": 740})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    assert page.problems == []


def generate_reply(page, face_file, container: str) -> dict:
    """Register the face, send the speech with Generate; the reply figures once it ended."""
    register_face(page, face_file)
    page.set_input_files("#speech-file", str(ASSETS / "speech.wav"))
    page.select_option("#reply-format", container)
    page.click("#generate")
    page.wait_for_function("() => ['done', 'failed'].includes(lipsync.reply.state)")
    return page.evaluate("() => lipsync.reply")


def test_reply_mode_plays_the_video_while_it_is_generated(page, face_file):
    stats = generate_reply(page, face_file, "mp4")
    assert page.is_visible("#face-overlay")
    print(f"reply timings: {stats}")
    assert stats["state"] == "done" and stats["streamed"] is True
    assert stats["numFrames"] == 138
    # While the generation was still running, the video was already playing.
    assert stats["firstFrameMs"] < stats["doneMs"]
    assert stats["atDone"]["currentTime"] > 0
    assert stats["atDone"]["decodedFrames"] > 0
    page.wait_for_function(
        f"() => {ID}('reply-video').currentTime > {stats['atDone']['currentTime']}"
    )
    assert page.get_attribute("#download", "href").startswith("blob:")
    assert page.is_visible("#download")
    screenshot(page, "reply")
    assert page.problems == []


def test_reply_mode_streams_webm_through_mediasource(page, face_file):
    """The streamed WebM goes to MediaSource as it arrives (its block timecodes never go
    back, tests/test_stream_output.py) and plays while it is generated."""
    stats = generate_reply(page, face_file, "webm")
    assert stats["state"] == "done" and stats["streamed"] is True and stats["note"] is None
    assert stats["numFrames"] == 138
    assert stats["firstFrameMs"] < stats["doneMs"]
    assert stats["atDone"]["currentTime"] > 0 and stats["atDone"]["decodedFrames"] > 0
    assert page.problems == []


def record_utterance(page) -> list[bytes]:
    """The PCM the page sends on /api/stream up to its first `interrupt`, filled in as sent."""
    pcm: list[bytes] = []
    interrupted = []

    def on_frame(payload: str | bytes) -> None:
        if isinstance(payload, bytes) and not interrupted:
            pcm.append(payload)
        elif isinstance(payload, str) and json.loads(payload)["type"] == "interrupt":
            interrupted.append(True)

    def on_websocket(ws) -> None:
        if ws.url.endswith("/api/stream"):
            ws.on("framesent", on_frame)

    page.on("websocket", on_websocket)
    return pcm


def jpeg_session_frame(web_server, face_file: Path, pcm: bytes, index: int) -> np.ndarray:
    """Frame `index` of a jpeg-output session over the same face and speech as the page's."""
    ws = websocket.create_connection(
        web_server.url.replace("http://", "ws://") + "/api/stream", timeout=120
    )
    try:
        start = {
            "type": "start",
            "image": base64.b64encode(face_file.read_bytes()).decode(),
            "box": [int(v) for v in BOX.split(",")],
            "audio": {"sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1},
            "fps": LIVE_FPS,
            "output": {"format": "jpeg", "jpeg_quality": LIVE_JPEG_QUALITY},
            "pace": "asap",
        }
        ws.send(json.dumps(start))
        assert json.loads(ws.recv())["type"] == "ready"
        for offset in range(0, len(pcm), 32000):  # 1 s messages, within the message limit
            ws.send_binary(pcm[offset : offset + 32000])
        while True:
            message = ws.recv()
            assert isinstance(message, bytes), message
            kind, frame_index, _, payload = protocol.unpack_message(message)
            if kind == protocol.FRAME_TYPE_JPEG and frame_index == index:
                return cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    finally:
        ws.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_live_mode_draws_every_frame_on_its_timestamp(page, face_file, web_server):
    """Every frame the session sends is drawn, in order, paced by its timestamp (never
    faster than the session's fps). How fast this CPU renders is bench.realtime's figure,
    not a test's: on a CPU without AMX one session renders well below 25 fps. The frames
    come as patch output; the canvas shows what jpeg output gives for the same frame."""
    pcm = record_utterance(page)
    page.set_input_files("#face-file", str(face_file))  # not registered: sent in `start`
    page.fill("#face-box", BOX)
    page.click("#tab-live")
    page.click("#live-start")
    page.wait_for_function(f"() => lipsync.live.framesDrawn >= {LIVE_FRAMES}")
    # The canvas and the index of the frame it shows, read together.
    stats, canvas = page.evaluate(
        "() => [{...lipsync.live}, document.querySelector('#live-canvas').toDataURL()]"
    )
    load = Path("/proc/loadavg").read_text().strip()
    print(f"live figures: {stats} (load average: {load})")
    screenshot(page, "live")
    assert stats["state"] == "live" and stats["badFrames"] == 0
    assert stats["framesDrawn"] >= LIVE_FRAMES and stats["droppedByServer"] == 0
    assert 0 < stats["fpsDrawnAverage"] <= LIVE_FPS * 1.05
    assert stats["latencyP50Ms"] > 0 and stats["delayMs"] > 0
    assert stats["basesReceived"] == 1  # an image avatar: its one frame, once
    print(f"received {stats['bytesReceived'] / stats['framesReceived']:.0f} bytes per frame")
    drawn = cv2.imdecode(
        np.frombuffer(base64.b64decode(canvas.split(",")[1]), np.uint8), cv2.IMREAD_COLOR
    )
    # The canvas shows the face (not a blank canvas): the frame's pixels vary.
    assert drawn.shape == (FACE_SIZE, FACE_SIZE, 3) and np.ptp(drawn) > 50
    page.click("#live-interrupt")
    drawn_before = page.evaluate("() => lipsync.live.framesDrawn")
    page.wait_for_function(
        f"() => lipsync.live.state === 'live' && lipsync.live.framesDrawn > {drawn_before + 25}"
    )
    assert page.evaluate("() => lipsync.live.interrupts") == 1
    page.click("#live-stop")
    assert page.evaluate("() => lipsync.live.state") == "stopped"
    assert page.problems == []
    # Frames are the same for any chunking of the same speech.
    expected = jpeg_session_frame(web_server, face_file, b"".join(pcm), stats["lastDrawnIndex"])
    quality = psnr(drawn, expected)
    print(f"canvas against the jpeg-output frame {stats['lastDrawnIndex']}: {quality:.1f} dB")
    assert quality >= 35


def test_no_face_error_shows_the_service_message(page, face_file, web_server):
    page.set_input_files("#face-file", str(face_file))
    page.click("#register")  # no box: the detector runs, and finds nothing
    shown = shown_error(page)
    expected = api_error(web_server, "/api/avatars", image=face_file.read_bytes())
    assert expected["code"] == "face_not_detected"
    assert shown == expected["message"]
    assert page.evaluate("() => lipsync.errors.map((e) => e.code)") == ["face_not_detected"]


def test_too_long_audio_error_shows_the_service_message(page, face_file, web_server, tmp_path):
    speech = tmp_path / "long.wav"
    speech.write_bytes(long_speech(12))
    register_face(page, face_file)
    page.set_input_files("#speech-file", str(speech))
    page.click("#generate")
    shown = shown_error(page)
    expected = api_error(
        web_server,
        "/api/generate",
        image=face_file.read_bytes(),
        audio=speech.read_bytes(),
        box=(None, BOX),
    )
    assert expected["code"] == "audio_too_long"
    assert shown == expected["message"]
    assert page.evaluate("() => lipsync.reply.state") == "failed"


def test_busy_service_shows_the_countdown_and_retries(page, face_file, web_server):
    register_face(page, face_file)
    page.set_input_files("#speech-file", str(ASSETS / "speech.wav"))
    answers = []

    def hold_the_slot():  # another client's streamed generation
        files = {"image": face_file.read_bytes(), "audio": (ASSETS / "speech.wav").read_bytes()}
        data = {"box": BOX, "stream": "true"}
        answers.append(web_server.post("/api/generate", files=files, data=data))

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while web_server.get("/health/ready").status_code != 503:  # the slot is taken
            assert time.monotonic() < deadline and holder.is_alive()
            time.sleep(0.05)
        page.click("#generate")
        page.wait_for_selector("#busy:not([hidden])")
        busy = page.text_content("#busy")
    finally:
        holder.join()
    assert answers[0].status_code == 200
    assert "Retrying in" in busy and "busy" in busy.lower()
    page.wait_for_function("() => ['done', 'failed'].includes(lipsync.reply.state)")
    assert page.evaluate("() => [lipsync.reply.state, lipsync.errors]") == ["done", []]
    assert page.is_hidden("#busy")


def test_avatars_are_listed_used_and_deleted(page, face_file, web_server):
    register_face(page, face_file)
    avatar_id = page.text_content("#face-info").split()[1]
    item = f"#avatars li[data-avatar-id='{avatar_id}']"
    assert page.get_attribute(item, "aria-current") == "true"
    page.reload()
    page.wait_for_selector(item)
    page.click(f"{item} button:text('Use')")
    assert page.text_content("#face-info").startswith(f"Avatar {avatar_id}")
    assert page.is_enabled("#live-start")
    page.click(f"{item} button:text('Delete')")
    page.wait_for_selector(item, state="detached")
    assert web_server.get(f"/api/avatars/{avatar_id}").status_code == 404
    assert page.is_disabled("#live-start")  # no face chosen any more
    assert page.problems == []


def test_recorded_speech_is_lip_synced(page, face_file):
    register_face(page, face_file)
    page.click("#record")  # Chromium's fake microphone: test_assets/speech.wav
    page.wait_for_timeout(2500)
    page.click("#record")
    page.wait_for_function(f"() => {ID}('record-info').textContent.startsWith('Recorded')")
    page.select_option("#reply-format", "mp4")
    page.click("#generate")
    page.wait_for_function("() => ['done', 'failed'].includes(lipsync.reply.state)")
    stats = page.evaluate("() => [lipsync.reply, lipsync.errors]")
    assert stats[1] == [] and stats[0]["state"] == "done"
    assert 50 <= stats[0]["numFrames"] <= 75  # about 2.5 s at 25 fps
