"""How many releases of each kind a cross-silo server or silo has answered for a run — kept
across sessions in a file, so that restarting a session does not reset the count.

Why: a server (or silo) refuses more releases of a kind than the run's configuration plans
(:func:`~privrec.secure.silo_config.release_limits`), since a driver asking for the same
statistic again and again could average its noise away. Counted in memory, that limit holds
for one session only: a lying driver could abort and restart the session (as a resumed run
does) and be answered afresh every time. With a log the count survives restarts; a resumed run
that must redo a step some party had already answered needs the configuration's ``retries``,
which the noise pays for, and a new run needs a new configuration (``privrec silo config``
gives each run its own ``run_id``).

The file is JSON — ``{"format": "privrec-release-log", "version": 1, "runs": {fingerprint:
{kind: answered}}}`` — keyed by :func:`~privrec.secure.silo_config.run_fingerprint`; it holds
no data, only counts of releases. Every count is written (atomically, flushed to disk) before
the release it allows is computed, under an exclusive lock, so a crash can only over-count. A
file that is not such a log is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from privrec.errors import ConfigError
from privrec.secure.silo_config import AnyConfig, release_limits, run_fingerprint

__all__ = ["FORMAT", "ReleaseLog"]

FORMAT = "privrec-release-log"
_VERSION = 1
#: a log is a few hundred bytes per run; anything far larger is not one
_MAX_BYTES = 1 << 22


class ReleaseLog:
    """The releases one party has answered for one run: in memory, or in ``path`` across
    sessions (and processes: the file is locked while a count is taken).

    Parameters
    ----------
    path
        The log file (created on the first release; its folder must exist), or ``None`` to
        count in memory for this object's life only.
    config
        The run's public configuration: its fingerprint keys the counts, its release limits
        (with ``retries``) bound them.
    """

    def __init__(self, path: Path | str | None, config: AnyConfig) -> None:
        # a symlinked log is kept where it points: replacing the link by a file would leave
        # anyone using the target's own path counting apart
        self.path = None if path is None else Path(os.path.realpath(path))
        self.run = run_fingerprint(config)
        self.limits = release_limits(config)
        self._memory: Counter[str] = Counter()
        if self.path is not None:
            parent = self.path.parent if str(self.path.parent) else Path(".")
            if not parent.is_dir():
                raise ConfigError(f"release log {str(self.path)!r}: its folder does not exist")
            if self.path.exists():
                self._read()  # a damaged or foreign file is refused now, not at the first release

    def answered(self, kind: str) -> int:
        """Releases of ``kind`` answered for this run so far."""
        if self.path is None:
            return self._memory[kind]
        with self._locked():
            return int(self._read().get(self.run, {}).get(kind, 0))

    def take(self, kind: str) -> None:
        """Count one more release of ``kind``, or raise :class:`~privrec.errors.ConfigError`
        if the run's limit is reached (nothing is counted then)."""
        limit = self.limits.get(kind, 0)
        if self.path is None:
            if self._memory[kind] >= limit:
                raise ConfigError(f"a {kind!r} release beyond the {limit} the configuration plans")
            self._memory[kind] += 1
            return
        with self._locked():
            runs = self._read()
            counts = runs.setdefault(self.run, {})
            done = int(counts.get(kind, 0))
            if done >= limit:
                raise ConfigError(
                    f"a {kind!r} release beyond the {limit} the configuration plans: this run "
                    f"had {done} answered (release log {str(self.path)!r}, kept across "
                    "sessions); a resumed run that redoes a step needs `retries` in the "
                    "configuration, a new run a new configuration (`privrec silo config`)"
                )
            counts[kind] = done + 1
            self._write(runs)

    # ------------------------------------------------------------------------------ file
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        lock = self.path.with_name(self.path.name + ".lock")
        # a link planted at the lock's name is not followed (it would create or lock its target)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, dict[str, int]]:
        assert self.path is not None
        if not self.path.exists():
            return {}
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(_MAX_BYTES + 1)
            if len(raw) > _MAX_BYTES:
                raise ValueError("too large")
            doc: Any = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"release log {str(self.path)!r} cannot be read as one ({exc}); it is left as it "
                "is — move it away only if you know no run it counts can be resumed"
            ) from None
        runs = doc.get("runs") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != FORMAT
            or doc.get("version") != _VERSION
            or not isinstance(runs, dict)
            or not all(
                isinstance(k, str)
                and isinstance(v, dict)
                and all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v.values()
                )
                for k, v in runs.items()
            )
        ):
            raise ConfigError(
                f"{str(self.path)!r} is not a privrec release log; it is left as it is"
            )
        return {k: {str(kind): int(n) for kind, n in v.items()} for k, v in runs.items()}

    def _write(self, runs: dict[str, dict[str, int]]) -> None:
        assert self.path is not None
        doc = {"format": FORMAT, "version": _VERSION, "runs": runs}
        folder = self.path.parent if str(self.path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
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
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
