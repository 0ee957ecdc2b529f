"""What a private fit releases, as it releases it: the :class:`Release` record and its hook.

A private model's guarantee lists its noisy statistics as released — for DPALS the
per-step Gramian and per-item right-hand sides as well as the final item factors — but the
model keeps only what it needs to score. Whoever may look at everything released (an
auditor, :mod:`privrec.audit`; a reviewer checking noise levels) passes ``on_release`` to
``fit`` and receives one :class:`Release` per noisy statistic, in the order the accounting
lists them (:func:`~privrec.models.dp_als_accounting.dpals_releases` for DPALS), each right
after its noise was added and its event recorded.

The hook sees **only released values**: the noisy array (never the clean statistic), the
noise it carries and its sensitivity as the accounting states them, and public or already
released context (the catalogue columns of its rows, the released item factors a step's
users were solved from). Everything it computes is post-processing, and it cannot change
the fit: each array is a read-only copy made for the hook (only when a hook is set, so
fitting without one costs nothing). It is a ``fit`` argument, not a hyper-parameter: it is
never part of the model's configuration or of a saved file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import dp_accounting
import numpy as np

__all__ = ["Release", "ReleaseHook", "read_only"]


@dataclass(frozen=True, eq=False)
class Release:
    """One noisy statistic exactly as a private fit released it.

    Attributes
    ----------
    label
        The accounting label, as in the guarantee's events and the model's list of releases
        (e.g. ``"step 2: noisy item right-hand sides"``).
    name
        A short, stable name of the statistic, for code that picks releases: for DPALS
        ``"lengths"`` (history-length histogram), ``"counts"``, ``"gramian"``, ``"lhs"``,
        ``"lhs_diagonal"`` and ``"rhs"``.
    step
        The private step (1..T) the statistic belongs to; ``None`` for one-off releases.
    value
        The released array, noise included (read-only copy). DPALS: the Gramian before its
        PSD projection (post-processing), right-hand sides one row per item of ``items``.
    noise_std
        Standard deviation of the Gaussian noise added to each released entry (each
        upper-triangle entry for symmetric matrices), in the statistic's units.
    sensitivity
        The L2 sensitivity of the whole ``value`` to one privacy unit, as the accounting
        states it; ``noise_std / sensitivity`` is ``event``'s noise multiplier.
    event
        The dp-accounting event charged for this release.
    items
        Catalogue columns of ``value``'s rows (per-item statistics of the trained items),
        else ``None``.
    item_factors
        For a step's statistics: the item factors (rows of ``items``) the step's users were
        solved from — data-independent at step 1, then the post-processing of the previous
        steps' releases. ``None`` otherwise.
    """

    label: str
    name: str
    step: int | None
    value: np.ndarray
    noise_std: float
    sensitivity: float
    event: dp_accounting.DpEvent
    items: np.ndarray | None = None
    item_factors: np.ndarray | None = None

    @property
    def noise_multiplier(self) -> float:
        """``noise_std / sensitivity``: the event's multiplier."""
        return self.noise_std / self.sensitivity


#: ``fit(…, on_release=hook)``: called once per :class:`Release`, after its noise is added
ReleaseHook = Callable[[Release], None]


@overload
def read_only(a: np.ndarray) -> np.ndarray: ...
@overload
def read_only(a: None) -> None: ...
def read_only(a: np.ndarray | None) -> np.ndarray | None:
    """A read-only copy of ``a``: the hook may keep it, and cannot write into the fit's arrays."""
    if a is None:
        return None
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out
