"""Tests of `convert_to_openvino.py --download` (lipsync/conversion/checkpoint_download.py).

No test reaches the internet: a local HTTP server on 127.0.0.1 stands in for Google Drive
($LIPSYNC_GDRIVE_URL points the converter at it) and for the S3FD host ($S3FD_URL). It serves
what the converter meets on Drive: the embedded view of the shared wav2lip folder, file
downloads by id, and the refusals (the quota / "too many users" page, 403, 404, an HTML page
served as the file). The files it serves are the session's seeded random-init checkpoints in
the official formats, converted end to end. gdown recognises Drive by its host name, so
against the stand-in it downloads as from any host: its handling of Drive's large-file
confirmation page is not exercised here (the real host needs it for files over ~100 MB).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lipsync.conversion import checkpoint_download as dl
from lipsync.conversion import convert as conv

FOLDER_ID = dl.DEFAULT_SOURCES["wav2lip"].id  # type: ignore[union-attr]
GAN_ID = dl.DEFAULT_SOURCES["wav2lip_gan"].id  # type: ignore[union-attr]
WAV2LIP_ID = "1WAV2LIPfileINtheFOLDERxxxxxx"  # the folder's wav2lip.pth (ids are opaque)
OTHER_ID = "1ANOTHERfileINtheFOLDERxxxxxx"
QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
    '<div class="uc-main"><p class="uc-error-caption">Sorry, you can\'t view or download this '
    'file at this time.</p><p class="uc-error-subcaption">Too many users have viewed or '
    "downloaded this file recently. Please try accessing the file again later.</p></div>"
    "</body></html>"
)
slow = pytest.mark.slow  # needs the session's random-init checkpoints


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class FakeDrive:
    """What the stand-in host serves: file id -> (name, path); how each id answers ("file",
    "quota", "forbidden", "missing", "html"); and the paths it was asked for."""

    base: str = ""
    files: dict[str, tuple[str, Path]] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


def handler_for(drive: FakeDrive) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            drive.requests.append(self.path)
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            file_id = query.get("id", "")
            if url.path == "/embeddedfolderview" and file_id == FOLDER_ID:
                self.folder_view()
            elif url.path == "/uc" and file_id in drive.files:
                self.uc(file_id)
            elif url.path == "/s3fd.pth":
                self.send_file("s3fd")
            else:
                self.page(404, "<html><body>Not Found</body></html>")

        def folder_view(self) -> None:
            entries = "".join(
                f'<div class="flip-entry" id="entry-{fid}"><a href="https://drive.google.com/'
                f'file/d/{fid}/view?usp=drive_web" target="_blank"><div class="flip-entry-'
                f'title">{name}</div></a></div>'
                for fid, (name, _) in drive.files.items()
                if fid in (WAV2LIP_ID, OTHER_ID)
            )
            self.page(200, f"<html><head><title>wav2lip</title></head><body>{entries}</body>")

        def uc(self, file_id: str) -> None:
            answer = drive.answers.get(file_id, "file")
            if answer == "quota":
                self.page(200, QUOTA_PAGE)
            elif answer in ("forbidden", "missing"):
                self.page(403 if answer == "forbidden" else 404, "<html>Error</html>")
            elif answer == "html":
                self.send_bytes(b"<!DOCTYPE html><html>Sign in</html>", "wav2lip.pth")
            else:
                self.send_file(file_id)

        def send_file(self, file_id: str) -> None:
            name, path = drive.files[file_id]
            self.send_bytes(path.read_bytes(), name)

        def send_bytes(self, body: bytes, name: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", f'attachment; filename="{name}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def page(self, status: int, html: str) -> None:
            body = html.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def drive(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDrive]:
    """The stand-in host, running; the converter's Drive and S3FD URLs point at it."""
    fake = FakeDrive()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    fake.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(dl.DRIVE_URL_ENV, fake.base)
    monkeypatch.setenv("S3FD_URL", f"{fake.base}/s3fd.pth")
    for name in ("WAV2LIP_URL", "WAV2LIP_GAN_URL"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def served(drive: FakeDrive, untrained_models: Path) -> FakeDrive:
    """The stand-in serving the random-init checkpoints."""
    ckpt = untrained_models / "untrained-checkpoints"
    drive.files.update(
        {
            WAV2LIP_ID: ("wav2lip.pth", ckpt / "wav2lip.pth"),
            OTHER_ID: ("wav2lip_gan.pth", ckpt / "wav2lip_gan.pth"),
            GAN_ID: ("wav2lip_gan.pth", ckpt / "wav2lip_gan.pth"),
            "s3fd": ("s3fd-619a316812.pth", ckpt / "s3fd.pth"),
        }
    )
    return drive


def download_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--download",
        *("--checkpoint-dir", str(tmp_path / "dl")),
        *("--output-dir", str(tmp_path / "out")),
        *extra,
    ]


