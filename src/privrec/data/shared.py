"""Locate the real public datasets kept *beside* the project, never inside it.

Several of these datasets may not be redistributed, so privrec never ships or
copies them: tests and benchmarks find them through :func:`shared_data_dir`
and skip with a clear reason when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "shared_data_dir", "shared_dataset"]

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
