"""The avatar directory's temporary entries: named after their owner, removed once stale.

A registration writes `.tmp-<host>-<pid>-<random>/` and renames it into place; a delete
renames the entry to `.trash-<host>-<pid>-<id>.<thread>` and then removes it. A worker killed
in between leaves its temporary behind. A temporary is stale when its owner is gone (made on
this host by a process that no longer runs) or, whoever made it (another machine sharing
the directory, a reused pid, a name without an owner), when it has not changed for
STALE_AFTER_S: a live registration writes its few files within seconds.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

TMP = ".tmp-"
TRASH = ".trash-"
KINDS = (TMP, TRASH)
STALE_AFTER_S = 3600.0


@dataclass(frozen=True)
class Temporary:
    """A temporary entry of the avatar directory, its bytes, and whether it is stale."""

    path: Path
    nbytes: int
    stale: bool


def owned_prefix(kind: str) -> str:
    """The start of the name of a temporary of `kind` (TMP, TRASH) made by this process."""
    return f"{kind}{socket.gethostname()}-{os.getpid()}-"


def is_temporary(name: str) -> bool:
    return name.startswith(KINDS)


def owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made the temporary `name`, or None if unnamed."""
    rest = name.removeprefix(TMP) if name.startswith(TMP) else name.removeprefix(TRASH)
    parts = rest.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def is_stale(name: str, age_s: float) -> bool:
    """Whether the temporary `name`, unchanged for `age_s`, has been abandoned."""
    made_by = owner(name)
    if made_by is not None and made_by[0] == socket.gethostname() and not running(made_by[1]):
        return True
    return age_s > STALE_AFTER_S


def running(pid: int) -> bool:
    """Whether a process `pid` exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def tree_bytes(path: str | Path) -> int:
    """Bytes of the files under `path` (0 if it went meanwhile)."""
    total = 0
    try:
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                total += tree_bytes(entry.path)
            else:
                total += entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        pass
    return total
