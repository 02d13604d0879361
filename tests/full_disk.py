"""A directory whose filesystem can be filled: the avatar store's full-disk tests.

`tmpfs`: a real, small tmpfs mounted under the test's directory (root only; the test is
skipped where mounting is refused), filled with a file until the kernel answers ENOSPC.
`injected`: a plain directory, where `os.write` (the lowest write the disk backend makes)
raises ENOSPC for files under it while it is "full".
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

MODES = ("tmpfs", "injected")
TMPFS_BYTES = 4 * 1024 * 1024
CHUNK = 4096


class FullDisk:
    """`.directory` (the avatar directory), `.fill()`, `.free()`, `.close()`."""

    def __init__(self, mode: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mode = mode
        self.mount = root / "fs"
        self.mount.mkdir()
        self.directory = self.mount / "avatars"
        self.filler = self.mount / "filler"
        self.full = False
        self.mounted = False
        if mode == "tmpfs":
            self._mount()
        else:
            self._inject(monkeypatch)
        self.directory.mkdir()

    def _mount(self) -> None:
        command = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(self.mount)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except OSError as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted = True

    def _inject(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_write = os.write
        prefix = str(self.mount) + os.sep

        def write(fd: int, data) -> int:
            if self.full and os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)

    def fill(self) -> None:
        """No byte left: the filesystem's last page taken (tmpfs), or every write refused."""
        self.full = True
        if not self.mounted:
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while True:
                os.write(fd, b"\0" * CHUNK)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)

    def free(self) -> None:
        self.full = False
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mount)], check=True, timeout=30)
            self.mounted = False
