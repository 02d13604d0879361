"""Downloading the PyTorch checkpoints for the converter's --download mode.

By default the authors' published files: the Wav2Lip checkpoints from the Google Drive links
in the Wav2Lip README (the ``wav2lip`` folder and the ``wav2lip_gan`` file, fetched with
gdown) and S3FD from the face-alignment project's link given there. A URL from a flag or an
environment variable replaces a default. Every file is written through a private temporary
directory and renamed into place only once complete, not an HTML page and matching its
expected sha256 (when given); a refused download fails with the manual steps.

A conversion-time module; the serving path never imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import gdown
from gdown.parse_url import is_google_drive_url

from lipsync.conversion.checkpoints import (
    CHECKPOINT_FILES,
    MODEL_KINDS,
    S3FD_NAME,
    WAV2LIP,
    WAV2LIP_GAN,
)
from lipsync.util import sha256_file

logger = logging.getLogger(__name__)

# The Google Drive host; tests point it at a local server standing in for Drive.
DRIVE_URL_ENV = "LIPSYNC_GDRIVE_URL"
DEFAULT_DRIVE_URL = "https://drive.google.com"
WAV2LIP_README = "https://github.com/Rudrabha/Wav2Lip#getting-the-weights"


@dataclass(frozen=True)
class DriveFile:
    """A file shared on Google Drive, by id."""

    id: str


@dataclass(frozen=True)
class DriveFolder:
    """A shared Google Drive folder, and the names of the wanted file in it (first found)."""

    id: str
    names: tuple[str, ...]


Source = DriveFile | DriveFolder | str  # a plain URL
DEFAULT_SOURCES: dict[str, Source] = {
    WAV2LIP: DriveFolder("153HLrqlBNxzZcHi17PEvP09kkAfzRshM", ("wav2lip.pth",)),
    WAV2LIP_GAN: DriveFile("15G3U08c8xsCkOqQxE38Z2XXDnPcOptNk"),
    S3FD_NAME: "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}
URL_ENV_VARS = {WAV2LIP: "WAV2LIP_URL", WAV2LIP_GAN: "WAV2LIP_GAN_URL", S3FD_NAME: "S3FD_URL"}
DEFAULT_DOWNLOAD_TIMEOUT = 20.0
WAV2LIP_LICENCE = (
    "LICENCE: the Wav2Lip weights (wav2lip.pth, wav2lip_gan.pth) are published by their "
    "authors for personal, research and non-commercial purposes only; as the models are "
    "trained on the LRS2 dataset, any commercial use is prohibited (the 'Disclaimer' and "
    f"'License and Citation' sections of the Wav2Lip README, {WAV2LIP_README}). For "
    "commercial use, contact the authors. The S3FD face detector comes from the "
    "face-alignment project (https://github.com/1adrianb/face-alignment) under its licence."
)
_FILE_LINK = re.compile(r"/file/d/([-\w]{25,})")
_DRIVE_ERROR = re.compile(r'class="uc-error-subcaption">(.*?)</p>', re.DOTALL)
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched or failed verification."""


# --- Where each checkpoint comes from ---------------------------------------------------------


def drive_url() -> str:
    """The Google Drive base URL: $LIPSYNC_GDRIVE_URL, else drive.google.com."""
    return (os.environ.get(DRIVE_URL_ENV) or DEFAULT_DRIVE_URL).rstrip("/")


def download_url(kind: str, flag_value: str | None) -> str | None:
    """A URL given for checkpoint ``kind``: the flag's, else $<URL_ENV_VARS[kind]>; None
    means the default source (DEFAULT_SOURCES)."""
    return flag_value or os.environ.get(URL_ENV_VARS[kind]) or None


def page_url(source: Source) -> str:
    """Where a person gets ``source`` with a browser."""
    if isinstance(source, DriveFolder):
        return f"{drive_url()}/drive/folders/{source.id}"
    if isinstance(source, DriveFile):
        return f"{drive_url()}/file/d/{source.id}/view"
    return source


def manual_steps(directory: Path) -> str:
    """How to fetch the checkpoints by hand and convert them (one paragraph)."""
    places = "; ".join(
        f"{CHECKPOINT_FILES[k]} from {page_url(DEFAULT_SOURCES[k])}"
        + (" (the file wav2lip.pth in that folder)" if k == WAV2LIP else "")
        + (" (optional)" if k == WAV2LIP_GAN else "")
        for k in MODEL_KINDS
    )
    paths = {k: directory / CHECKPOINT_FILES[k] for k in MODEL_KINDS}
    return (
        f"to install the checkpoints by hand, download with a browser {places}; put them "
        f"into {directory}/ and run: python convert_to_openvino.py --wav2lip {paths[WAV2LIP]} "
        f"--wav2lip-gan {paths[WAV2LIP_GAN]} --s3fd {paths[S3FD_NAME]} --output-dir models "
        "(./scripts/serve.sh converts checkpoints/*.pth by itself)"
    )


