"""The set-up every benchmark script shares: thread default, machine record, shared data, δ and K.

Imported first by the scripts in this folder (``python benchmarks/<script>.py`` puts the folder
on ``sys.path``), so the thread default is in place before numba is loaded. Only the shared
setting lives here — each script keeps its own datasets, grids and helpers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# numba reads this once, when privrec first loads it: the scripts' medians are for 2 threads
# unless the caller says otherwise
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

#: this folder (results/ lives under it)
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when a script is imported rather than run
    sys.path.insert(0, str(HERE))

from machine import machine_info, machine_markdown  # noqa: E402

#: the shared, read-only datasets (never copied into the repository)
DATA = Path(os.environ.get("PRIVREC_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
#: δ of every (ε, δ) guarantee the benchmarks report
DELTA = 1e-5
#: the cut-off of Recall@K / NDCG@K
K = 20

__all__ = [
    "DATA",
    "DELTA",
    "HERE",
    "K",
    "machine_info",
    "machine_markdown",
    "merge_parts",
    "run_dates",
]


def merge_parts(
    parts: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """The rows of ``parts`` (``--part`` JSON files, oldest first) with a later part's row
    replacing an earlier one of the same ``key``; each row keeps the date of its run."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for part in parts:
        for row in part["rows"]:
            merged[key(row)] = {**row, "run": row.get("run", part["date"])}
    return list(merged.values())


def run_dates(rows: Sequence[dict[str, Any]], date: str) -> str:
    """`` (rows of … kept from the run of …)`` for data sets whose rows are older than ``date``."""
    older = {r["dataset"]: r["run"] for r in rows if r.get("run", date) != date}
    if not older:
        return ""
    kept = "; ".join(f"{ds}: {when}" for ds, when in older.items())
    return f" (rows kept from an earlier run — {kept})"
