"""Locate the real public datasets kept *beside* the project, never inside it.

Several of these datasets may not be redistributed, so privrec never ships or
copies them: tests and benchmarks find them through :func:`shared_data_dir`
and skip with a clear reason when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "resolve_shared_path", "shared_data_dir", "shared_dataset"]

ENV_VAR = "PRIVREC_DATA"


def _candidates() -> list[Path]:
    out: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out.append(Path(env))
    here = Path(__file__).resolve()
    # <repo>/src/privrec/data/shared.py -> <repo>/../shared/data
    for parent in here.parents:
        out.append(parent.parent / "shared" / "data")
        if (parent / "pyproject.toml").exists():
            break
    out.append(Path.cwd().parent / "shared" / "data")
    return out


def shared_data_dir() -> Path | None:
    """The shared data folder (``$PRIVREC_DATA`` first, then ``../shared/data``), or ``None``."""
    for c in _candidates():
        if c.is_dir():
            return c
    return None


def shared_dataset(name: str) -> Path | None:
    """Folder of one shared dataset (e.g. ``"ml-100k"``), or ``None`` if it is not there."""
    root = shared_data_dir()
    if root is None:
        return None
    path = root / name
    return path if path.exists() else None


def resolve_shared_path(path: str | Path) -> Path:
    """``path`` as given when it exists; else, for a path into a ``shared/data`` folder
    (``../shared/data/ml-1m-implicit-r3``, as written relative to a checkout), the same
    dataset under :func:`shared_data_dir` — so a configuration file works from any working
    directory and with ``$PRIVREC_DATA``. Anything else is returned unchanged (the loader then
    reports the missing file)."""
    p = Path(path)
    if p.exists():
        return p
    parts = p.parts
    for i in range(len(parts) - 1):
        if parts[i] == "shared" and parts[i + 1] == "data" and i + 2 < len(parts):
            root = shared_data_dir()
            if root is not None and (root.joinpath(*parts[i + 2 :])).exists():
                return root.joinpath(*parts[i + 2 :])
    return p
