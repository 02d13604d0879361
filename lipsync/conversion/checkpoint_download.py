"""Downloading the PyTorch checkpoints for the converter's --download mode: URLs from flags,
environment variables or defaults, atomic writes and sha256 verification.

A conversion-time module; the serving path never imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from lipsync.conversion.checkpoints import (
    CHECKPOINT_FILES,
    MODEL_KINDS,
    S3FD_NAME,
    WAV2LIP,
    WAV2LIP_GAN,
)
from lipsync.util import sha256_file

logger = logging.getLogger(__name__)

# There is no stable official direct link for the Wav2Lip weights (the authors share them
# through a cloud folder), so those URLs must be supplied by flag or environment variable.
DEFAULT_URLS: dict[str, str | None] = {
    WAV2LIP: None,
    WAV2LIP_GAN: None,
    S3FD_NAME: "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}
URL_ENV_VARS = {WAV2LIP: "WAV2LIP_URL", WAV2LIP_GAN: "WAV2LIP_GAN_URL", S3FD_NAME: "S3FD_URL"}
DEFAULT_DOWNLOAD_TIMEOUT = 20.0
LOCAL_FILES_HINT = (
    "to convert local files instead, pass them explicitly: "
    "python convert_to_openvino.py --wav2lip path/to/wav2lip.pth --s3fd path/to/s3fd.pth"
)


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched or failed verification."""


def download_checkpoint(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
) -> Path:
    """Fetch ``url`` into ``dest`` via a temp file + atomic rename; verify sha256 if given.

    An existing ``dest`` is reused when it matches ``sha256`` (or no hash is given). Raises
    DownloadError (with a hint on supplying local files) and leaves no partial file.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        logger.info("using existing %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    logger.info("downloading %s -> %s", url, dest)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(
                f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256.lower()}"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url}: {reason}; {LOCAL_FILES_HINT}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def download_url(kind: str, flag_value: str | None) -> str | None:
    """The URL of checkpoint ``kind``: the flag's, else $<URL_ENV_VARS[kind]>, else the default."""
    return flag_value or os.environ.get(URL_ENV_VARS[kind]) or DEFAULT_URLS[kind]


def download_all(args: argparse.Namespace, directory: Path) -> dict[str, Path]:
    """Resolve every checkpoint for --download: given local paths win, others are fetched."""
    plan: dict[str, str] = {}
    local: dict[str, Path] = {}
    for kind in MODEL_KINDS:
        given = getattr(args, kind)
        if given is not None:
            local[kind] = Path(given)
            continue
        url = download_url(kind, getattr(args, f"{kind}_url"))
        if url:
            plan[kind] = url
        elif kind == WAV2LIP:
            raise ValueError(
                "no download URL for the wav2lip checkpoint (there is no stable official "
                f"direct link): set {URL_ENV_VARS[kind]} or --wav2lip-url, or {LOCAL_FILES_HINT}"
            )
    for kind, url in plan.items():
        local[kind] = download_checkpoint(
            url,
            directory / CHECKPOINT_FILES[kind],
            sha256=getattr(args, f"{kind}_sha256"),
            timeout=args.download_timeout,
        )
    return local
