"""Canary users: how an audit plants detectable users in the training data.

A canary is a synthetic user whose presence the released output should reveal
**when there is no noise**: each canary interacts with its own set of *canary items*,
extra catalogue columns that no real user touches. Without noise, the released
statistic of a canary item (its count, its Gram entries, its item-step right-hand
side) is a deterministic function of which canaries were included, so a score summed
over a canary's items separates included from excluded canaries perfectly. The noise
the mechanism adds is then the only thing standing between the auditor and the
canary's membership bit, which is exactly what DP is meant to bound.

Two knobs:

* ``items_per_canary`` (L). With L equal to the model's per-user bound (B items for
  DPPopularity and DPALS, C for DPEASE), a canary spends exactly its sensitivity
  budget: the tightest bound on a correct model. With L several times the bound, a
  correct model caps the canary and the score gains nothing, while a model that forgot
  the cap lets the canary contribute L: this "heavy" design catches missing
  contribution bounds.
* ``pool_items`` (P). ``None`` gives every canary its own L items (canaries never
  interfere). A pool of P shared items keeps the catalogue small for models whose
  released statistics grow with the catalogue (DPEASE's dense Gram matrix, DPALS's
  per-item statistics); canaries sharing an item add a little interference that is far
  below the DP noise at any meaningful ε.

Canaries are included independently with probability ½ (the one-run audit's
requirement); the inclusion bits are drawn from a seeded generator — they are the
auditor's secret, not privacy noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError

__all__ = ["Canaries", "CanaryDesign", "plant"]


@dataclass(frozen=True)
class CanaryDesign:
    """How many canaries, how many items each, from how many canary items.

    Attributes
    ----------
    n_canaries
        m, canary users (each included with probability ½).
    items_per_canary
        L, items in each canary's history.
    pool_items
        P, size of the shared pool of canary items; ``None``: L dedicated items per
        canary (m·L canary items).
    label
        Short name for reports (e.g. ``"tight"``, ``"heavy"``).
    """

    n_canaries: int = 2000
    items_per_canary: int = 100
    pool_items: int | None = None
    label: str = "tight"

    def __post_init__(self) -> None:
        if self.n_canaries < 1:
            raise ConfigError(f"n_canaries must be >= 1, found {self.n_canaries}")
        if self.items_per_canary < 1:
            raise ConfigError(f"items_per_canary must be >= 1, found {self.items_per_canary}")
        if self.pool_items is not None and self.pool_items < self.items_per_canary:
            raise ConfigError(
                f"pool_items ({self.pool_items}) must be >= items_per_canary "
                f"({self.items_per_canary})"
            )

    @property
    def n_canary_items(self) -> int:
        if self.pool_items is None:
            return self.n_canaries * self.items_per_canary
        return self.pool_items


@dataclass(frozen=True, eq=False)
class Canaries:
    """Planted canaries: their histories, which were included, and the training data.

    Attributes
    ----------
    design
        The :class:`CanaryDesign` used.
    histories
        ``(m, n_items)`` CSR over the *combined* catalogue (base items first, then the
        canary items): canary ``i``'s items.
    included
        ``(m,)`` bool, which canaries are in ``data``.
    data
        Base users followed by the included canaries, over the combined catalogue.
    n_base_users, n_base_items
        Size of the data the canaries were added to.
    """

    design: CanaryDesign
    histories: sp.csr_matrix
    included: np.ndarray
    data: Interactions
    n_base_users: int
    n_base_items: int

    @property
    def m(self) -> int:
        return int(self.included.size)

    @property
    def canary_items(self) -> np.ndarray:
        """Column indices of the canary items in the combined catalogue."""
        return np.arange(self.n_base_items, self.data.n_items)

    @property
    def rows(self) -> np.ndarray:
        """Row of each canary in ``data`` (``-1`` for excluded canaries)."""
        out = np.full(self.m, -1, dtype=np.int64)
        out[self.included] = self.n_base_users + np.arange(int(self.included.sum()))
        return out


def plant(
    base: Interactions | sp.spmatrix | sp.sparray,
    design: CanaryDesign,
    seed: int | None = None,
    included: np.ndarray | None = None,
) -> Canaries:
    """Add canary items to the catalogue and the included canaries to the users.

    ``included`` fixes the membership bits (e.g. every canary in or out for a multi-run
    audit); by default each is included with probability ½.
    """
    matrix = base.matrix if isinstance(base, Interactions) else base
    x = sp.csr_matrix(matrix, dtype=np.float32, copy=True)  # type: ignore[call-overload]
    x.data[:] = 1.0
    n_u, n_i = x.shape
    m, length = design.n_canaries, design.items_per_canary
    rng = np.random.default_rng(seed)
    if design.pool_items is None:
        cols = np.arange(m * length, dtype=np.int64).reshape(m, length)
    else:
        # L distinct pool items per canary: the L smallest of P uniform keys
        keys = rng.random((m, design.pool_items))
        cols = np.sort(np.argpartition(keys, length - 1, axis=1)[:, :length], axis=1)
    n_total = n_i + design.n_canary_items
    hist = sp.csr_matrix(
        (
            np.ones(m * length, dtype=np.float32),
            (cols + n_i).ravel(),
            np.arange(0, m * length + 1, length),
        ),
        shape=(m, n_total),
    )
    if included is None:
        inc = rng.random(m) < 0.5
    else:
        inc = np.asarray(included, dtype=bool).ravel()
        if inc.size != m:
            raise ConfigError(f"included must have {m} entries, found {inc.size}")
    padded = sp.csr_matrix((x.data, x.indices, x.indptr), shape=(n_u, n_total))
    combined = sp.vstack([padded, hist[inc]], format="csr")
    return Canaries(
        design=design,
        histories=hist,
        included=inc,
        data=Interactions.from_csr(combined),
        n_base_users=n_u,
        n_base_items=n_i,
    )