class _FolderLinks(HTMLParser):
    """(file id, name) of every file link on Drive's embedded folder view."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, str]] = []
        self._link: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        match = _FILE_LINK.search(dict(attrs).get("href") or "") if tag == "a" else None
        if match:
            self._link, self._text = match.group(1), []

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            self.files.append((self._link, "".join(self._text).strip()))
            self._link = None


def folder_file(folder: DriveFolder, timeout: float) -> DriveFile:
    """The wanted file of a shared folder, from Drive's embedded folder view."""
    url = f"{drive_url()}/embeddedfolderview?id={urllib.parse.quote(folder.id)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            page = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot list the Google Drive folder {url}: {reason}") from exc
    parser = _FolderLinks()
    parser.feed(page)
    by_name = {name.lower(): file_id for file_id, name in parser.files}
    for name in folder.names:
        if name.lower() in by_name:
            return DriveFile(by_name[name.lower()])
    found = ", ".join(name for _, name in parser.files) or "no files"
    raise DownloadError(
        f"the Google Drive folder {page_url(folder)} has no {' or '.join(folder.names)} "
        f"(it lists {found})"
    )


# --- Fetching one file ------------------------------------------------------------------------


def _fetch_url(url: str, dest: Path, timeout: float) -> None:
    """Plain HTTP(S)/file download of ``url`` into ``dest``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url}: {reason}") from exc


def _fetch_drive(url: str, dest: Path, timeout: float) -> None:
    """Google Drive download with gdown (on the Drive host it follows the large-file
    confirmation page and raises on the quota page)."""
    try:
        gdown.download(
            url=url,
            output=str(dest),
            quiet=not sys.stderr.isatty(),
            use_cookies=False,  # leaves no cookie file behind
            timeout=timeout,
        )
    except (gdown.exceptions.DownloadError, OSError) as exc:  # requests' errors are OSErrors
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DownloadError(f"Google Drive refused {url}: {reason}") from exc


def _check_not_html(path: Path, url: str) -> None:
    """Refuse an HTML page saved in place of a checkpoint, naming Drive's reason if given."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if not head.lstrip().lower().startswith(_HTML_STARTS):
        return
    caption = _DRIVE_ERROR.search(head.decode("utf-8", "replace"))
    reason = " ".join(caption.group(1).split()) if caption else "no reason given"
    raise DownloadError(
        f"{url} answered with an HTML page instead of a checkpoint (a quota, sign-in or "
        f"'too many users' page: {reason})"
    )


def download_checkpoint(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
) -> Path:
    """Fetch ``url`` (a Google Drive link through gdown) into ``dest``; verify sha256 if given.

    An existing ``dest`` is reused when it matches ``sha256`` (or no hash is given). Written
    in a private temporary directory and renamed into place when complete; raises
    DownloadError (no partial file is left) for a failed transfer, an HTML page or a
    sha256 mismatch.
    """
    dest = Path(dest)
    if _reusable(dest, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    tmp = work / dest.name
    logger.info("downloading %s -> %s", url, dest)
    try:
        fetch = _fetch_drive if is_google_drive_url(url) or _is_drive_base(url) else _fetch_url
        fetch(url, tmp, timeout)
        _check_not_html(tmp, url)
        got = sha256_file(tmp)
        if sha256 is not None and got != sha256.lower():
            raise DownloadError(f"{url}: sha256 {got} does not match the expected {sha256.lower()}")
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _reusable(dest: Path, sha256: str | None) -> bool:
    """Whether an earlier download at ``dest`` is kept (it matches ``sha256``, if given)."""
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        logger.info("using existing %s", dest)
        return True
    return False


def _is_drive_base(url: str) -> bool:
    """Whether ``url`` is on the configured Drive host (a local stand-in in tests)."""
    return url.startswith(drive_url() + "/")


def source_download_url(source: Source, timeout: float) -> str:
    """The URL that downloads ``source`` (a folder is listed to find its file's id)."""
    if isinstance(source, DriveFolder):
        source = folder_file(source, timeout)
    if isinstance(source, DriveFile):
        return f"{drive_url()}/uc?id={urllib.parse.quote(source.id)}&export=download"
    return source


# --- The --download plan ----------------------------------------------------------------------


def download_all(args: argparse.Namespace, directory: Path) -> dict[str, Path]:
    """Resolve every checkpoint for --download: given local paths win, the others are fetched
    from their URL flag / environment variable or by default from the authors' links.

    Raises DownloadError carrying the manual steps when a download fails.
    """
    local = {k: Path(getattr(args, k)) for k in MODEL_KINDS if getattr(args, k) is not None}
    missing = [k for k in MODEL_KINDS if k not in local]
    if {WAV2LIP, WAV2LIP_GAN} & set(missing):
        logger.warning("%s", WAV2LIP_LICENCE)
    for kind in missing:
        dest, sha256 = directory / CHECKPOINT_FILES[kind], getattr(args, f"{kind}_sha256")
        if _reusable(dest, sha256):  # before a Drive folder is listed for it
            local[kind] = dest
            continue
        try:
            url = download_url(kind, getattr(args, f"{kind}_url"))
            if url is None:
                url = source_download_url(DEFAULT_SOURCES[kind], args.download_timeout)
            local[kind] = download_checkpoint(
                url, dest, sha256=sha256, timeout=args.download_timeout
            )
        except DownloadError as exc:
            raise DownloadError(f"{kind}: {exc}; {manual_steps(directory)}") from exc
    return local
