"""The one-run audit of a private model, and the battery a CI runs.

:func:`one_run_audit` plants m canaries (each included with probability ½), trains the
model once, scores every canary from the release and turns the guesses into an ε lower
bound (:func:`privrec.audit.bounds.one_run_bound`). :func:`audit_model` runs several
canary designs — the tight one (closest bound on a correct model) and the heavy one
(catches a missing contribution bound), and for factor models the clip design (catches
missing factor clipping) — each at confidence ``1 − β / n_designs``, so
the largest bound holds at ``1 − β`` and a model whose bound exceeds its claimed ε is
**flagged**: at that confidence, its implementation does not deliver the guarantee.

"Not flagged" only means something when the audit *could* have flagged. A design is
**inconclusive** when its cap (the bound with every guess right) is below the claimed ε —
it is blind to any violation — or when its heavy canaries are not far longer than the
per-user bound the model released (they would not show a missing cap). The verdict is
then "inconclusive", never "ok"; ``conclusive`` and ``blind`` say so in the JSON too, and
the CLI's CI gate fails on them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from privrec.audit.bounds import OneRunBound, one_run_bound
from privrec.audit.canaries import CanaryDesign, plant
from privrec.audit.targets import AuditTarget
from privrec.data.interactions import Interactions
from privrec.errors import ConfigError

__all__ = ["ModelAudit", "OneRunAudit", "SelfReport", "audit_model", "one_run_audit", "overspent"]


def overspent(
    epsilon: float, delta: float, reported_epsilon: float | None, reported_delta: float | None
) -> bool:
    """Whether a model's reported (ε, δ) exceeds the requested one (relative tolerance 1e-6)."""
    if reported_epsilon is None or reported_delta is None:
        return False
    return (
        reported_epsilon > epsilon * (1 + 1e-6) + 1e-12
        or reported_delta > delta * (1 + 1e-6) + 1e-300
    )


@dataclass(frozen=True)
class SelfReport:
    """What the audited models said about themselves, beside the claim (the request).

    ``reported_epsilon``/``reported_delta``: the (largest) guarantee the trained models reported;
    ``mismatch``: why a shipped model is not what its reported releases give
    (:mod:`privrec.audit.consistency`). Keyword-only, after each audit's own fields.
    """

    claimed_epsilon: float
    delta: float
    reported_epsilon: float | None = field(default=None, kw_only=True)
    reported_delta: float | None = field(default=None, kw_only=True)
    mismatch: str | None = field(default=None, kw_only=True)

    @property
    def overspent(self) -> bool:
        """The models' own accounting reports more than was asked (see :func:`overspent`)."""
        return overspent(
            self.claimed_epsilon, self.delta, self.reported_epsilon, self.reported_delta
        )

    def self_report(self) -> dict[str, Any]:
        return {
            "reported_epsilon": self.reported_epsilon,
            "reported_delta": self.reported_delta,
            "overspent": self.overspent,
            "mismatch": self.mismatch,
        }


@dataclass(frozen=True)
class OneRunAudit(SelfReport):
    """One design's one-run audit of one model."""

    model: str
    design: CanaryDesign
    bound: OneRunBound
    seeded_noise: bool
    seconds: float
    notes: tuple[str, ...] = ()
    #: the per-user bound the fit released (B or C; ``None``: none)
    released_bound: float | None = None
    #: why a heavy design cannot show a missing cap (empty: it can)
    design_issues: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        """ε lower bound above the claimed ε (at the bound's confidence), or a model whose own
        guarantee reports more than the requested (ε, δ)."""
        return self.bound.epsilon_lb > self.claimed_epsilon or self.overspent or bool(self.mismatch)

    @property
    def blind(self) -> bool:
        """The cap is below the claimed ε: this design could never flag the claim."""
        return self.bound.cap < self.claimed_epsilon

    @property
    def issues(self) -> tuple[str, ...]:
        """Why "not flagged" means nothing for this design (empty: conclusive)."""
        blind = (
            (
                f"{self.design.label}: cannot detect a violation — the largest ε lower bound it "
                f"can show is {self.bound.cap:.2f}, below the claimed ε = {self.claimed_epsilon:g}",
            )
            if self.blind
            else ()
        )
        return blind + self.design_issues

    @property
    def conclusive(self) -> bool:
        return not self.issues

    @property
    def verdict(self) -> str:
        """``"FLAGGED"`` (a flag holds whatever else), else ``"ok"`` or ``"inconclusive"``."""
        return "FLAGGED" if self.flagged else "ok" if self.conclusive else "inconclusive"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "design": {
                "label": self.design.label,
                "n_canaries": self.design.n_canaries,
                "items_per_canary": self.design.items_per_canary,
                "pool_items": self.design.pool_items,
            },
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            **self.self_report(),
            "flagged": self.flagged,
            "conclusive": self.conclusive,
            "blind": self.blind,
            "verdict": self.verdict,
            "issues": list(self.issues),
            "released_bound": self.released_bound,
            "seeded_noise": self.seeded_noise,
            "seconds": self.seconds,
            "notes": list(self.notes),
            "bound": self.bound.to_dict(),
        }


#: heavy canaries must hold at least this share of the heavy factor times the released bound
HEAVY_MARGIN = 0.5


