"""Membership inference from recommendation lists: the risk users actually ask about.

Threat: the attacker knows part of a person's history (say, from a public profile) and
can get recommendations for any history — by opening an account with that part, the
"recommendations → other users" channel. Was the person in the training data? A model
that memorised them recommends the *rest* of their history more readily.

Attack (black box, top-k lists only):

1. users are split at random into members (the model is trained on their whole
   history) and non-members (never seen);
2. each target's history is split at random into a visible half, given to the model as
   a new user's history (``recommend_history``), and a hidden half;
3. the attack score is the share of the hidden half that appears in the returned top-k
   list (``|top-k ∩ hidden| / min(k, |hidden|)``);
4. the attack's power is the AUC of member against non-member scores (0.5: no better
   than a coin), with a bootstrap interval.

For user-level (ε, δ)-DP models whose lists are post-processing of the release and the
querying history (every privrec private model serves new users this way), any attack
has AUC at most :func:`dp_auc_bound` (ε, δ); the non-private models have no such bound.
Neither have interaction-level models here: membership is that of a whole user, many
neighbours apart (group privacy over a history of n interactions gives nε and a δ grown
by ~n·e^{(n−1)ε}, vacuous for real histories), so no bound is shown for them.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.integrate
import scipy.sparse as sp

from privrec.audit.bounds import auc, auc_confidence_interval
from privrec.data.interactions import Interactions
from privrec.errors import ConfigError, PrivacyWarning
from privrec.privacy.units import PrivacyUnit

__all__ = ["MembershipResult", "dp_auc_bound", "recommendation_mia", "split_visible"]


def dp_auc_bound(epsilon: float, delta: float) -> float:
    """Largest AUC any membership test can reach against an (ε, δ)-DP mechanism.

    Every test satisfies ``TPR ≤ min(1, e^ε·FPR + δ, 1 − e^{−ε}(1 − δ − FPR))``
    (Kairouz et al. 2015); the bound is the area under that curve.

    >>> round(dp_auc_bound(0.0, 0.0), 6)
    0.5
    """
    if epsilon < 0 or not 0 <= delta < 1:
        raise ConfigError(f"need epsilon >= 0 and 0 <= delta < 1, found {epsilon}, {delta}")
    e = math.exp(min(epsilon, 700.0))

    def tpr(x: float) -> float:
        return min(1.0, e * x + delta, 1.0 - (1.0 - delta - x) / e)

    knee = (1.0 - delta) / (e + 1.0)  # where the two lines meet
    val, _ = scipy.integrate.quad(tpr, 0.0, 1.0, points=[knee], limit=200)
    return float(min(1.0, val))


def split_visible(
    matrix: sp.csr_matrix, fraction: float, rng: np.random.Generator
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Each row's items split at random into a visible part (``fraction``) and a hidden part."""
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    m.data[:] = 1.0
    keys = rng.random(m.nnz)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((keys, rows))
    pos = np.empty(m.nnz, dtype=np.int64)
    pos[order] = np.arange(m.nnz) - np.repeat(m.indptr[:-1], np.diff(m.indptr))
    n_vis = np.maximum(1, np.floor(np.diff(m.indptr) * fraction)).astype(np.int64)
    vis = pos < n_vis[rows]
    visible = sp.csr_matrix((m.data * vis, m.indices.copy(), m.indptr.copy()), shape=m.shape)
    hidden = sp.csr_matrix((m.data * ~vis, m.indices.copy(), m.indptr.copy()), shape=m.shape)
    visible.eliminate_zeros()
    hidden.eliminate_zeros()
    return visible, hidden


