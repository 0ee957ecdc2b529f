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

from collections import Counter
from pathlib import Path

from privrec.errors import ConfigError
from privrec.secure.silo_config import AnyConfig, release_limits, run_fingerprint
from privrec.statefile import StateFile

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
        self.file = (
            None
            if path is None
            else StateFile(
                path, format=FORMAT, version=_VERSION, what="release log", max_bytes=_MAX_BYTES
            )
        )
        self.path = None if self.file is None else self.file.path
        self.run = run_fingerprint(config)
        self.limits = release_limits(config)
        self._memory: Counter[str] = Counter()
        if self.file is not None:
            self._read()  # a damaged or foreign file is refused now, not at the first release

    def answered(self, kind: str) -> int:
        """Releases of ``kind`` answered for this run so far."""
        if self.file is None:
            return self._memory[kind]
        with self.file.locked():
            return int(self._read().get(self.run, {}).get(kind, 0))

    def take(self, kind: str) -> None:
        """Count one more release of ``kind``, or raise :class:`~privrec.errors.ConfigError`
        if the run's limit is reached (nothing is counted then)."""
        limit = self.limits.get(kind, 0)
        if self.file is None:
            if self._memory[kind] >= limit:
                raise ConfigError(f"a {kind!r} release beyond the {limit} the configuration plans")
            self._memory[kind] += 1
            return
        with self.file.locked():
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
    def _read(self) -> dict[str, dict[str, int]]:
        assert self.file is not None
        doc = self.file.read()
        if doc is None:
            return {}
        runs = doc.get("runs")
        if not isinstance(runs, dict) or not all(
            isinstance(k, str)
            and isinstance(v, dict)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v.values())
            for k, v in runs.items()
        ):
            raise self.file.foreign()
        return {k: {str(kind): int(n) for kind, n in v.items()} for k, v in runs.items()}

    def _write(self, runs: dict[str, dict[str, int]]) -> None:
        assert self.file is not None
        self.file.write({"runs": runs})
