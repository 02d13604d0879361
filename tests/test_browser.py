"""The page for people (/web/) in a real headless Chromium, against the real server.

The server's detector never finds a face (`blind_models`): the page registers the 256x256
test face with its box typed in, and a face without a box is the no-face error. The live
mode's microphone is Chromium's fake device playing test_assets/speech.wav. Screenshots of
each mode are written to tests/artifacts/.
"""

from __future__ import annotations

import io
import threading
import time
import wave
from pathlib import Path

import cv2
import pytest
from helpers import ASSETS, FACE_BOX, ROOT

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "tests" / "artifacts"
FACE_SIZE = 256  # small frames keep the CPU low
BOX = ",".join(str(v * FACE_SIZE // 512) for v in FACE_BOX)  # the test face is 512x512
LIVE_FRAMES = 150  # 6 s of frames at 25 fps
LIVE_FPS = 25  # the page's session fps: frames are drawn on their timestamps, never faster
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


def test_live_mode_draws_every_frame_on_its_timestamp(page, face_file):
    """Every frame the session sends is drawn, in order, paced by its timestamp (never
    faster than the session's fps). How fast this CPU renders is bench.realtime's figure,
    not a test's: on a CPU without AMX one session renders well below 25 fps."""
    page.set_input_files("#face-file", str(face_file))  # not registered: sent in `start`
    page.fill("#face-box", BOX)
    page.click("#tab-live")
    page.click("#live-start")
    page.wait_for_function(f"() => lipsync.live.framesDrawn >= {LIVE_FRAMES}")
    stats = page.evaluate("() => lipsync.live")
    load = Path("/proc/loadavg").read_text().strip()
    print(f"live figures: {stats} (load average: {load})")
    screenshot(page, "live")
    assert stats["state"] == "live" and stats["badFrames"] == 0
    assert stats["framesDrawn"] >= LIVE_FRAMES and stats["droppedByServer"] == 0
    assert 0 < stats["fpsDrawnAverage"] <= LIVE_FPS * 1.05
    assert stats["latencyP50Ms"] > 0 and stats["delayMs"] > 0
    # The canvas shows the face (not a blank canvas): the frame's pixels vary.
    spread = page.evaluate(
        """() => {
          const c = document.querySelector('#live-canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let min = 255, max = 0;
          for (let i = 0; i < d.length; i += 4) {
            min = Math.min(min, d[i]);
            max = Math.max(max, d[i]);
          }
          return [c.width, c.height, max - min];
        }"""
    )
    assert spread[:2] == [FACE_SIZE, FACE_SIZE] and spread[2] > 50
    page.click("#live-interrupt")
    drawn = page.evaluate("() => lipsync.live.framesDrawn")
    page.wait_for_function(
        f"() => lipsync.live.state === 'live' && lipsync.live.framesDrawn > {drawn + 25}"
    )
    assert page.evaluate("() => lipsync.live.interrupts") == 1
    page.click("#live-stop")
    assert page.evaluate("() => lipsync.live.state") == "stopped"
    assert page.problems == []


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