@slow
def test_default_download_fetches_the_authors_files_and_converts_them(
    served: FakeDrive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert conv.main(download_argv(tmp_path)) == 0
    err = capsys.readouterr().err
    assert "non-commercial" in err and "github.com/Rudrabha/Wav2Lip" in err  # the licence
    # The folder was listed and its wav2lip.pth fetched, then the GAN file by its id.
    assert f"/embeddedfolderview?id={FOLDER_ID}" in served.requests
    assert any(r.startswith(f"/uc?id={WAV2LIP_ID}") for r in served.requests)
    assert any(r.startswith(f"/uc?id={GAN_ID}") for r in served.requests)
    downloaded = tmp_path / "dl"
    assert sorted(p.name for p in downloaded.iterdir()) == [
        "s3fd.pth",
        "wav2lip.pth",
        "wav2lip_gan.pth",
    ]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["untrained"] is False
    sources = {"wav2lip": WAV2LIP_ID, "wav2lip_gan": GAN_ID, "face_detection": "s3fd"}
    for name, file_id in sources.items():
        entry = manifest["models"][name]
        assert entry["sha256"] == sha256(served.files[file_id][1]), name
        assert (tmp_path / "out" / entry["xml"]).is_file()
    # A second run reuses the complete files and asks the host nothing.
    served.requests.clear()
    assert conv.main(download_argv(tmp_path, "--output-dir", str(tmp_path / "again"))) == 0
    assert served.requests == []


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("quota", "Too many users have viewed or downloaded this file recently"),
        ("forbidden", "403 Client Error"),
        ("missing", "404 Client Error"),
        ("html", "HTML page instead of a checkpoint"),
    ],
)
def test_refused_download_fails_with_the_manual_steps(
    drive: FakeDrive,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    answer: str,
    reason: str,
) -> None:
    decoy = tmp_path / "decoy.pth"
    decoy.write_bytes(b"PK\x03\x04 never served")
    drive.files[WAV2LIP_ID] = ("wav2lip.pth", decoy)
    drive.answers[WAV2LIP_ID] = answer
    started = time.perf_counter()
    assert conv.main(download_argv(tmp_path)) == 3
    assert time.perf_counter() - started < 20
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    error = errors[0]
    assert reason in error
    # The manual steps: where to download by hand, where to put the files, what to run.
    assert f"{drive.base}/drive/folders/{FOLDER_ID}" in error
    assert f"{drive.base}/file/d/{GAN_ID}/view" in error
    assert f"into {tmp_path / 'dl'}/" in error
    assert f"python convert_to_openvino.py --wav2lip {tmp_path / 'dl' / 'wav2lip.pth'}" in error
    assert list((tmp_path / "dl").iterdir()) == []  # no partial file, no temp directory
    assert not (tmp_path / "out").exists()


