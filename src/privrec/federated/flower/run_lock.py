"""One server per checkpoint folder: an exclusive lock held for a whole Flower run.

Why: two coordinators on one checkpoint folder would each ask the devices for the same round —
two releases of its noisy sum, one charge in the checkpoint. A run takes an exclusive,
non-blocking ``flock`` on ``<folder>/.lock`` and keeps it to the end; a second server is
refused. Before asking the devices anything (:meth:`RunLock.check`) the holder also checks that
the lock file is still the one it locked (not deleted and recreated, which would let another
server lock a new file). ``flock`` is local: keep checkpoint folders on a local file system.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from privrec.errors import ConfigError
from privrec.models.persistence import sync_folder

__all__ = ["RunLock", "make_durable_dir"]


class RunLock:
    """The exclusive lock of ``folder`` (created, durably, if missing)."""

    def __init__(self, folder: Path) -> None:
        make_durable_dir(folder)
        if folder.is_symlink() or not folder.is_dir():
            raise ConfigError(f"{str(folder)!r} is not a folder (links are refused)")
        self.path = folder / ".lock"
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot lock {str(folder)!r}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another server holds {str(folder)!r}: two servers on one run would each ask "
                "the devices for the same rounds (two releases, one charge) — wait for it to end"
            ) from None
        self._fd: int | None = fd

    def check(self) -> None:
        """Refuse if the lock was released or its file removed or replaced."""
        try:
            same = self._fd is not None and os.fstat(self._fd).st_ino == os.lstat(self.path).st_ino
        except OSError:
            same = False
        if not same:
            raise ConfigError(
                f"{str(self.path)!r} was removed or replaced while this server ran: another "
                "server may be running this record — stopping before asking the devices"
            )

    def close(self) -> None:
        """Release the lock (another server may then resume the run)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_durable_dir(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each new entry fsynced into its parent — a
    power loss cannot then drop a folder whose files the devices already acted on."""
    missing = []
    p = folder
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(f"{str(folder)!r} cannot be created: {exc}") from None
        sync_folder(d.parent)
