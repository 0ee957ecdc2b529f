"""Drift monitoring under differential privacy: noisy per-window histograms, noise-aware tests.

Each time window of interactions is summarised by releases that are user-level
differentially private **for the users active in that window**:

* the **item-popularity histogram** — every user counts at most B of their window's
  items (uniform keyed sample, as DPPopularity does), so one user moves the count vector
  by at most √B in L2; Gaussian noise of std ``z·√B`` per item;
* the **user-activity histogram** — users bucketed by their number of interactions in
  the window (1, 2–3, 4–7, … doubling, the last bucket open); one user is in one bucket,
  L2 sensitivity 1; noise std ``z``;
* optionally the **quality** of a deployed model on the window — each user's recall@k of
  a hidden half of their window's items given the visible half, released as a noisy sum
  (each user in [0, 1]) and a noisy user count: one user moves the pair by at most √2 in
  L2, noise std ``z·√2`` each.

One noise multiplier ``z`` is calibrated so the window's releases (one Gaussian mechanism
on the stacked, sensitivity-normalised vector: ``GaussianDpEvent(z / √r)`` for ``r``
releases) meet ``epsilon_per_window``; windows compose (a user active in many windows is
in many releases) and :attr:`DriftMonitor.guarantee` composes them with dp-accounting.

Drift tests compare a window with a reference (the mean of the first
``reference_windows`` windows). Under "no drift" a window's noisy count differs from the
scaled reference count by DP noise (variance known exactly from z) plus sampling
variation (a fresh set of users; variance ≈ the count, Poisson, estimated from the noisy
counts themselves), so

    D = Σ_j (h_j − s·r_j)² / (σ_h² + s²σ_r² + max(h_j, 0) + s²·max(r_j, 0))

is approximately χ² with d degrees of freedom (``s`` rescales for the window's size).
The alarm threshold is the χ²_d quantile at ``1 − false_alarm``: pure noise and stationary
streams alarm at about the stated rate (measured in the tests), whatever ε is. Quality
drift is a two-sided z-test of the noisy mean recall with the DP noise and a
conservative sampling variance (≤ 1/(4n) for values in [0, 1]).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import pydantic
import scipy.sparse as sp
import scipy.stats

from privrec.errors import ConfigError, DataError, PrivacyWarning
from privrec.privacy.accounting import calibrate, epsilon_of
from privrec.privacy.budget import Budget
from privrec.privacy.contribution import sample_per_user
from privrec.privacy.events import SpentEvent, total_event
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.mechanisms import gaussian, gaussian_event
from privrec.privacy.randomness import resolve_generator
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "DriftMonitor",
    "LedgerWindowCharge",
    "MonitorConfig",
    "WindowReport",
    "activity_buckets",
    "check_model_catalogue",
    "drift_statistic",
    "tracked_model_assumption",
]

#: ``charge(events, description)``: called with a window's releases before its noise is drawn
MonitorCharge = Callable[[list[SpentEvent], str], None]


class MonitorConfig(pydantic.BaseModel):
    """Settings of a drift monitor (all public)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    epsilon_per_window: float = pydantic.Field(gt=0, allow_inf_nan=False)
    delta: float = pydantic.Field(default=1e-6, gt=0, lt=1)
    max_items_per_user: int = pydantic.Field(default=20, ge=1)
    activity_buckets: int = pydantic.Field(default=8, ge=2, le=30)
    false_alarm: float = pydantic.Field(default=0.01, gt=0, lt=0.5)
    reference_windows: int = pydantic.Field(default=3, ge=1)
    k: int = pydantic.Field(default=20, ge=1)
    min_items_for_quality: int = pydantic.Field(default=4, ge=2)
    seed: int | None = None


def monitor_config(**settings: Any) -> MonitorConfig:
    """A :class:`MonitorConfig`, or one :class:`~privrec.errors.ConfigError` line naming the field."""
    try:
        return MonitorConfig(**settings)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        raise ConfigError(
            f"monitor setting {field}: {err['msg']} (found {err.get('input')!r})"
        ) from None


def activity_buckets(per_user: np.ndarray, n_buckets: int) -> np.ndarray:
    """Users per activity bucket: 1, 2–3, 4–7, … (bucket b holds 2^b … 2^(b+1) − 1), last open."""
    a = np.asarray(per_user, dtype=np.int64)
    a = a[a > 0]
    b = np.minimum(np.floor(np.log2(a)).astype(np.int64), n_buckets - 1)
    return np.bincount(b, minlength=n_buckets).astype(np.float64)