def test_folder_without_the_checkpoint_is_refused(
    drive: FakeDrive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    drive.files[OTHER_ID] = ("Wav2Lip-SD-GAN.pt", tmp_path / "absent")
    assert conv.main(download_argv(tmp_path)) == 3
    err = capsys.readouterr().err
    assert "has no wav2lip.pth (it lists Wav2Lip-SD-GAN.pt)" in err
    assert "python convert_to_openvino.py" in err
    assert list((tmp_path / "dl").glob("*")) == []


@slow
def test_url_overrides_replace_the_default_sources(
    served: FakeDrive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--wav2lip-url and $WAV2LIP_GAN_URL win over the Drive defaults (as plain URLs)."""
    ckpt = served.files[WAV2LIP_ID][1].parent
    monkeypatch.setenv("WAV2LIP_GAN_URL", (ckpt / "wav2lip_gan.pth").as_uri())
    argv = download_argv(tmp_path, "--wav2lip-url", (ckpt / "wav2lip.pth").as_uri())
    argv += ["--s3fd-sha256", sha256(ckpt / "s3fd.pth")]
    assert conv.main(argv) == 0
    assert served.requests == ["/s3fd.pth"]  # Drive was not asked
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["models"]["wav2lip"]["sha256"] == sha256(ckpt / "wav2lip.pth")


@slow
def test_wrong_architecture_from_the_host_is_refused(
    served: FakeDrive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The architecture check still applies to downloaded files: an S3FD file served as
    wav2lip.pth is refused (exit 2) before anything is converted."""
    served.files[WAV2LIP_ID] = ("wav2lip.pth", served.files["s3fd"][1])
    assert conv.main(download_argv(tmp_path)) == 2
    assert "not a Wav2Lip checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@slow
def test_download_unreachable_fails_fast(
    untrained_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = untrained_models / "untrained-checkpoints"
    argv = download_argv(
        tmp_path,
        *("--wav2lip", str(ckpt / "wav2lip.pth")),
        *("--wav2lip-gan", str(ckpt / "wav2lip_gan.pth")),
        *("--s3fd-url", "http://127.0.0.1:9/x.pth"),
    )
    started = time.perf_counter()
    assert conv.main(argv) == 3
    assert time.perf_counter() - started < 20
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9/x.pth" in err
    assert "--wav2lip" in err and "--s3fd" in err  # says how to use local files
    assert list((tmp_path / "dl").iterdir()) == []  # no partial file left behind
    assert not (tmp_path / "out").exists()


def test_download_verifies_sha256_and_renames_atomically(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"checkpoint bytes" * 1000)
    dest_dir = tmp_path / "dest"
    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.download_checkpoint(src.as_uri(), dest_dir / "x.pth", sha256="0" * 64)
    assert list(dest_dir.iterdir()) == []
    path = dl.download_checkpoint(src.as_uri(), dest_dir / "x.pth", sha256=sha256(src).upper())
    assert path.read_bytes() == src.read_bytes()
    assert [p.name for p in dest_dir.iterdir()] == ["x.pth"]


def test_download_url_from_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3FD_URL", "http://example.invalid/s3fd.pth")
    assert dl.download_url("s3fd", None) == "http://example.invalid/s3fd.pth"
    assert dl.download_url("s3fd", "http://flag/x.pth") == "http://flag/x.pth"
    monkeypatch.delenv("S3FD_URL")
    assert dl.download_url("s3fd", None) is None  # the default source applies
    monkeypatch.delenv(dl.DRIVE_URL_ENV, raising=False)
    assert dl.page_url(dl.DEFAULT_SOURCES["wav2lip"]) == (
        "https://drive.google.com/drive/folders/153HLrqlBNxzZcHi17PEvP09kkAfzRshM"
    )
    assert dl.page_url(dl.DEFAULT_SOURCES["wav2lip_gan"]) == (
        "https://drive.google.com/file/d/15G3U08c8xsCkOqQxE38Z2XXDnPcOptNk/view"
    )