@dataclass(frozen=True)
class MembershipResult:
    """AUC of the recommendation-list membership attack on one model."""

    model: str
    auc: float
    auc_low: float
    auc_high: float
    members: int
    non_members: int
    k: int
    member_hit_rate: float
    non_member_hit_rate: float
    epsilon: float | None
    auc_bound: float | None
    seconds: float
    #: privacy unit of the model's guarantee (``None``: non-private); the AUC bound needs "user"
    unit: str | None = None

    def to_dict(self, *, exact: bool = False) -> dict[str, Any]:
        """JSON-friendly dict. By default fit to leave the machine as the evaluation reports
        are: group sizes to two significant figures, AUCs to 3 decimals and hit rates (counts
        over the members) to 2 — exact numbers would give the eligible users' count away.
        ``exact=True`` keeps everything (in-process use)."""
        d = asdict(self)
        if exact:
            return d
        from privrec.evaluation.protocol import approx_count

        d["members"], d["non_members"] = approx_count(self.members), approx_count(self.non_members)
        for name in ("auc", "auc_low", "auc_high"):
            d[name] = round(float(d[name]), 3)
        for name in ("member_hit_rate", "non_member_hit_rate"):
            d[name] = round(float(d[name]), 2)
        return d

    def summary(self) -> str:
        eps = "non-private" if self.epsilon is None else f"ε={self.epsilon:.3g}"
        if self.unit is not None and self.unit != "user":
            eps += f" per {self.unit}"
        if self.auc_bound is not None:
            bound = f", DP bound {self.auc_bound:.3f}"
        elif self.epsilon is not None:
            bound = (
                f", no DP bound on AUC (a {self.unit}-level guarantee does not cover a whole user)"
            )
        else:
            bound = ""
        return (
            f"{self.model} ({eps}): MIA AUC {self.auc:.3f} "
            f"[{self.auc_low:.3f}, {self.auc_high:.3f}]{bound}; hidden-item recall@{self.k} "
            f"members {self.member_hit_rate:.2f} vs non-members {self.non_member_hit_rate:.2f}"
        )


def recommendation_mia(
    model: Any,
    data: Interactions,
    *,
    k: int = 20,
    member_fraction: float = 0.5,
    visible_fraction: float = 0.5,
    min_items: int = 4,
    confidence: float = 0.95,
    seed: int = 0,
) -> MembershipResult:
    """Train ``model`` (an unfitted recommender) on a random half of the users and attack it.

    Users with fewer than ``min_items`` items are not targeted (their hidden half would be
    too small to score) but members among them are still trained on.
    """
    if not 0 < member_fraction < 1 or not 0 < visible_fraction < 1:
        raise ConfigError("member_fraction and visible_fraction must lie in (0, 1)")
    if k < 1:
        raise ConfigError(f"k must be >= 1, found {k}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(data.matrix, dtype=np.float32, copy=True)
    x.data[:] = 1.0
    member = rng.random(x.shape[0]) < member_fraction
    if member.all() or not member.any():
        raise ConfigError("too few users to split into members and non-members")
    train = Interactions.from_csr(x[member])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PrivacyWarning, message="seeded noise")
        model.fit(train)
    target = np.flatnonzero(np.diff(x.indptr) >= min_items)
    if target.size < 4:
        raise ConfigError(f"fewer than 4 users with at least {min_items} items")
    visible, hidden = split_visible(x[target], visible_fraction, rng)
    top, _ = model.recommend_history(visible, k=k, exclude_seen=True)
    top = np.asarray(top).reshape(target.size, -1)
    hits = np.zeros(target.size)
    for lo in range(0, target.size, 4096):  # batches of users
        rows = np.arange(lo, min(target.size, lo + 4096))
        sub = hidden[rows]
        t = top[rows]
        mask = np.zeros((rows.size, x.shape[1] + 1), dtype=bool)
        r = np.repeat(np.arange(rows.size), np.diff(sub.indptr))
        mask[r, sub.indices] = True
        hits[rows] = mask[np.arange(rows.size)[:, None], np.where(t < 0, x.shape[1], t)].sum(axis=1)
    score = hits / np.minimum(k, np.maximum(np.diff(hidden.indptr), 1))
    is_member = member[target]
    pos, neg = score[is_member], score[~is_member]
    lo_, hi_ = auc_confidence_interval(pos, neg, confidence, seed=seed)
    g = getattr(model, "guarantee_", None)
    eps = None if g is None else float(g.epsilon)
    unit = None if g is None else PrivacyUnit(g.unit).value
    # (ε, δ) bounds an attack on one neighbour: here a whole user, so only a user-level guarantee
    user_level = unit == PrivacyUnit.USER.value
    return MembershipResult(
        model=str(getattr(model, "name", type(model).__name__)),
        auc=auc(pos, neg),
        auc_low=lo_,
        auc_high=hi_,
        members=int(pos.size),
        non_members=int(neg.size),
        k=k,
        member_hit_rate=float(pos.mean()),
        non_member_hit_rate=float(neg.mean()),
        epsilon=eps,
        auc_bound=(
            dp_auc_bound(float(g.epsilon), float(g.delta)) if g is not None and user_level else None
        ),
        seconds=time.perf_counter() - t0,
        unit=unit,
    )
