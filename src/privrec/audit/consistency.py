"""Does a private model ship what its reported releases give? (a white-box audit's blind spot)

Why: the DPALS audit scores canaries on the statistics the fit *reports* releasing (its
``on_release`` hook). A fit that reported its noisy statistics but solved the items from other
ones — the clean sums, say — would pass it, since every audited number would look right
(a review planted exactly that: audit ε_LB 0.00, while a score on the shipped factors showed
1.81 at ε = 1). Solving the items is post-processing of the reported releases, so the shipped
factors must be recomputable from them: this module recomputes every step's solve from the
reported Gramian, left-hand sides and right-hand sides with privrec's reference solvers
(:mod:`privrec.privacy.postprocessing`, not the model module's names) and compares the chain
with what the next step started from and with the factors the model ships.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from privrec.privacy.postprocessing import diagonal_solve, project_psd, psd_solve, shared_solve

__all__ = ["dpals_solve_mismatch"]

#: float32 factors against float64 solves, plus the projection's own rounding
_RTOL = 2e-3


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-12)
    return bool(np.allclose(a, b, rtol=_RTOL, atol=_RTOL * scale))


def dpals_solve_mismatch(model: Any, released: Sequence[Any], config: Any) -> str | None:
    """``None`` when ``model``'s shipped head factors are the solves of its reported releases;
    otherwise why not (the audit then flags the model).

    ``released`` are the fit's :class:`~privrec.models.releases.Release` objects in order;
    ``config`` its :class:`~privrec.models.dp_als.DPALSConfig`.
    """
    head = np.asarray(model.head_items_)
    counts_h = np.asarray(model.noisy_counts_, dtype=np.float64)[head]
    reg_items = float(model.regularization_) * (1.0 + np.maximum(counts_h, 0.0)) ** float(
        config.reg_exponent
    )
    alpha0 = float(model.alpha0_)
    by_step: dict[int, dict[str, Any]] = {}
    for r in released:
        if r.step is not None:
            by_step.setdefault(int(r.step), {})[r.name] = r
    solves: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    for step in sorted(by_step):
        got = by_step[step]
        if "gramian" not in got or "rhs" not in got:
            return f"step {step} reported no Gramian or right-hand sides"
        g = project_psd(np.asarray(got["gramian"].value, dtype=np.float64))
        rhs = np.asarray(got["rhs"].value, dtype=np.float64)
        if config.lhs == "none":
            y = shared_solve(alpha0 * g, rhs, reg_items)
        elif config.lhs == "full":
            lhs = np.asarray(got["lhs"].value, dtype=np.float64)
            y, _ = psd_solve(alpha0 * g, lhs, rhs, reg_items, "if_indefinite")
        else:
            lhs = np.asarray(got["lhs_diagonal"].value, dtype=np.float64)
            y = diagonal_solve(alpha0 * g, lhs, rhs, reg_items)
        solves.append(np.asarray(y, dtype=np.float64))
        starts.append(np.asarray(got["rhs"].item_factors, dtype=np.float64))
    if not solves:
        return "no private step was reported"
    if bool(model.one_round_):
        # one round: every step starts from the initial factors; the result is the solves' mean
        chain = [np.mean(solves[: i + 1], axis=0) for i in range(len(solves))]
    else:
        chain = solves
        for i in range(1, len(solves)):
            if not _close(starts[i], solves[i - 1]):
                return (
                    f"step {i + 1} started from item factors that are not step {i}'s solve of "
                    "its reported releases"
                )
    w = float(model.step_averaging_)
    final = chain[-1] if w == 0.0 or len(chain) < 2 else w * chain[-2] + (1.0 - w) * chain[-1]
    shipped = np.asarray(model.item_factors_, dtype=np.float64)[head]
    if not _close(shipped, final):
        return "the shipped item factors are not the solves of the reported releases"
    return None
