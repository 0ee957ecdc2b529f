"""Synthetic interaction streams with a known drift, to measure detection and false alarms.

Every window draws fresh users from one generative model: item popularity ``p_j``
(Zipf-like, exponent ``a``), latent item vectors ``y_j`` and user vectors ``x_u``; a user
with ``n_u`` interactions (log-normal around ``mean_activity``) picks ``n_u`` distinct
items with probability ∝ ``p_j · exp(⟨x_u, y_j⟩ / T)`` (Gumbel top-k). From window
``shift_at`` on, one part of the model changes:

* ``"popularity"`` — the popularity of a random ``shift_size`` share of the items is
  reassigned (new items become hits, old hits fade);
* ``"activity"`` — mean activity is multiplied by ``1 + shift_size``;
* ``"quality"`` — a ``shift_size`` share of the item vectors is redrawn (tastes change),
  so a model trained before the shift recommends worse.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from privrec.errors import ConfigError, DataError

__all__ = ["check_windows", "synthetic_stream", "time_windows"]

Shift = Literal["none", "popularity", "activity", "quality"]
SHIFTS: tuple[str, ...] = ("none", "popularity", "activity", "quality")


def synthetic_stream(
    n_windows: int,
    users_per_window: int = 2000,
    n_items: int = 300,
    *,
    shift: Shift = "none",
    shift_at: int | None = None,
    shift_size: float = 0.5,
    mean_activity: float = 12.0,
    popularity_exponent: float = 0.8,
    rank: int = 8,
    temperature: float = 0.25,
    seed: int = 0,
) -> list[sp.csr_matrix]:
    """``n_windows`` binary ``users × n_items`` matrices (fresh users in each window).

    ``shift_at`` is the 1-based index of the first shifted window (``None``: no shift).
    """
    if n_windows < 1 or users_per_window < 1 or n_items < 2:
        raise ConfigError("need n_windows >= 1, users_per_window >= 1 and n_items >= 2")
    if shift not in SHIFTS:
        raise ConfigError(f"unknown shift {shift!r}; choose one of: {', '.join(SHIFTS)}")
    positive = {"mean_activity": mean_activity, "temperature": temperature, "rank": rank}
    for name, value in {
        **positive,
        "shift_size": shift_size,
        "popularity_exponent": popularity_exponent,
    }.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0) or (
            name in positive and value <= 0
        ):
            raise ConfigError(
                f"{name} must be a finite number > 0 (≥ 0 for shift_size and "
                f"popularity_exponent), found {value!r}"
            )
    if shift != "none" and shift_at is None:
        raise ConfigError(f"shift={shift!r} needs shift_at")
    rng = np.random.default_rng(seed)
    pop = rng.permutation(1.0 / np.arange(1, n_items + 1) ** popularity_exponent)
    y = rng.normal(size=(n_items, rank)) / np.sqrt(rank)
    mean = mean_activity
    shifted_pop, shifted_y, shifted_mean = pop.copy(), y.copy(), mean
    moved = rng.random(n_items) < shift_size
    if shift == "popularity":
        shifted_pop[moved] = rng.permutation(pop[moved])
        shifted_pop[moved] = rng.permutation(pop)[: int(moved.sum())]
    elif shift == "quality":
        shifted_y[moved] = rng.normal(size=(int(moved.sum()), rank)) / np.sqrt(rank)
    elif shift == "activity":
        shifted_mean = mean * (1.0 + shift_size)
    out = []
    for w in range(1, n_windows + 1):
        after = shift_at is not None and w >= shift_at
        p, yy, m = (shifted_pop, shifted_y, shifted_mean) if after else (pop, y, mean)
        x = rng.normal(size=(users_per_window, rank)) / np.sqrt(rank)
        sigma = 0.8
        n_u = np.clip(
            np.round(rng.lognormal(np.log(m) - sigma**2 / 2, sigma, users_per_window)), 1, n_items
        ).astype(np.int64)
        keys = (
            np.log(p)[None, :]
            + (x @ yy.T) / temperature
            + rng.gumbel(size=(users_per_window, n_items))
        )
        order = np.argsort(-keys, axis=1)
        cols = np.concatenate([order[u, : n_u[u]] for u in range(users_per_window)])
        indptr = np.concatenate([[0], np.cumsum(n_u)])
        mat = sp.csr_matrix(
            (np.ones(cols.size, np.float32), cols, indptr), shape=(users_per_window, n_items)
        )
        mat.sort_indices()
        out.append(mat)
    return out


#: most windows one call may cut (a hostile timestamp range must not mean billions of windows)
MAX_WINDOWS = 10_000


def _window_index(data: Any, days: float) -> tuple[np.ndarray, float, float]:
    if not (days > 0 and np.isfinite(days)):
        raise ConfigError(f"window length must be a finite number of days > 0, found {days}")
    ts = getattr(data, "timestamps", None)
    if ts is None:
        raise ConfigError("the data has no timestamps: windows by time need them")
    try:
        t = np.asarray(ts, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            "timestamps must be numbers (seconds)", field="timestamps", found=type(ts).__name__
        ) from None
    if t.size == 0:
        return t, 0.0, -1.0
    bad = ~np.isfinite(t)
    if bad.any():  # NaN slipped past every comparison and failed as an untyped ValueError
        raise DataError(
            "some timestamps are not finite numbers: no window holds them",
            field="timestamps",
            expected="finite seconds",
            found=float(t[bad][0]),
        )
    w = np.floor(t / (days * 86400.0))
    first, last = float(w.min()), float(w.max())
    if last - first + 1 > MAX_WINDOWS:
        raise ConfigError(
            f"the timestamps span {last - first + 1:.3g} windows of {days:g} days "
            f"(at most {MAX_WINDOWS:,}): use longer windows or check the timestamps"
        )
    return w, first, last


def check_windows(data: Any, days: float) -> int:
    """Validate ``days`` against ``data`` as :func:`time_windows` would and count the windows.

    Cheap (no window is built): the CLI calls it on the raw data before the ledger records an
    access, so a bad window length is refused with nothing written.
    """
    _, first, last = _window_index(data, days)
    return int(last - first) + 1


def time_windows(data: Any, days: float) -> list[sp.csr_matrix]:
    """Split timestamped interactions into consecutive windows of ``days``.

    Timestamps are seconds (Unix time). The windows are a fixed calendar grid counted from the
    Unix epoch — not from the data's earliest interaction, which is one person's timestamp —
    and every window from the first to the last one holding data is returned, **empty ones
    included**: whether a window is released must not depend on whether someone was active in
    it (an empty window dropped would reveal that nobody was). What remains data-dependent,
    and is assumed public, is the span of the data at the grid's resolution (its first and last
    window). Every window keeps the whole item space; rows are the data's users (users without
    interactions in a window have empty rows).
    """
    w, first, last = _window_index(data, days)
    if w.size == 0:
        return []
    m = sp.csr_matrix(data.matrix)
    w = (w - first).astype(np.int64)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.argsort(w, kind="stable")
    bounds = np.searchsorted(w[order], np.arange(int(last - first) + 2))
    out = []
    for k in range(int(last - first) + 1):
        sel = order[bounds[k] : bounds[k + 1]]
        out.append(
            sp.csr_matrix(
                (np.ones(len(sel), np.float32), (rows[sel], m.indices[sel])), shape=m.shape
            )
        )
    return out
