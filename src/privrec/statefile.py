"""A small JSON file that a party keeps across sessions to bound what it will still release.

Used where a limit must survive restarts and concurrent processes — a cross-silo party's count
of answered releases (:mod:`privrec.secure.release_log`), a federated device's own privacy
budget (:mod:`privrec.federated.flower.budget`). The rules such a file needs, in one place:

- **locked**: an exclusive ``flock`` on a ``<name>.lock`` beside it is held while a count is
  read, checked and written, so two processes cannot both take the last unit;
- **written before use**: the caller writes the new count before the release it allows is
  computed, atomically (temporary file, ``fsync``, rename, ``fsync`` of the folder) — a crash
  can only over-count;
- **refused, never overwritten**: a file that is not of the expected format and version, or is
  far larger than one can be, is a :class:`~privrec.errors.ConfigError` and is left as it is;
- **links**: the file is kept where a symlink at its name points (replacing the link by a file
  would leave anyone using the target's own path counting apart); a link planted at the lock's
  name is not followed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from privrec.errors import ConfigError

__all__ = ["StateFile"]


class StateFile:
    """One JSON document ``{"format": FORMAT, "version": VERSION, **content}`` at ``path``.

    Parameters
    ----------
    path
        The file; its folder must exist. Created by the first :meth:`write`.
    format, version
        What the document must say it is; anything else is refused.
    what
        How errors name the file (e.g. ``"release log"``).
    max_bytes
        Refuse a file larger than this (it cannot be one of ours).
    """

    def __init__(
        self, path: Path | str, *, format: str, version: int, what: str, max_bytes: int
    ) -> None:
        self.path = Path(os.path.realpath(path))
        self.format, self.version, self.what, self.max_bytes = format, version, what, max_bytes
        if not self.folder.is_dir():
            raise ConfigError(f"{what} {str(self.path)!r}: its folder does not exist")

    @property
    def folder(self) -> Path:
        return self.path.parent if str(self.path.parent) else Path(".")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's exclusive lock (across processes) for the block."""
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> dict[str, Any] | None:
        """The document without its ``format``/``version`` keys; ``None`` if there is no file.

        Raises :class:`~privrec.errors.ConfigError` for a file that cannot be read as JSON or
        does not say it is this format and version (the caller checks the rest).
        """
        if not self.path.exists():
            return None
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(self.max_bytes + 1)
            if len(raw) > self.max_bytes:
                raise ValueError("too large")
            doc: Any = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.what} {str(self.path)!r} cannot be read as one ({exc}); it is left as it is"
            ) from None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != self.format
            or doc.get("version") != self.version
        ):
            raise self.foreign()
        return {k: v for k, v in doc.items() if k not in ("format", "version")}

    def foreign(self) -> ConfigError:
        """The error for a file that is not a valid document of this kind."""
        return ConfigError(f"{str(self.path)!r} is not a privrec {self.what}; it is left as it is")

    def write(self, content: dict[str, Any]) -> None:
        """Replace the document atomically and durably (mode 0600, as ``mkstemp`` creates it)."""
        doc = {"format": self.format, "version": self.version, **content}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, sort_keys=True, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # the rename itself, on disk
            dfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
