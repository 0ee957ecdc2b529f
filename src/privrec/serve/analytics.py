"""Differentially private analytics queries over a registered dataset.

Four queries, each one Gaussian mechanism (:func:`privrec.privacy.mechanisms.gaussian`) on a
vector of counts whose L2 sensitivity follows from a contribution bound enforced *before* the
noise. Each states, in :class:`QueryPlan`:

* the **unit** and neighbouring relation: the dataset's privacy unit (add or remove one user's
  whole history, or one interaction — dp-accounting's ``ADD_OR_REMOVE_ONE``);
* the **sensitivity** Δ (L2 norm of the largest change one unit makes to the count vector);
* the **event**: one ``GaussianDpEvent(z)``, ``z`` calibrated by privrec's accountant so that
  the query alone is (ε, δ)-DP; the ledger composes it with everything else charged.

=================  ===========================================  ==================================
query              user unit: contribution bound → Δ             interaction unit → Δ
=================  ===========================================  ==================================
item counts        ≤ B of the asked items per user               1 (one interaction, one count)
                   (uniform sample) → √min(B, m)
top-k popular      the same over the whole catalogue → √min(B, n) 1
co-occurrence      ≤ b = min(B, m) of the set's items per user   √(m − 1): one interaction (u, i)
                   → b(b − 1)/2 pairs change by 1 → √(b(b−1)/2)  is in at most m − 1 pairs
segment counts     a user is in one segment → 1                  1: one interaction makes at most
                                                                 one user active or inactive
=================  ===========================================  ==================================

What is assumed public: the item catalogue (the item ids of the registered data file, as every
privrec model file already publishes them), the declared segment values, and the query itself
(which items, which column). Everything released is the noisy vector and what is computed from
it alone (rounding, the top-k order): post-processing, free under DP.

Every function here is pure (data in, noisy numbers out); charging the ledger before any of them
runs is :mod:`privrec.serve.queries`' job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import dp_accounting
import numpy as np
import scipy.sparse as sp

from privrec.errors import ConfigError
from privrec.privacy.accounting import calibrate
from privrec.privacy.budget import Budget
from privrec.privacy.contribution import sample_per_user
from privrec.privacy.events import SpentEvent, event_to_dict
from privrec.privacy.mechanisms import gaussian, gaussian_event
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "QUERY_KINDS",
    "QueryPlan",
    "cooccurrence_counts",
    "item_counts",
    "noise_multiplier",
    "plan_query",
    "segment_counts",
    "top_k_popular",
]

QUERY_KINDS = ("item_counts", "top_k", "cooccurrence", "segment_counts")


@lru_cache(maxsize=256)
def noise_multiplier(epsilon: float, delta: float) -> float:
    """The smallest Gaussian noise multiplier z with ε(z) ≤ ``epsilon`` at ``delta`` (PLD, exact).

    One unsampled Gaussian release: the PLD accountant evaluates it in closed form (Balle & Wang
    2018), so the ε recomputed from the charged event is exactly what the analyst asked for (up
    to the root search's nudge towards more noise).
    """
    return calibrate(Budget(epsilon, delta), gaussian_event)


def sensitivity(kind: str, unit: PrivacyUnit, *, m: int, bound: int) -> float:
    """L2 sensitivity of ``kind`` over ``m`` items (or segments) under ``unit`` with per-user bound B."""
    if kind in ("item_counts", "top_k"):
        return 1.0 if unit is PrivacyUnit.INTERACTION else math.sqrt(min(bound, m))
    if kind == "cooccurrence":
        if m < 2:
            raise ConfigError("a co-occurrence query needs at least 2 items")
        if unit is PrivacyUnit.INTERACTION:
            return math.sqrt(m - 1)
        b = min(bound, m)
        if b < 2:
            raise ConfigError("co-occurrence needs a per-user bound of at least 2 items")
        return math.sqrt(b * (b - 1) / 2)
    if kind == "segment_counts":
        return 1.0
    raise ConfigError(f"unknown query {kind!r}; choose one of {', '.join(QUERY_KINDS)}")


@dataclass(frozen=True)
class QueryPlan:
    """Everything about a query's privacy, fixed before any data is touched.

    ``events`` is what the ledger charges (write-ahead); ``describe`` what the API returns.
    """

    kind: str
    epsilon: float
    delta: float
    unit: PrivacyUnit
    sensitivity: float
    noise_multiplier: float
    bound: int
    contribution: str

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise on every released count: z · Δ."""
        return self.noise_multiplier * self.sensitivity

    @property
    def event(self) -> dp_accounting.DpEvent:
        return gaussian_event(self.noise_multiplier)

    def events(self) -> list[SpentEvent]:
        return [SpentEvent(f"{self.kind} query (Gaussian)", self.event)]

    def describe(self) -> dict[str, Any]:
        return {
            "mechanism": "Gaussian",
            "epsilon": self.epsilon,
            "delta": self.delta,
            "unit": self.unit.value,
            "neighbouring": self.unit.neighbouring,
            "sensitivity_l2": self.sensitivity,
            "contribution_bound": self.contribution,
            "noise_multiplier": self.noise_multiplier,
            "noise_std": self.sigma,
            "event": event_to_dict(self.event),
        }


def plan_query(
    kind: str, *, epsilon: float, delta: float, unit: PrivacyUnit, m: int, bound: int
) -> QueryPlan:
    """Calibrate ``kind`` over ``m`` items (segments) for (ε, δ) under ``unit`` and bound B."""
    if bound < 1:
        raise ConfigError(f"the per-user contribution bound must be >= 1, found {bound}")
    sens = sensitivity(kind, unit, m=m, bound=bound)
    z = noise_multiplier(float(epsilon), float(delta))
    if kind == "segment_counts":
        words = "each user is counted in at most one segment, once"
    elif unit is PrivacyUnit.INTERACTION:
        words = "each interaction is counted once"
    elif kind == "cooccurrence":
        words = f"at most {min(bound, m)} of the set's items per user (uniform sample)"
    else:
        words = f"at most {min(bound, m)} of the counted items per user (uniform sample)"
    return QueryPlan(kind, float(epsilon), float(delta), unit, sens, z, int(bound), words)


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    m.eliminate_zeros()
    m.data[:] = 1.0
    return m


def _bounded(
    sub: sp.csr_matrix, plan: QueryPlan, rng: np.random.Generator, per_user: int
) -> sp.csr_matrix:
    """The user-unit contribution bound: ≤ ``per_user`` entries of each row (uniform, independent)."""
    if plan.unit is PrivacyUnit.USER:
        return sample_per_user(sub, per_user, rng)
    return sub


def _exact_item_counts(
    matrix: sp.csr_matrix, cols: np.ndarray, plan: QueryPlan, rng: np.random.Generator
) -> np.ndarray:
    sub = _bounded(_binary(matrix[:, cols]), plan, rng, plan.bound)
    return np.bincount(sub.indices, minlength=len(cols)).astype(np.float64)


def item_counts(
    matrix: sp.csr_matrix, cols: np.ndarray, plan: QueryPlan, rng: np.random.Generator
) -> np.ndarray:
    """Noisy number of users (interactions, under the interaction unit) of each item in ``cols``."""
    exact = _exact_item_counts(matrix, cols, plan, rng)
    return gaussian(exact, plan.noise_multiplier, plan.sensitivity, rng)


def top_k_popular(
    matrix: sp.csr_matrix, k: int, plan: QueryPlan, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and noisy counts of the ``k`` items with the largest noisy counts (whole catalogue)."""
    cols = np.arange(matrix.shape[1])
    noisy = item_counts(matrix, cols, plan, rng)
    kk = min(int(k), noisy.shape[0])
    top = np.argsort(-noisy, kind="stable")[:kk]  # post-processing of the noisy vector
    return top, noisy[top]


def _exact_pairs(
    matrix: sp.csr_matrix, cols: np.ndarray, plan: QueryPlan, rng: np.random.Generator
) -> np.ndarray:
    per_user = min(plan.bound, len(cols))
    sub = _bounded(_binary(matrix[:, cols]), plan, rng, per_user)
    co = (sub.T @ sub).toarray()
    iu = np.triu_indices(len(cols), k=1)
    return np.asarray(co[iu], dtype=np.float64)


def cooccurrence_counts(
    matrix: sp.csr_matrix, cols: np.ndarray, plan: QueryPlan, rng: np.random.Generator
) -> np.ndarray:
    """Noisy number of users who have both items, for every pair i < j of ``cols`` (row-major)."""
    exact = _exact_pairs(matrix, cols, plan, rng)
    return gaussian(exact, plan.noise_multiplier, plan.sensitivity, rng)


def _exact_segments(
    matrix: sp.csr_matrix, codes: np.ndarray, n_values: int, cols: np.ndarray | None
) -> np.ndarray:
    m = _binary(matrix if cols is None else matrix[:, cols])
    active = np.diff(m.indptr) > 0
    keep = active & (codes >= 0)
    return np.bincount(codes[keep], minlength=n_values).astype(np.float64)


def segment_counts(
    matrix: sp.csr_matrix,
    codes: np.ndarray,
    n_values: int,
    cols: np.ndarray | None,
    plan: QueryPlan,
    rng: np.random.Generator,
) -> np.ndarray:
    """Noisy number of active users in each declared segment value.

    ``codes[u]`` is user ``u``'s segment (index into the declared values, ``-1``: not declared,
    never counted). A user is active when they have an interaction (with one of ``cols``, when
    given).
    """
    exact = _exact_segments(matrix, codes, n_values, cols)
    return gaussian(exact, plan.noise_multiplier, plan.sensitivity, rng)