def drift_statistic(
    window: np.ndarray,
    reference: np.ndarray,
    noise_var_window: float,
    noise_var_reference: float,
) -> tuple[float, int]:
    """``(D, d)``: the noise- and sampling-aware χ² distance of two noisy count vectors.

    ``reference`` is a mean of reference windows with per-entry noise variance
    ``noise_var_reference``. Entries are rescaled by the ratio of (noisy) totals.
    """
    h = np.asarray(window, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    tot_r = float(max(r.sum(), 1e-9))
    s = float(max(h.sum(), 0.0)) / tot_r
    var = (
        noise_var_window + s * s * noise_var_reference + np.maximum(h, 0) + s * s * np.maximum(r, 0)
    )
    d = (h - s * r) ** 2 / np.maximum(var, 1e-12)
    return float(d.sum()), int(h.size)


@dataclass
class WindowReport:
    """What one window released and what the drift tests said (all from noisy releases)."""

    window: int
    noisy_users: float
    popularity_stat: float | None = None
    popularity_threshold: float | None = None
    activity_stat: float | None = None
    activity_threshold: float | None = None
    quality: float | None = None
    quality_z: float | None = None
    quality_threshold: float | None = None
    alarms: list[str] = field(default_factory=list)
    epsilon_so_far: float = 0.0

    @property
    def alarm(self) -> bool:
        return bool(self.alarms)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alarm"] = self.alarm
        return d


class DriftMonitor:
    """Release DP histograms of each window and test them against a reference.

    Parameters
    ----------
    config
        :class:`MonitorConfig`.
    n_items
        Catalogue size (windows are ``users × n_items`` matrices over one item space).
    model
        Optional fitted recommender whose quality is tracked (``recommend_history``). The
        quality release's sensitivity (√2) holds for a model that does not move when one
        monitored user is removed: a differentially private model (its own guarantee is
        separate and composes with the monitor's — the pair is released under both), or one
        trained on data that holds none of the monitored users. A non-private (or seeded)
        model is refused unless ``model_trained_elsewhere``: trained on the monitored users,
        it changes with each of them, and one user could then move the recall sum by more
        than the noise is sized for (a reviewer measured 2.3 against √2 with EASE).
    model_trained_elsewhere
        Declare that a non-private ``model`` was trained on data holding none of the
        monitored users (not checked: it is stated in the guarantee, and warned).
    charge
        Optional hook called with each window's planned releases **before** its noise is
        drawn (e.g. a ledger reservation); raising refuses the window.
    """

    def __init__(
        self,
        config: MonitorConfig,
        n_items: int,
        *,
        model: Any = None,
        model_trained_elsewhere: bool = False,
        charge: MonitorCharge | None = None,
    ) -> None:
        if not isinstance(config, MonitorConfig):
            raise ConfigError(f"config must be a MonitorConfig, found {type(config).__name__}")
        if not (isinstance(n_items, int | np.integer) and not isinstance(n_items, bool)):
            raise ConfigError(f"n_items must be an integer, found {n_items!r}")
        if n_items < 1:
            raise ConfigError(f"n_items must be >= 1, found {n_items}")
        check_model_catalogue(model, n_items)  # before the first window is charged
        self.model_assumption = tracked_model_assumption(model, model_trained_elsewhere)
        self.config = config
        self.n_items = int(n_items)
        self.model = model
        self.charge = charge
        self._rng = resolve_generator(config.seed)
        self.releases = 3 if model is not None else 2  # popularity, activity(, quality)
        # one Gaussian on the stacked normalised releases: multiplier z / sqrt(releases)
        self.z = math.sqrt(self.releases) * calibrate(
            Budget(config.epsilon_per_window, config.delta), gaussian_event
        )
        self.spent: list[SpentEvent] = []
        self.reports: list[WindowReport] = []
        self._pop: list[np.ndarray] = []
        self._act: list[np.ndarray] = []
        self._qual: list[float] = []

    # ----------------------------------------------------------------------- accounting
    def window_events(self, index: int) -> list[SpentEvent]:
        labels = ["item popularity histogram", "user activity histogram"]
        if self.model is not None:
            labels.append("model quality (noisy recall sum and user count)")
        return [SpentEvent(f"window {index}: {lab}", gaussian_event(self.z)) for lab in labels]

    @property
    def guarantee(self) -> PrivacyGuarantee:
        """User-level guarantee of everything released so far (all windows composed)."""
        return PrivacyGuarantee.from_events(
            self.spent,
            delta=self.config.delta,
            unit=PrivacyUnit.USER,
            accountant="pld",
            mechanism="DriftMonitor (noisy window histograms)",
            released=["per window: noisy item counts, noisy activity histogram, noisy quality"],
            not_released=["raw interactions", "which users were active"],
            threat_model="anyone who sees the monitor's releases; the monitoring server is trusted"
            + ("" if self.model_assumption is None else f"; {self.model_assumption}"),
            seeded_noise=self.config.seed is not None,
        )

    # -------------------------------------------------------------------------- window
    def observe(self, window: Any) -> WindowReport:
        """Release the window's noisy statistics, test for drift, return the report."""
        from privrec.models.base import as_user_items

        if not (sp.issparse(window) or isinstance(window, np.ndarray)):
            raise DataError(
                "a window must be a users × items matrix (scipy.sparse or numpy)",
                field="window",
                found=type(window).__name__,
            )
        x = as_user_items(cast(Any, window), self.n_items)
        x.eliminate_zeros()  # a stored zero is no interaction (before binarising, not after)
        if x.nnz and not (x.data > 0).all():  # NaN fails this too
            raise DataError(
                "a window holds interactions as positive values; some are negative or not numbers",
                field="window",
                expected="values > 0 (an interaction) or 0 (none)",
            )
        x.data[:] = 1.0
        c = self.config
        index = len(self.reports) + 1
        planned = self.window_events(index)
        if self.charge is not None:
            self.charge(planned, f"drift monitor window {index}")
        bounded = sample_per_user(x, c.max_items_per_user, self._rng)
        counts = np.bincount(bounded.indices, minlength=self.n_items).astype(np.float64)
        sens_pop = math.sqrt(c.max_items_per_user)
        pop = gaussian(counts, self.z, sens_pop, self._rng)
        act = gaussian(
            activity_buckets(np.diff(x.indptr), c.activity_buckets), self.z, 1.0, self._rng
        )
        quality = None
        if self.model is not None:
            recall_sum, n_users = self._quality_sum(x)
            noisy = gaussian(np.array([recall_sum, n_users]), self.z, math.sqrt(2.0), self._rng)
            quality = float(noisy[0] / max(noisy[1], 1.0))
            q_users = float(noisy[1])
        self.spent.extend(planned)
        rep = WindowReport(window=index, noisy_users=float(max(act.sum(), 0.0)))
        var_pop = (self.z * sens_pop) ** 2
        var_act = self.z**2
        n_ref = len(self._pop)
        if n_ref >= c.reference_windows:
            ref_pop = np.mean(self._pop[: c.reference_windows], axis=0)
            ref_act = np.mean(self._act[: c.reference_windows], axis=0)
            rv = 1.0 / c.reference_windows
            rep.popularity_stat, d = drift_statistic(pop, ref_pop, var_pop, var_pop * rv)
            rep.popularity_threshold = float(scipy.stats.chi2.ppf(1 - c.false_alarm, d))
            rep.activity_stat, d = drift_statistic(act, ref_act, var_act, var_act * rv)
            rep.activity_threshold = float(scipy.stats.chi2.ppf(1 - c.false_alarm, d))
            if rep.popularity_stat > rep.popularity_threshold:
                rep.alarms.append("popularity")
            if rep.activity_stat > rep.activity_threshold:
                rep.alarms.append("activity")
            if quality is not None:
                ref_q = float(np.mean(self._qual[: c.reference_windows]))
                n_eff = max(q_users, 1.0)
                # noise of a ratio of noisy sums (delta method) + sampling (≤ 1/(4n)) for both
                var_q = 2 * self.z**2 * (1 + quality**2) / n_eff**2 + 1 / (4 * n_eff)
                var_r = var_q * rv
                rep.quality = quality
                rep.quality_z = float((quality - ref_q) / math.sqrt(var_q + var_r))
                rep.quality_threshold = float(scipy.stats.norm.ppf(1 - c.false_alarm / 2))
                if abs(rep.quality_z) > rep.quality_threshold:
                    rep.alarms.append("quality")
        elif quality is not None:
            rep.quality = quality
        self._pop.append(pop)
        self._act.append(act)
        if quality is not None:
            self._qual.append(quality)
        rep.epsilon_so_far = float(
            epsilon_of(total_event(self.spent), c.delta, "pld", PrivacyUnit.USER)
        )
        self.reports.append(rep)
        return rep

    def _quality_sum(self, x: sp.csr_matrix) -> tuple[float, float]:
        """Σ over window users of recall@k of a hidden half given the visible half, and the count."""
        c = self.config
        rows = np.flatnonzero(np.diff(x.indptr) >= c.min_items_for_quality)
        if rows.size == 0:
            return 0.0, 0.0
        sub = sp.csr_matrix(x[rows])
        # Which half is hidden: i.i.d. secret keys, one per (user, item), from the monitor's own
        # generator (a CSPRNG unless seeded). Each user's split is then independent of everyone
        # else's, so one user moves the sums by at most (1, 1). Keys from a public seed indexed
        # by position (as until 2026-12-07) made every later user's split depend on whether an
        # earlier user was there: one user could move the recall sum by ~7.
        keys = self._rng.random(sub.nnz)
        row_of = np.repeat(np.arange(rows.size), np.diff(sub.indptr))
        order = np.lexsort((keys, row_of))
        rank = np.empty(sub.nnz, dtype=np.int64)
        rank[order] = np.arange(sub.nnz) - np.repeat(sub.indptr[:-1], np.diff(sub.indptr))
        hidden = rank < np.diff(sub.indptr)[row_of] // 2
        vis = sp.csr_matrix(
            (sub.data * ~hidden, sub.indices.copy(), sub.indptr.copy()), shape=sub.shape
        )
        vis.eliminate_zeros()
        top, _ = self.model.recommend_history(vis, k=c.k)
        top = np.asarray(top, dtype=np.int64).reshape(rows.size, -1)
        mask = np.zeros((rows.size, self.n_items + 1), dtype=bool)
        mask[row_of[hidden], sub.indices[hidden]] = True
        hits = mask[np.arange(rows.size)[:, None], np.where(top < 0, self.n_items, top)].sum(axis=1)
        n_hidden = np.bincount(row_of[hidden], minlength=rows.size)
        recall = hits / np.minimum(c.k, np.maximum(n_hidden, 1))
        return float(np.clip(recall, 0.0, 1.0).sum()), float(rows.size)


def tracked_model_assumption(model: Any, trained_elsewhere: bool) -> str | None:
    """What the quality release assumes about ``model`` (``None`` without one), or a refusal.

    See :class:`DriftMonitor`'s ``model``: a private, unseeded model needs no assumption beyond
    its own guarantee; any other needs ``trained_elsewhere`` (then warned).
    """
    if model is None:
        return None
    from privrec.models.private import PrivateRecommender

    guarantee: Any = getattr(model, "privacy_guarantee", None)
    private = isinstance(model, PrivateRecommender) and guarantee is not None
    if private and not guarantee.seeded_noise:
        return (
            f"the tracked model's own guarantee ((ε = {guarantee.epsilon:.3g}, "
            f"δ = {guarantee.delta:.1e}) per {getattr(guarantee.unit, 'value', guarantee.unit)}) "
            "is separate and composes with "
            "this one"
        )
    what = "seeded (not private)" if private else "not differentially private"
    if not trained_elsewhere:
        raise ConfigError(
            f"the tracked model ({type(model).__name__}) is {what}: monitoring its quality on "
            "the users it was trained on has no valid sensitivity (each of them moves the model "
            "too). Track a private model, or declare that this one was trained on data holding "
            "none of the monitored users (model_trained_elsewhere=True, "
            "--model-trained-elsewhere)"
        )
    warnings.warn(
        f"the tracked model is {what}: the quality release is private only if it was trained on "
        "data holding none of the monitored users (declared, not checked)",
        PrivacyWarning,
        stacklevel=3,
    )
    return (
        f"assumes the tracked model ({what}) was trained on data holding none of the monitored "
        "users (declared, not checked)"
    )


def check_model_catalogue(model: Any, n_items: int, item_ids: Any = None) -> None:
    """A :class:`DataError` when ``model`` scores another catalogue than the one monitored.

    The size always; with ``item_ids`` (the monitored data's item ids, column order) also the
    ids in order — a model over remapped ids scores the wrong items, and its quality would be
    noise about nothing. Checked before anything is charged: scoring a window would refuse it
    only after that window's release was committed to the ledger.
    """
    model_items = getattr(model, "n_items_", None)
    if model is not None and model_items is not None and int(model_items) != int(n_items):
        raise DataError(
            "the model's catalogue differs from the monitored data's",
            field="n_items",
            expected=str(int(model_items)),
            found=int(n_items),
        )
    ids = getattr(model, "item_ids_", None) if model is not None else None
    if ids is not None and item_ids is not None:
        a, b = np.asarray(ids).astype(str), np.asarray(item_ids).astype(str)
        if a.shape != b.shape or not np.array_equal(a, b):
            raise DataError(
                "the model's item ids differ from the monitored data's (another catalogue or "
                "another order): its recommendations would name other items",
                field="item_ids",
            )


class LedgerWindowCharge:
    """A monitor ``charge`` hook that records every window in a governance ledger.

    Called before the window draws noise: the window's releases are reserved (refused with
    ``BudgetExceededError`` past a budget, and the window is then not released) and
    committed as a ``kind="monitor"`` charge — the release follows at once, and a committed
    charge can only over-report.
    """

    def __init__(
        self, ledger: Any, dataset: str, *, purpose: str | None = None, data: Any = None
    ) -> None:
        self.ledger = ledger
        self.dataset = dataset
        self.purpose = purpose
        #: the ``GovernedData`` the windows come from: each charge checks it is still current
        self.data = data

    def __call__(self, events: list[SpentEvent], description: str) -> None:
        info = self.ledger.reserve(
            self.dataset,
            events,
            purpose=self.purpose,
            kind="monitor",
            description=description,
            data=self.data,
        )
        self.ledger.commit(info, result={"window": description})
