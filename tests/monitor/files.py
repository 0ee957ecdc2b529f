"""Small timestamped data files for the monitor's CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def timed_udata(folder: Path) -> Path:
    """``u.data`` of 200 users, an interaction every 3 days over 60 days (seeded)."""
    rng = np.random.default_rng(0)
    lines = [
        f"{u}\t{int(i)}\t5\t{1_600_000_000 + d * 86400}"
        for u in range(1, 201)
        for d, i in zip(range(0, 60, 3), rng.integers(1, 40, size=20), strict=False)
    ]
    data = folder / "u.data"
    data.write_text("\n".join(lines) + "\n")
    return data
