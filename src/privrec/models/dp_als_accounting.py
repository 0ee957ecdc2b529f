"""DPALS's privacy accounting: sensitivities, the releases of one run and their DP event.

Split out of :mod:`privrec.models.dp_als` (which re-exports everything here): the
sensitivity of each released statistic per privacy unit (:class:`DPALSSensitivity`, with its
proof sketch), the noisy releases a run makes (:func:`dpals_releases`) and the composed
dp-accounting event that the model's guarantee is computed from (:func:`dpals_event`). The
central model, FederatedDPALS and the cross-silo driver all account through these.
"""

from __future__ import annotations

import math
from typing import Literal

import dp_accounting
import pydantic

from privrec.privacy.accounting import compose
from privrec.privacy.bounds import LENGTHS_LABEL
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.units import PrivacyUnit

__all__ = ["LHS", "DPALSSensitivity", "dpals_event", "dpals_releases", "released_outputs"]

LHS = Literal["full", "diagonal", "none"]


def released_outputs(lhs: str) -> list[str]:
    """What a DPALS fit releases (central and Ray engine alike), as its guarantee states it.

    ``lhs="none"`` releases no per-item left-hand side and ``"diagonal"`` only their diagonals:
    a guarantee that listed "per-item left- and right-hand sides" for them would claim a
    release that never happened (and hide which one did).
    """
    per_item = {
        "full": "per-item left-hand sides (k×k) and right-hand sides",
        "diagonal": "the diagonals of the per-item left-hand sides and the right-hand sides",
        "none": "per-item right-hand sides; no per-item left-hand side",
    }[lhs]
    return [
        "item factors (all of them, after the last private step)",
        "noisy item counts and the head item set",
        f"the per-step noisy statistics (Gramian, {per_item})",
    ]


class DPALSSensitivity(pydantic.BaseModel):
    """L2 sensitivities of the released statistics for one privacy unit (in absolute units)."""

    model_config = pydantic.ConfigDict(frozen=True)

    gram: float
    lhs: float
    rhs: float
    counts: float

    @classmethod
    def of(
        cls, unit: PrivacyUnit, clip_norm: float, max_per_user: int, count_sample: int
    ) -> DPALSSensitivity:
        """Sensitivities given the contribution bounds.

        USER (add/remove one user ``u`` whose clipped factors satisfy ‖x_u‖ ≤ Γ
        and whose weights satisfy Σ_j c_uj² ≤ B):

        * Gramian Σ_u x_u x_uᵀ: ‖x_u x_uᵀ‖_F = ‖x_u‖² ≤ Γ².
        * Per-item left-hand sides Σ_u c_uj x_u x_uᵀ, all items stacked:
          √(Σ_j c_uj² ‖x_u‖⁴) ≤ √B Γ².
        * Per-item right-hand sides Σ_u c_uj x_u: √(Σ_j c_uj² ‖x_u‖²) ≤ √B Γ.
        * Item counts over ≤ count_sample sampled items per user: √count_sample.

        INTERACTION (one interaction of user ``u`` added or removed): ``u``'s
        factors are solved from all of ``u``'s data, so the whole of ``u``'s
        contribution may change — from one bounded value to another — which
        doubles the first three bounds; the count sample may swap one item
        (√2). Interaction-level privacy therefore saves nothing here.
        """
        f = 2.0 if unit is PrivacyUnit.INTERACTION else 1.0
        b = math.sqrt(max_per_user)
        counts = math.sqrt(2.0) if unit is PrivacyUnit.INTERACTION else math.sqrt(count_sample)
        return cls(
            gram=f * clip_norm**2, lhs=f * b * clip_norm**2, rhs=f * b * clip_norm, counts=counts
        )


def dpals_event(
    sigma: float,
    iterations: int,
    max_per_user: int,
    ratios: tuple[float, float, float, float],
    length_ratio: float | None = None,
    lhs: LHS = "full",
) -> dp_accounting.DpEvent:
    """The whole training's accounting event for noise scale σ.

    Per step, three Gaussian releases with multipliers ``r0·σ`` (Gramian),
    ``r1·σ/√B`` (left-hand sides) and ``r2·σ/√B`` (right-hand sides) — the
    noise standard deviations are ``r0·σ·Γ²``, ``r1·σ·Γ²`` and ``r2·σ·Γ`` against
    sensitivities ``Γ²``, ``√B Γ²`` and ``√B Γ`` — composed over the
    ``iterations`` steps, plus one noisy-count release with multiplier ``r3·σ``
    (``count_stddev / √count_sample``). With ``length_ratio`` (a data-adaptive
    bound), first the history-length histogram with multiplier ``length_ratio·σ``
    (sensitivity 1), and ``max_per_user`` is the nominal bound B₀ that fixes the
    split (see :class:`DPALS`). ``lhs="diagonal"`` releases only the diagonals of
    the left-hand sides (same multiplier: their sensitivity is at most the full
    one's), ``"none"`` no left-hand side at all.
    """
    first = [] if length_ratio is None else [gaussian_event(length_ratio * sigma)]
    return compose(
        [
            *first,
            gaussian_event(ratios[3] * sigma),
            dp_accounting.SelfComposedDpEvent(
                _step_event(sigma, max_per_user, ratios, lhs), iterations
            ),
        ]
    )


def _step_event(
    sigma: float, max_per_user: int, ratios: tuple[float, float, float, float], lhs: LHS
) -> dp_accounting.DpEvent:
    return compose([s.event for s in _step_releases(1, sigma, max_per_user, ratios, lhs)])


def _step_releases(
    step: int, sigma: float, max_per_user: int, ratios: tuple[float, float, float, float], lhs: LHS
) -> list[SpentEvent]:
    r0, r1, r2, _ = ratios
    b = math.sqrt(max_per_user)
    out = [SpentEvent(f"step {step}: noisy Gramian", gaussian_event(r0 * sigma))]
    if lhs != "none":
        what = "left-hand sides" if lhs == "full" else "left-hand-side diagonals"
        out.append(SpentEvent(f"step {step}: noisy item {what}", gaussian_event(r1 * sigma / b)))
    out.append(
        SpentEvent(f"step {step}: noisy item right-hand sides", gaussian_event(r2 * sigma / b))
    )
    return out


def dpals_releases(
    sigma: float,
    iterations: int,
    max_per_user: int,
    ratios: tuple[float, float, float, float],
    length_ratio: float | None = None,
    lhs: LHS = "full",
) -> list[SpentEvent]:
    """The labelled releases of one training, in order (:func:`dpals_event` is their composition).

    Announced before any noise is drawn (the write-ahead charge of :mod:`privrec.governance`);
    ``fit`` then records exactly these as it makes them.
    """
    out = []
    if length_ratio is not None:
        out.append(SpentEvent(LENGTHS_LABEL, gaussian_event(length_ratio * sigma)))
    out.append(SpentEvent("noisy item counts", gaussian_event(ratios[3] * sigma)))
    for step in range(iterations):
        out += _step_releases(step + 1, sigma, max_per_user, ratios, lhs)
    return out
