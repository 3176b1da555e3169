r"""A run folder being mined is locked: a second writer gets a clear error naming the first.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems) holding the
owner's pid, host, start time and command. A lock whose owner process is gone (killed, crashed)
does not block: the next writer finds the pid dead on this host and takes the lock over. Two
writers in one process (dashboard jobs in threads) exclude each other too.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

from ..utils.files import PathLike

__all__ = ["RunLock", "RunLockedError", "read_lock"]


class RunLockedError(RuntimeError):
    r"""Another live process is mining into the run folder.

    Attributes:
        owner (dict): the lock's content (``pid``, ``host``, ``started``, ``command``).
    """

    def __init__(self, folder: Path, owner: Dict[str, Any]) -> None:
        self.owner = owner
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        super().__init__(
            f"{folder} is being mined by process {owner.get('pid')} on {owner.get('host')} since "
            f"{started} ({owner.get('command', '?')}). Wait for it, stop it, or mine into another "
            "folder; nothing was written."
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(path: PathLike) -> Optional[Dict[str, Any]]:
    r"""The content of a lock file, or None when absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


class RunLock:
    r"""Exclusive lock of a run folder, as a context manager.

    Args:
        folder (str): the run folder (created if missing).
        name (str): the lock file's name (one per torchrun rank: ``.lock.rank1-of-2``).

    Raises:
        RunLockedError: on enter, when a live process holds the lock.

    Example::
        >>> with RunLock("runs/val"):
        ...     mine()
    """

    def __init__(self, folder: PathLike, name: str = ".lock") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self._held = False
        self._token: Optional[str] = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"token": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = read_lock(self.path)
                if owner is None:  # being written right now, or garbage
                    time.sleep(0.05)
                    owner = read_lock(self.path)
                if (owner is not None and owner.get("host") == me["host"] and isinstance(owner.get("pid"), int)
                        and owner["pid"] != me["pid"] and not _alive(owner["pid"])):
                    self.path.unlink(missing_ok=True)  # stale: its owner is gone
                    continue
                if owner is None:
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLockedError(self.folder, owner) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held, self._token = True, me["token"]
            return self
        raise RunLockedError(self.folder, read_lock(self.path) or {"pid": "?", "host": "?"})

    def release(self) -> None:
        if self._held:
            self._held = False
            owner = read_lock(self.path)
            if owner is None or owner.get("token") == self._token:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
