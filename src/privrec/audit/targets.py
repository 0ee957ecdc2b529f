"""The private models as an auditor sees them: train with canaries, score every canary.

An :class:`AuditTarget` wraps one private model with its parameters. ``run`` trains it on
data holding the included canaries and returns one score per canary, computed **only
from what the model releases** (its saved state, or the per-step statistics its
guarantee lists as released) plus the canaries' own histories and data-independent
public values. Higher scores mean "more likely included". The scores are matched
filters: each sums the released values a canary would move, weighted by how much it
would move them over the noise variance there — the likelihood-ratio statistic when the
noise is Gaussian and the canary's would-be contribution is known.

Some model settings are overridden for the audit (listed in :attr:`AuditTarget.overrides`):
the canary items must be trained on (DPALS ``head_fraction = 1``; DPEASE without head
selection). The guarantee does not depend on these settings, so an audit with them
tests the same accounting and the same mechanisms.

The heavy design is measured against the model's per-user bound, so that bound must stay
well below the heavy canaries' length. A data-adaptive bound (read from a private
histogram of history lengths) does not: with about as many included canaries as real
users, the quantile lands on the canaries' own length and a model that forgot the cap
looks like a correct one. Heavy fits therefore **pin** the bound (to a small public value,
:attr:`AuditTarget.heavy_pin`) when the caller left it data-adaptive
(:meth:`AuditTarget.bound_override`, stated in the audit's notes): the claimed ε is the
same, the fit only skips the length histogram. The
bound each fit releases is read back (:attr:`TargetRun.released_bound`) and a heavy audit
whose canaries are not far longer than it is reported inconclusive, not "ok".
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np
import scipy.sparse as sp

from privrec.audit.canaries import Canaries, CanaryDesign
from privrec.audit.consistency import dpals_solve_mismatch
from privrec.errors import ConfigError, PrivacyWarning
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "TARGETS",
    "AuditTarget",
    "CrossSiloTarget",
    "DPALSTarget",
    "DPEASETarget",
    "DPPopularityTarget",
    "FederatedMFTarget",
    "TargetRun",
    "make_target",
]


@dataclass
class TargetRun:
    """One training run of a target: canary scores and what the model claims.

    ``parts`` holds one score per released statistic (e.g. the counts, each step's
    right-hand sides); ``scores`` is their combination (:func:`combine_parts`).
    """

    scores: np.ndarray
    parts: dict[str, np.ndarray]
    epsilon: float
    delta: float
    unit: str
    seeded_noise: bool
    notes: list[str] = field(default_factory=list)
    #: the per-user bound the fit used (B or C), as the model releases it; ``None``: no such bound
    released_bound: float | None = None
    #: why the shipped model is not what its reported releases give (``None``: it is, or unchecked)
    mismatch: str | None = None


class AuditTarget(ABC):
    """A private model under audit (see the module docstring)."""

    name: ClassVar[str] = "target"
    #: settings the audit forces, and why
    overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        for key in ("epsilon", "delta"):
            if key not in params:
                raise ConfigError(f"{self.name} audit needs {key!r}")
        self.params = dict(params)

    @property
    def epsilon(self) -> float:
        return float(self.params["epsilon"])

    @property
    def delta(self) -> float:
        return float(self.params["delta"])

    @property
    def unit(self) -> PrivacyUnit:
        return PrivacyUnit(self.params.get("unit", "user"))

    @abstractmethod
    def contribution_bound(self) -> int:
        """Items one canary can usefully hold under the model's per-user bound."""

    #: heavy canaries hold this many times the per-user bound
    heavy_factor: ClassVar[int] = 32

    #: the designs the target supports (all run by default under the user unit)
    designs: ClassVar[tuple[str, ...]] = ("tight", "heavy")

    #: model parameter holding the per-user bound the heavy design is measured against
    #: (``None``: the model has none); heavy fits pin it when the caller did not set it
    bound_param: ClassVar[str | None] = None
    #: the bound heavy fits pin: small, so that heavy canaries (L = heavy_factor × it) are
    #: cheap and share few pool items (DPALS on ml-100k, m = 2000, "uncapped" bug: ε_LB
    #: 1.84–1.89 pinned at 10, 0.76–1.13 pinned at 100)
    heavy_pin: ClassVar[int] = 10

    def default_designs(self) -> tuple[str, ...]:
        """The designs an audit runs when none are named.

        Under the interaction unit one neighbour is one interaction, so every canary holds
        exactly one: the heavy design (many interactions) would measure group privacy —
        a correct model may leak up to L·ε to an L-interaction canary — and flag correct
        models. It is left out there (the clip design keeps its one-interaction canaries).
        """
        if self.unit is PrivacyUnit.INTERACTION:
            return tuple(d for d in self.designs if d != "heavy")
        return self.designs

    def design(self, kind: str, n_canaries: int, base_items: int) -> CanaryDesign:
        """The ``"tight"`` (L = bound), ``"heavy"`` (L = 32 × bound) or ``"clip"`` design.

        Tight canaries spend exactly the sensitivity one user is allowed (the closest
        bound on a correct model); heavy ones hold far more than the bound, which a
        correct model caps (their per-item signal shrinks) and a model that forgot the
        cap releases in full (it grows like the square root of the excess or faster).
        ``"clip"`` (factor models) has tight canaries trained without the implicit-negative
        term, so their factors far exceed the clip norm (see :attr:`heavy_overrides`).
        Under the interaction unit every canary is one interaction (one neighbour), and
        the heavy design is refused (see :meth:`default_designs`).
        """
        if kind not in self.designs and kind not in ("tight", "heavy"):
            raise ConfigError(
                f"unknown canary design {kind!r} for {self.name}; choose one of {', '.join(self.designs)}"
            )
        if self.unit is PrivacyUnit.INTERACTION:
            if kind == "heavy":
                raise ConfigError(
                    "the heavy design has no meaning under the interaction unit: one neighbour is "
                    "one interaction, and a canary with L interactions may leak up to L·ε from a "
                    "correct model; use the tight (or clip) design"
                )
            return CanaryDesign(n_canaries, 1, self.pool(n_canaries, 1, kind), kind)
        if kind == "heavy":
            pinned = self._pinned_bound()
            bound = self.contribution_bound() if pinned is None else pinned
            length = self.heavy_factor * bound
        else:
            length = self.contribution_bound()
        return CanaryDesign(n_canaries, length, self.pool(n_canaries, length, kind), kind)

    def _pinned_bound(self) -> int | None:
        """:attr:`heavy_pin` if the caller left the per-user bound data-adaptive, else ``None``."""
        if (
            self.bound_param is None
            or self.params.get(self.bound_param) is not None
            or self.unit is not PrivacyUnit.USER
        ):
            return None
        return self.heavy_pin

    def bound_override(self, design: CanaryDesign | None) -> dict[str, Any]:
        """The per-user bound a fit of ``design`` pins (empty: the model's own setting).

        Heavy canaries must hold far more items than the bound the model applies. A bound
        the model reads from its private length histogram (the default of DPPopularity,
        DPEASE's C and DPALS) moves with the canaries — ~1000 heavy canaries next to
        ml-100k's 943 users put the median at their own length — and then a model that
        forgot the cap is indistinguishable from a correct one. Heavy fits therefore use an
        explicit bound (:attr:`heavy_pin`) when the caller left it data-adaptive: the same
        mechanisms and the same claimed ε, without the length-histogram release. A bound
        the caller set is kept (the heavy canaries then hold ``heavy_factor`` times it).
        """
        pinned = self._pinned_bound()
        if design is None or design.label != "heavy" or pinned is None:
            return {}
        assert self.bound_param is not None  # _pinned_bound checked it
        return {self.bound_param: pinned}

    #: largest canary-item pool per design (``None``: dedicated items); ``pool_cap`` overrides
    pool_caps: ClassVar[dict[str, int | None]] = {"tight": None, "heavy": None}

    def pool(self, n_canaries: int, length: int, kind: str = "tight") -> int | None:
        """Canary-item pool size (``None``: dedicated items).

        Models with per-item released state use a pool of ``max(4L, min(cap, mL/8))``
        items: each item is shared by about 8 canaries when the cap allows, and never by
        more than a quarter of them. ``cap`` is the ``pool_cap`` audit parameter, else the
        target's per-design default.
        """
        cap = self.params.get("pool_cap", self.pool_caps.get(kind))
        if cap is None:
            return None
        return int(max(4 * length, min(int(cap), n_canaries * length // 8)))

    @abstractmethod
    def run(self, canaries: Canaries) -> TargetRun:
        """Train on ``canaries.data`` and score every canary from the release."""

    #: parameters of the audit itself, not of the model
    audit_params: ClassVar[tuple[str, ...]] = ("pool_cap",)
    #: extra settings of the heavy and clip designs (privacy-neutral; see each target)
    heavy_overrides: ClassVar[dict[str, Any]] = {}

    def _model_params(self, design: CanaryDesign | None = None) -> dict[str, Any]:
        p = {**self.params, **self.overrides, **self.bound_override(design)}
        if design is not None and design.label in ("heavy", "clip"):
            p.update(self.heavy_overrides)
        for key in self.audit_params:
            p.pop(key, None)
        return p

    def _bound_notes(self, design: CanaryDesign, released: float | None) -> list[str]:
        """What a report should say about the per-user bound of one fit."""
        notes = []
        for key, value in self.bound_override(design).items():
            notes.append(
                f"{key} pinned to {value} for the heavy fit (default: read from a private length "
                "histogram the canaries would move); claimed ε unchanged"
            )
        if released is not None:
            notes.append(f"released per-user bound {released:g}")
        return notes


def _fit_quiet(model: Any, data: Any, **kwargs: Any) -> Any:
    """Fit, silencing only the seeded-noise warning (the audit reports seeded runs itself)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PrivacyWarning, message=".*seeded")
        warnings.filterwarnings("ignore", category=PrivacyWarning, message=".*delta.*")
        return model.fit(data, **kwargs)


def combine_parts(parts: dict[str, np.ndarray]) -> np.ndarray:
    """Sum of the parts, each standardised over the canaries (mean 0, std 1).

    Each part is a matched filter for one released statistic. Weighting them by their
    signal-to-noise ratio *under the claimed mechanism* would be optimal for a correct
    model but can bury the part a bug inflates; equal weights after standardising lose
    little on a correct model (its parts have similar ratios) and keep every part's
    anomaly visible. A function of the released output only, so the audit stays valid.
    """
    total = np.zeros(len(next(iter(parts.values()))))
    for v in parts.values():
        a = np.asarray(v, dtype=np.float64)
        sd = float(a.std())
        total += (a - a.mean()) / sd if sd > 0 else 0.0
    return total


def _guarantee_run(
    parts: dict[str, np.ndarray],
    guarantee: Any,
    notes: list[str] | None = None,
    released_bound: float | None = None,
    mismatch: str | None = None,
) -> TargetRun:
    return TargetRun(
        scores=combine_parts(parts),
        parts={k: np.asarray(v, dtype=np.float64) for k, v in parts.items()},
        epsilon=float(guarantee.epsilon),
        delta=float(guarantee.delta),
        unit=str(guarantee.unit.value),
        seeded_noise=bool(guarantee.seeded_noise),
        notes=list(notes or []),
        released_bound=released_bound,
        mismatch=mismatch,
    )


# ------------------------------------------------------------------------- DPPopularity
class DPPopularityTarget(AuditTarget):
    """DPPopularity: score = sum of the released noisy counts over the canary's items.

    Each included canary adds 1 to the count of each of its (at most B kept) items and
    nothing else; the counts carry i.i.d. noise of std ``z·√B``. Dedicated canary items.
    """

    name = "dppopularity"
    bound_param: ClassVar[str | None] = "max_per_user"

    def contribution_bound(self) -> int:
        return int(self.params.get("max_per_user") or 100)

    def run(self, canaries: Canaries) -> TargetRun:
        from privrec.models import DPPopularity

        design = canaries.design
        model = _fit_quiet(DPPopularity(**self._model_params(design)), canaries.data)
        counts = np.asarray(model.item_popularity_, dtype=np.float64)
        b = _user_bound(model, "max_per_user_", self.unit)
        return _guarantee_run(
            {"counts": canaries.histories @ counts},
            model.privacy_guarantee,
            self._bound_notes(design, b),
            released_bound=b,
        )


def _user_bound(model: Any, attr: str, unit: PrivacyUnit) -> float | None:
    """The per-user bound a fitted model used under the user unit (``None`` otherwise)."""
    if unit is not PrivacyUnit.USER:
        return None
    return float(getattr(model, attr))


# ------------------------------------------------------------------------------- DPEASE
def recover_gram(weights: np.ndarray, diagonal: np.ndarray, regularization: float) -> np.ndarray:
    """The noisy Gram matrix G̃ behind released EASE weights, its diagonal and λ.

    EASE releases ``B = −P / diag(P)`` (columns scaled, zero diagonal) with
    ``P = (G̃ + λI)⁻¹``. With ``Q = −B`` and ``Q_jj = 1``, ``Q = P D⁻¹`` for
    ``D = diag(P)``, so ``G̃ + λI = D⁻¹ Q⁻¹``; the diagonal of G̃ is released too (the
    popularity prior), which fixes ``d_j = (Q⁻¹)_jj / (G̃_jj + λ)``. Post-processing of
    the artifact; exact up to float32 rounding of the weights.
    """
    q = -np.asarray(weights, dtype=np.float64)
    n = q.shape[0]
    q[np.diag_indices(n)] = 1.0
    qi = np.linalg.inv(q)
    d = np.diag(qi) / (np.asarray(diagonal, dtype=np.float64) + regularization)
    g = qi / d[:, None]
    g = 0.5 * (g + g.T)
    g[np.diag_indices(n)] -= regularization
    return g


class DPEASETarget(AuditTarget):
    """DPEASE: score = sum of the canary's block of the noisy Gram matrix (upper triangle).

    An included canary with ``n`` items adds ``w = min(1, C/n)`` to every entry of its
    ``n × n`` block; the release adds noise of std ``z·C`` to each upper-triangle entry.
    The Gram matrix is recovered from the artifact (:func:`recover_gram`). The audit runs
    DPEASE without head selection (``head_snr = 0`` and ``max_items`` ≥ the catalogue),
    so the canary items are in the released matrix; canary items come from a pool so
    the dense matrix stays small.
    """

    name = "dpease"
    overrides: ClassVar[dict[str, Any]] = {"head_snr": 0.0}
    heavy_factor: ClassVar[int] = 8  # the weight min(1, C/n) makes the bug grow like L itself

    pool_caps: ClassVar[dict[str, int | None]] = {"tight": 3000, "heavy": 3000}
    bound_param: ClassVar[str | None] = "max_contribution"

    def contribution_bound(self) -> int:
        return max(1, int(self.params.get("max_contribution") or 10.0))

    def run(self, canaries: Canaries) -> TargetRun:
        from privrec.models import DPEASE

        design = canaries.design
        params = self._model_params(design)
        params["max_items"] = max(int(params.get("max_items", 5000)), canaries.data.n_items)
        model = _fit_quiet(DPEASE(**params), canaries.data)
        head = np.asarray(model.head_items_)
        if head.size != canaries.data.n_items:
            raise ConfigError("DPEASE selected a head: the canary items are not released")
        g = recover_gram(model.weights_, model.item_popularity_, model.regularization_)
        h = canaries.histories
        quad = np.asarray(h.multiply(h @ g).sum(axis=1)).ravel()  # x_iᵀ G̃ x_i per canary
        diag = h @ np.diag(g)
        c = _user_bound(model, "max_contribution_", self.unit)
        return _guarantee_run(
            {"gram block": 0.5 * (quad + diag)},
            model.privacy_guarantee,
            self._bound_notes(design, c),
            released_bound=c,
        )


# -------------------------------------------------------------------------------- DPALS
def item_step_scores(
    histories: sp.csr_matrix,
    head: np.ndarray,
    y_prev: list[np.ndarray],
    rhs: list[np.ndarray],
    *,
    weights: sp.csr_matrix,
    alpha0: float,
    user_regularization: float,
    clip_norm: float,
    rhs_std: float,
) -> list[np.ndarray]:
    """Matched filter of each step's right-hand sides: Σ_j c_ij ⟨r̃_j(t), x_i(t)⟩ / s².

    ``x_i(t)`` is canary ``i``'s clipped factor solved from ``y_prev[t]`` and its whole
    history (``histories``, head columns), what the model would add if ``i`` was
    included; ``weights`` (head columns) holds ``c_ij`` on the items the score sums over
    (the canary items) and ``s`` is the right-hand-side noise std. Post-processing of
    released factors and statistics plus the canaries' own histories.
    """
    from privrec.models.dp_als import exact_user_solve
    from privrec.privacy.contribution import clip_rows

    xh = sp.csr_matrix(histories[:, head])
    xh.sort_indices()
    out = []
    for y, r in zip(y_prev, rhs, strict=True):
        u = clip_rows(exact_user_solve(xh, y, alpha0, user_regularization), clip_norm)
        contrib = np.asarray(weights @ r)  # Σ_j c_ij r̃_j, one row per canary
        out.append(np.einsum("ik,ik->i", contrib, u) / rhs_std**2)
    return out


def _canary_weights(
    xh: sp.csr_matrix, counts: np.ndarray, method: str, bound: int, exponent: float
) -> sp.csr_matrix:
    """Expected per-item weights c_ij of each canary (from the released noisy counts)."""
    from privrec.privacy.contribution import adaptive_weights

    if method == "adaptive":
        return adaptive_weights(xh, np.maximum(counts, 1.0), exponent, float(bound))
    n = np.maximum(np.diff(xh.indptr), 1)
    w = sp.csr_matrix(xh, dtype=np.float64, copy=True)
    w.data = np.repeat(np.minimum(1.0, bound / n), np.diff(xh.indptr))  # P(item kept)
    return w


class DPALSTarget(AuditTarget):
    """DPALS: matched filters on the noisy counts and on every step's right-hand sides.

    Released and used: the noisy counts (artifact) and, per step, the noisy right-hand
    sides with the item factors the step started from, which the model shows through its
    ``fit(on_release=…)`` hook (:mod:`privrec.models.releases`). A
    canary adds 1 to the counts of its (at most count_sample) items and ``c_ij x_i(t)`` to
    its items' right-hand sides, where ``x_i(t)`` is its factor clipped to Γ. Canary
    items come from a pool (per-item statistics are ``k × k``) and are all trained
    (``head_fraction = 1``). The left-hand sides and Gramian carry a few percent of the
    budget at the default noise ratios and are not used.
    """

    name = "dpals"
    overrides: ClassVar[dict[str, Any]] = {"head_fraction": 1.0}
    heavy_overrides: ClassVar[dict[str, Any]] = {"alpha0": 0.0}

    # tight: a small pool keeps the implicit-negative term α0·YᵀY (it grows with the catalogue)
    # from shrinking the canaries' factors below the clip norm; heavy (α0 = 0): a large pool
    # keeps canaries from interfering when a bug amplifies all of them
    pool_caps: ClassVar[dict[str, int | None]] = {"tight": 4000, "heavy": 20000, "clip": 20000}
    designs: ClassVar[tuple[str, ...]] = ("tight", "heavy", "clip")
    bound_param: ClassVar[str | None] = "max_per_user"

    def contribution_bound(self) -> int:
        return int(self.params.get("max_per_user") or 100)

    def run(self, canaries: Canaries) -> TargetRun:
        from privrec.models import DPALS, dp_als
        from privrec.models.releases import Release

        model = DPALS(**self._model_params(canaries.design))
        released: list[Release] = []
        _fit_quiet(model, canaries.data, on_release=released.append)
        steps = [r for r in released if r.name == "rhs"]
        _require_steps(len(steps), model.iterations_)
        y_prev = [np.asarray(r.item_factors, dtype=np.float64) for r in steps]
        rhs = [np.asarray(r.value, dtype=np.float64) for r in steps]
        c = cast(dp_als.DPALSConfig, model.config())
        # the bounds the fit used (read from its private length histogram unless given)
        b, count_sample = int(model.max_per_user_), int(model.count_sample_)
        # the stds the fit used, as its releases state them (the counts' share of the rate may
        # have been read from the length histogram: DPALS.adaptive_count_share)
        rhs_std = float(steps[0].noise_std)
        count_std = float(next(r.noise_std for r in released if r.name == "counts"))
        return _guarantee_run(
            _als_scores(
                canaries,
                np.asarray(model.head_items_),
                np.asarray(model.noisy_counts_, dtype=np.float64),
                y_prev,
                rhs,
                method=c.method,
                bound=b,
                count_sample=count_sample,
                exponent=c.adaptive_exponent,
                alpha0=float(getattr(model, "alpha0_", c.alpha0)),  # α0 as the fit resolved it
                user_regularization=c.user_regularization,
                clip_norm=c.clip_norm,
                rhs_std=rhs_std,
                count_std=count_std,
            ),
            model.privacy_guarantee,
            [
                f"{len(steps)} private steps observed",
                *self._bound_notes(canaries.design, _user_bound(model, "max_per_user_", c.unit)),
            ],
            released_bound=_user_bound(model, "max_per_user_", c.unit),
            # the canaries are scored on the reported releases: the shipped factors must be
            # their solves, or a fit solving from other statistics would pass unseen
            mismatch=dpals_solve_mismatch(model, released, c),
        )


def _require_steps(seen: int, expected: int) -> None:
    if seen != expected:
        raise ConfigError(
            f"observed {seen} of {expected} private steps: the audit can no longer see the "
            "model's released per-step statistics (its release hook or step functions changed)"
        )


def _als_scores(
    canaries: Canaries,
    head: np.ndarray,
    noisy_counts: np.ndarray,
    y_prev: list[np.ndarray],
    rhs: list[np.ndarray],
    *,
    method: str,
    bound: int,
    count_sample: int,
    exponent: float,
    alpha0: float,
    user_regularization: float,
    clip_norm: float,
    rhs_std: float,
    count_std: float,
) -> dict[str, np.ndarray]:
    h = canaries.histories
    n = np.maximum(np.diff(h.indptr), 1)
    kept = np.minimum(1.0, count_sample / n)  # P(a canary item is in the count sample)
    parts = {"counts": (h @ noisy_counts) * kept / count_std**2}
    if rhs:
        xh = sp.csr_matrix(h[:, head])
        xh.sort_indices()
        w = _canary_weights(xh, noisy_counts[head], method, bound, exponent)
        steps = item_step_scores(
            h,
            head,
            y_prev,
            rhs,
            weights=w,
            alpha0=alpha0,
            user_regularization=user_regularization,
            clip_norm=clip_norm,
            rhs_std=rhs_std,
        )
        parts.update({f"step {t + 1} right-hand sides": v for t, v in enumerate(steps)})
    return parts


# -------------------------------------------------------------------------- cross-silo
class CrossSiloTarget(AuditTarget):
    """Cross-silo DPALS (two aggregation servers, silos on loopback): as :class:`DPALSTarget`.

    The users (canaries included) are split over ``silos`` silos; the released counts and
    per-step right-hand sides are observed at the driver, which sees what the model
    releases. Runs the real protocol (:func:`privrec.secure.silo.run_local`).
    """

    name = "silo_dpals"
    audit_params: ClassVar[tuple[str, ...]] = ("pool_cap", "silos")
    overrides: ClassVar[dict[str, Any]] = {"head_fraction": 1.0}

    # tight: a small pool keeps the implicit-negative term α0·YᵀY (it grows with the catalogue)
    # from shrinking the canaries' factors below the clip norm; heavy (α0 = 0): a large pool
    # keeps canaries from interfering when a bug amplifies all of them
    pool_caps: ClassVar[dict[str, int | None]] = {"tight": 4000, "heavy": 20000, "clip": 20000}
    designs: ClassVar[tuple[str, ...]] = ("tight", "heavy", "clip")

    def contribution_bound(self) -> int:  # a fixed bound (100 by default): nothing to pin
        return int(self.params.get("max_per_user") or 100)

    def run(self, canaries: Canaries) -> TargetRun:
        from privrec.audit.recording import record_item_steps
        from privrec.models.dp_als import DPALSSensitivity
        from privrec.secure import silo, silo_driver, silo_stats

        params = {k: v for k, v in self._model_params(canaries.design).items() if k != "unit"}
        if self.unit is not PrivacyUnit.USER:
            raise ConfigError("cross-silo DPALS is user-level only")
        n_silos = int(self.params.get("silos", 2))
        config = silo.SiloConfig(n_items=canaries.data.n_items, **params)
        x = canaries.data.matrix
        order = np.random.default_rng(0).permutation(x.shape[0])
        parts = [sp.csr_matrix(x[rows]) for rows in np.array_split(order, n_silos)]
        with (
            warnings.catch_warnings(),
            record_item_steps(silo_driver, "user_solve", silo_stats) as rec,
        ):
            warnings.filterwarnings("ignore", category=PrivacyWarning)
            result = silo.run_local(parts, config)
        _require_steps(rec.steps, silo.noise_scale(config)[1])
        b = config.max_per_user
        sens = DPALSSensitivity.of(PrivacyUnit.USER, config.clip_norm, b, config.sampled)
        sigma = float(result.noise_scale)
        return _guarantee_run(
            _als_scores(
                canaries,
                np.asarray(result.head_items),
                np.asarray(result.noisy_counts, dtype=np.float64),
                rec.y_prev,
                rec.rhs,
                method=config.method,
                bound=b,
                count_sample=config.sampled,
                exponent=config.adaptive_exponent,
                alpha0=config.alpha0,
                user_regularization=config.user_regularization,
                clip_norm=config.clip_norm,
                rhs_std=config.rhs_noise_ratio * sigma / math.sqrt(b) * sens.rhs,
                count_std=config.count_noise_ratio * sigma * sens.counts,
            ),
            result.guarantee,
            [f"{rec.steps} private steps observed at the driver", f"{n_silos} silos"],
            released_bound=float(b),
        )


# ------------------------------------------------------------------------- FederatedMF
class FederatedMFTarget(AuditTarget):
    """FederatedMF: score = agreement of the canary's items' released factors.

    A sampled canary's clipped update pushes all of its items' factors along its own user
    vector, so an included canary's items end up aligned while an excluded canary's items
    keep their independent initial values (perturbed by noise). Score: the sum over pairs
    of the canary's items of ``⟨y_j, y_l⟩`` (``‖Σ_j y_j‖² − Σ_j ‖y_j‖²``) on the released
    item factors, centred on the canary-item mean. Black-box on the final model: the
    per-round noisy sums are not used. Dedicated canary items, all in the head
    (``head_items = None``).
    """

    name = "federated_mf"
    overrides: ClassVar[dict[str, Any]] = {"head_items": None}
    audit_params: ClassVar[tuple[str, ...]] = ("pool_cap", "canary_items")

    def contribution_bound(self) -> int:
        return int(self.params.get("canary_items", 8))

    def run(self, canaries: Canaries) -> TargetRun:
        from privrec.federated import FederatedMF

        model = _fit_quiet(FederatedMF(**self._model_params()), canaries.data)
        y = np.asarray(model.item_factors_, dtype=np.float64)
        y = y - y[canaries.canary_items].mean(axis=0)
        h = canaries.histories
        total = np.asarray(h @ y)
        own = h @ (y * y).sum(axis=1)
        return _guarantee_run(
            {"factor agreement": (total * total).sum(axis=1) - own},
            model.privacy_guarantee,
            ["final item factors only (black box)"],
        )


TARGETS: dict[str, type[AuditTarget]] = {
    t.name: t
    for t in (DPPopularityTarget, DPEASETarget, DPALSTarget, FederatedMFTarget, CrossSiloTarget)
}


def make_target(name: str, **params: Any) -> AuditTarget:
    """The audit target for a model name (``dppopularity``, ``dpease``, ``dpals``, …)."""
    if name not in TARGETS:
        raise ConfigError(f"no audit for model {name!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name](**params)
