"""Durable marks of FederatedMF rounds whose unmask request went out (``round-NNNN.unmasking``).

Why: once a round's unmask request is out, the replies the server receives may decode that
attempt's sum — a release, whether the round then completes, aborts or the server dies. The
coordinator charges a completed or aborted training round in its checkpoint, but a crash between
the unmask request and the saved checkpoint would leave the release uncharged, and the next run
(resuming by default) would ask the devices again. So the coordinator writes this mark (fsynced)
before the unmask request and removes it only once the round's charge is saved; a run that finds
a mark settles it first (:meth:`~privrec.federated.flower.coordinator.Coordinator.run`): a
training round not in the checkpoint is charged and its update discarded, a counting round that
never completed refuses the run (a new run's ε composes with that attempt).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from privrec.errors import ConfigError
from privrec.federated.flower.run_lock import make_durable_dir
from privrec.models.persistence import sync_folder

__all__ = ["UnmaskMarks"]

_MARK = re.compile(r"round-(\d{4,9})\.unmasking")


class UnmaskMarks:
    """The unmask marks in a checkpoint folder (``None`` folder: nothing is kept)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _path(self, round_: int) -> Path:
        assert self.folder is not None
        return self.folder / f"round-{round_:04d}.unmasking"

    def mark(self, round_: int) -> None:
        """Round ``round_`` (0: the counting round) is about to send its unmask request."""
        if self.folder is None:
            return
        make_durable_dir(self.folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self._path(round_), flags, 0o600)
        except FileExistsError:
            raise ConfigError(
                f"{str(self._path(round_))!r} already exists: an earlier attempt of this round "
                "went past its unmask request and was not settled"
            ) from None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sync_folder(self.folder)

    def clear(self, round_: int) -> None:
        """Round ``round_``'s charge (or its counts) is saved: its mark can go."""
        if self.folder is None:
            return
        self._path(round_).unlink(missing_ok=True)
        sync_folder(self.folder)

    def pending(self) -> list[int]:
        """The rounds marked and not cleared, in order."""
        if self.folder is None or not self.folder.is_dir():
            return []
        out = [int(m.group(1)) for n in os.listdir(self.folder) if (m := _MARK.fullmatch(n))]
        return sorted(out)
