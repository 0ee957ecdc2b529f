"""The multi-run audit: many trainings with and without one canary (Jagielski et al. 2020).

Tighter than the one-run audit for one model at a time, because each run's guess is
about the single canary whose presence changes between runs — but it costs hundreds of
trainings, so it runs on small data. Runs alternate between "with" and "without" the
canary (each with fresh noise); the first half of the runs picks the threshold that
separates them best, the second half bounds the false-positive and false-negative
rates with Clopper–Pearson intervals (:func:`privrec.audit.bounds.multi_run_bound`), so
the choice of threshold costs no confidence.

The canary is the tight design with one canary; its score is the sum of the target's
parts as they come (matched filters weighted by the claimed noise), a fixed function
of each run's release.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from privrec.audit.bounds import MultiRunBound, best_threshold, multi_run_bound
from privrec.audit.canaries import plant
from privrec.audit.one_run import SelfReport
from privrec.audit.targets import AuditTarget
from privrec.data.interactions import Interactions
from privrec.errors import ConfigError

__all__ = ["MultiRunAudit", "multi_run_audit"]


@dataclass(frozen=True)
class MultiRunAudit(SelfReport):
    """Result of a multi-run audit of one model (the reported guarantee is the runs' largest)."""

    model: str
    runs: int
    bound: MultiRunBound
    seconds: float

    @property
    def flagged(self) -> bool:
        return self.bound.epsilon_lb > self.claimed_epsilon or self.overspent or bool(self.mismatch)

    @property
    def blind(self) -> bool:
        """The cap (no error at all at the test runs) is below the claimed ε: the audit could
        never flag the claim, so "not flagged" means nothing."""
        return self.bound.cap < self.claimed_epsilon

    @property
    def conclusive(self) -> bool:
        return not self.blind

    @property
    def issues(self) -> tuple[str, ...]:
        if not self.blind:
            return ()
        return (
            f"cannot detect a violation — the largest ε lower bound {self.runs} runs can show is "
            f"{self.bound.cap:.2f}, below the claimed ε = {self.claimed_epsilon:g}",
        )

    @property
    def verdict(self) -> str:
        """``"FLAGGED"``, ``"ok"`` (conclusive and not flagged) or ``"inconclusive"``."""
        return "FLAGGED" if self.flagged else "ok" if self.conclusive else "inconclusive"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            **self.self_report(),
            "runs": self.runs,
            "flagged": self.flagged,
            "conclusive": self.conclusive,
            "blind": self.blind,
            "verdict": self.verdict,
            "issues": list(self.issues),
            "seconds": self.seconds,
            "bound": self.bound.to_dict(),
        }

    def summary(self) -> str:
        b = self.bound
        issues = "".join(f"; {i}" for i in self.issues)
        if self.mismatch:
            issues += f"; {self.mismatch}"
        if self.overspent:
            issues += (
                f"; the models' own guarantees report up to ε={self.reported_epsilon:.4g}, "
                f"δ={self.reported_delta:.3g} — more than the requested "
                f"(ε={self.claimed_epsilon:.4g}, δ={self.delta:.3g})"
            )
        return (
            f"{self.model} claimed ε={self.claimed_epsilon:.3g}: "
            f"{self.verdict} — multi-run ε_LB {b.epsilon_lb:.2f} "
            f"({self.runs} runs; FPR {b.fpr:.3f}, FNR {b.fnr:.3f} at the threshold) "
            f"at {b.confidence:.0%} confidence{issues}"
        )


def multi_run_audit(
    target: AuditTarget,
    base: Interactions,
    *,
    runs: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MultiRunAudit:
    """Train ``runs`` times (half with the canary), pick a threshold on half, bound ε on half."""
    if runs < 8 or runs % 4:
        raise ConfigError(f"runs must be a multiple of 4 and >= 8, found {runs}")
    if not 0.5 <= confidence < 1.0:
        raise ConfigError(f"confidence must be in [0.5, 1), found {confidence}")
    t0 = time.perf_counter()
    design = target.design("tight", 1, base.n_items)
    with_canary = plant(base, design, seed=seed, included=np.ones(1, bool))
    without = plant(base, design, seed=seed, included=np.zeros(1, bool))
    model_seed = target.params.get("seed")
    scores = np.empty(runs)
    member = np.arange(runs) % 2 == 0
    # the claim is the requested (ε, δ); what the models report is checked against it
    claimed, delta = target.epsilon, target.delta
    reported_eps = reported_delta = 0.0
    mismatch: str | None = None
    try:
        for r in range(runs):
            if model_seed is not None:
                target.params["seed"] = int(model_seed) + r  # fresh (seeded) noise per run
            out = target.run(with_canary if member[r] else without)
            scores[r] = float(sum(float(v[0]) for v in out.parts.values()))
            reported_eps = max(reported_eps, out.epsilon)
            mismatch = mismatch or out.mismatch
            reported_delta = max(reported_delta, out.delta)
    finally:
        if model_seed is not None:
            target.params["seed"] = model_seed
    half = runs // 2
    t = best_threshold(
        scores[:half][member[:half]], scores[:half][~member[:half]], delta, confidence
    )
    bound = multi_run_bound(
        scores[half:][member[half:]],
        scores[half:][~member[half:]],
        delta=delta,
        confidence=confidence,
        threshold=t,
    )
    return MultiRunAudit(
        model=target.name,
        claimed_epsilon=claimed,
        delta=delta,
        runs=runs,
        bound=bound,
        seconds=time.perf_counter() - t0,
        reported_epsilon=reported_eps,
        reported_delta=reported_delta,
        mismatch=mismatch,
    )