def heavy_issues(
    target: AuditTarget, design: CanaryDesign, released: float | None
) -> tuple[str, ...]:
    """Why a heavy design cannot show a missing cap, given the bound the fit released.

    The heavy design works only if its canaries hold far more items than the model's
    per-user bound (``heavy_factor`` times, by construction). A data-adaptive bound can
    end up near the canaries' length (they move the length quantile it is read from);
    the canaries are then barely capped by a correct model, a missing cap adds nothing
    and "not flagged" says nothing. Required: ``L ≥ HEAVY_MARGIN · heavy_factor · bound``.
    """
    if design.label != "heavy" or released is None:
        return ()
    need = HEAVY_MARGIN * target.heavy_factor * released
    if design.items_per_canary >= need:
        return ()
    return (
        f"heavy: canaries hold L = {design.items_per_canary} items, not well above the released "
        f"per-user bound {released:g} (need L ≥ {need:g}); a missing cap would not show",
    )


def one_run_audit(
    target: AuditTarget,
    base: Interactions,
    design: CanaryDesign,
    *,
    confidence: float = 0.95,
    seed: int | None = None,
    grid: Sequence[int] | None = None,
) -> OneRunAudit:
    """Plant ``design``'s canaries in ``base``, train ``target`` once, bound ε.

    ``seed`` fixes which canaries are included (and the canary-item pool); the model's
    own noise follows its ``seed`` parameter (none: CSPRNG).
    """
    t0 = time.perf_counter()
    canaries = plant(base, design, seed=seed)
    run = target.run(canaries)
    # the claim is what was asked for, not what the model reports: a model calibrated to the
    # wrong ε that honestly records it passed against its own record (review, 2026-12-07)
    bound = one_run_bound(
        run.scores, canaries.included, delta=target.delta, confidence=confidence, grid=grid
    )
    return OneRunAudit(
        model=target.name,
        design=design,
        claimed_epsilon=target.epsilon,
        delta=target.delta,
        reported_epsilon=run.epsilon,
        reported_delta=run.delta,
        mismatch=run.mismatch,
        bound=bound,
        seeded_noise=run.seeded_noise,
        seconds=time.perf_counter() - t0,
        notes=tuple(run.notes),
        released_bound=run.released_bound,
        design_issues=heavy_issues(target, design, run.released_bound),
    )


@dataclass(frozen=True)
class ModelAudit:
    """Every design's audit of one model; flagged if any design's bound exceeds ε."""

    model: str
    claimed_epsilon: float
    confidence: float
    audits: tuple[OneRunAudit, ...] = field(default_factory=tuple)

    @property
    def epsilon_lb(self) -> float:
        return max(a.bound.epsilon_lb for a in self.audits)

    @property
    def flagged(self) -> bool:
        return any(a.flagged for a in self.audits)

    @property
    def blind(self) -> bool:
        """Some design could never flag the claim (its cap is below the claimed ε)."""
        return any(a.blind for a in self.audits)

    @property
    def issues(self) -> tuple[str, ...]:
        return tuple(i for a in self.audits for i in a.issues)

    @property
    def conclusive(self) -> bool:
        """Every design could have flagged a violation of the kind it tests."""
        return all(a.conclusive for a in self.audits)

    @property
    def verdict(self) -> str:
        """``"FLAGGED"``, ``"ok"`` (conclusive and not flagged) or ``"inconclusive"``."""
        return "FLAGGED" if self.flagged else "ok" if self.conclusive else "inconclusive"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "claimed_epsilon": self.claimed_epsilon,
            "confidence": self.confidence,
            "epsilon_lb": self.epsilon_lb,
            "flagged": self.flagged,
            "conclusive": self.conclusive,
            "blind": self.blind,
            "verdict": self.verdict,
            "issues": list(self.issues),
            "audits": [a.to_dict() for a in self.audits],
        }

    def summary(self) -> str:
        parts = ", ".join(
            f"{a.design.label}: ε_LB {a.bound.epsilon_lb:.2f} ({a.bound.correct}/{a.bound.guesses})"
            for a in self.audits
        )
        issues = "".join(f"; {i}" for i in self.issues)
        odd = next((a.mismatch for a in self.audits if a.mismatch), None)
        if odd is not None:
            issues += f"; {odd}"
        over = next((a for a in self.audits if a.overspent), None)
        if over is not None:
            issues += (
                f"; the model's own guarantee reports ε={over.reported_epsilon:.4g}, "
                f"δ={over.reported_delta:.3g} — more than the requested "
                f"(ε={self.claimed_epsilon:.4g}, δ={over.delta:.3g})"
            )
        return (
            f"{self.model} claimed ε={self.claimed_epsilon:.3g}: {self.verdict} — "
            f"{parts} at {self.confidence:.0%} confidence{issues}"
        )


def audit_model(
    target: AuditTarget,
    base: Interactions,
    *,
    n_canaries: int = 2000,
    designs: Sequence[str] | None = None,
    confidence: float = 0.95,
    seed: int | None = None,
) -> ModelAudit:
    """Run each named design (default: the target's for its unit; Bonferroni over designs).

    The verdict is "FLAGGED", "ok" or "inconclusive" (:attr:`ModelAudit.verdict`).
    """
    designs = target.default_designs() if designs is None else tuple(designs)
    if not designs:
        raise ConfigError("give at least one canary design")
    if not 0.5 <= confidence < 1.0:  # a "lower bound" held with less than even odds says nothing
        raise ConfigError(f"confidence must be in [0.5, 1), found {confidence}")
    per = 1.0 - (1.0 - confidence) / len(designs)
    audits = []
    for i, kind in enumerate(designs):
        design = target.design(kind, n_canaries, base.n_items)
        audits.append(
            one_run_audit(
                target, base, design, confidence=per, seed=None if seed is None else seed + i
            )
        )
    return ModelAudit(
        model=target.name,
        claimed_epsilon=audits[0].claimed_epsilon,
        confidence=confidence,
        audits=tuple(audits),
    )
