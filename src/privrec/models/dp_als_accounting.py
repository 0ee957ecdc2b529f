"""DPALS's privacy accounting: sensitivities, the releases of one run and their DP event.

Split out of :mod:`privrec.models.dp_als` (which re-exports everything here): the
sensitivity of each released statistic per privacy unit (:class:`DPALSSensitivity`, with its
proof sketch), the noisy releases a run makes (:func:`dpals_releases`) and the composed
dp-accounting event that the model's guarantee is computed from (:func:`dpals_event`). The
central model, FederatedDPALS and the cross-silo driver all account through these.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import dp_accounting
import pydantic

from privrec.privacy.accounting import compose, simplify
from privrec.privacy.bounds import LENGTHS_LABEL
from privrec.privacy.events import JOINT_MARK, SpentEvent
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "LHS",
    "REST_LABEL",
    "DPALSSensitivity",
    "RestSplit",
    "count_base_share",
    "dpals_event",
    "dpals_releases",
    "released_outputs",
    "split_rest",
]

#: The label of the counts and every step's statistics announced as one Gaussian event (a count
#: share read from the noisy length histogram, :func:`split_rest`).
REST_LABEL = f"noisy item counts and every step's statistics {JOINT_MARK}"

LHS = Literal["full", "diagonal", "none"]


def released_outputs(lhs: str, split: RestSplit | None = None) -> list[str]:
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
        *([] if split is None else [split.released()]),
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
    composite: bool = False,
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
    one's), ``"none"`` no left-hand side at all. ``composite``: everything after the
    histogram as the one Gaussian event of :func:`split_rest` (the same ε: a composition of
    Gaussian releases is exactly one Gaussian release with the summed rate).
    """
    first = [] if length_ratio is None else [gaussian_event(length_ratio * sigma)]
    if composite:
        rest = _rest_event(sigma, iterations, max_per_user, ratios, lhs)
        return compose([*first, rest])
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
    composite: bool = False,
) -> list[SpentEvent]:
    """The labelled releases of one training, in order (:func:`dpals_event` is their composition).

    Announced before any noise is drawn (the write-ahead charge of :mod:`privrec.governance`);
    ``fit`` then records exactly these as it makes them — with ``composite``, the histogram
    and one :data:`REST_LABEL` event that the counts and the steps' releases make up together
    (:func:`split_rest`).
    """
    out = []
    if length_ratio is not None:
        out.append(SpentEvent(LENGTHS_LABEL, gaussian_event(length_ratio * sigma)))
    if composite:
        return [
            *out,
            SpentEvent(REST_LABEL, _rest_event(sigma, iterations, max_per_user, ratios, lhs)),
        ]
    out.append(SpentEvent("noisy item counts", gaussian_event(ratios[3] * sigma)))
    for step in range(iterations):
        out += _step_releases(step + 1, sigma, max_per_user, ratios, lhs)
    return out


def _rest_event(
    sigma: float,
    iterations: int,
    max_per_user: int,
    ratios: tuple[float, float, float, float],
    lhs: LHS,
) -> dp_accounting.DpEvent:
    """The counts and the T steps' releases at σ as ONE Gaussian event (the summed rate)."""
    rest = dpals_releases(sigma, iterations, max_per_user, ratios, None, lhs)
    whole = simplify(compose([r.event for r in rest]))
    if not isinstance(whole, dp_accounting.GaussianDpEvent):
        raise ValueError(f"DPALS's releases have no finite Gaussian rate: {whole!r}")
    return whole


class RestSplit(NamedTuple):
    """How the rate after the histogram was split between the counts and the steps."""

    share: float
    base_share: float
    z_counts: float
    sigma_steps: float

    def released(self) -> str:
        """The split, as the guarantee's list of released outputs states it."""
        return (
            f"the noisy item counts' share {self.share:.3g} of the rate after the length "
            f"histogram (count noise multiplier {self.z_counts:.4g}, steps' noise scale "
            f"{self.sigma_steps:.4g}), read from the noisy histogram"
        )


def count_base_share(
    iterations: int, max_per_user: int, ratios: tuple[float, float, float, float], lhs: LHS
) -> float:
    """The counts' share of the rate after the histogram under the fixed ratios (σ cancels)."""
    rest = _rest_event(1.0, iterations, max_per_user, ratios, lhs)
    return float(rest.noise_multiplier**2 / ratios[3] ** 2)


def split_rest(
    sigma: float,
    iterations: int,
    max_per_user: int,
    ratios: tuple[float, float, float, float],
    lhs: LHS,
    share: float,
) -> RestSplit:
    """Give the counts ``share`` of the rate R = 1/z_rest² of :data:`REST_LABEL`'s event.

    At σ the counts' multiplier ``r3·σ`` takes the base share s₀ of R; the split keeps R and
    gives the counts ``share`` instead: ``z_counts = z_rest/√share`` and every step's
    multiplier scaled by ``√((1 − s₀)/(1 − share))``, i.e. the steps run at
    ``σ_steps = σ·√((1 − s₀)/(1 − share))`` with the same ratios. Valid when ``share`` is read
    from the released histogram: for every histogram output the rest are Gaussian mechanisms
    whose rates sum to R, and adaptively composed Gaussian mechanisms are GDP with the summed
    μ² (Dong, Roth & Su 2022) — exactly the ``GaussianDpEvent(z_rest)`` announced before any
    noise was drawn.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"the counts' share must be in (0, 1), found {share}")
    rest = _rest_event(sigma, iterations, max_per_user, ratios, lhs)
    base = float(rest.noise_multiplier**2 / (ratios[3] * sigma) ** 2)  # = count_base_share
    sigma_steps = sigma * math.sqrt((1.0 - base) / (1.0 - share))
    return RestSplit(share, base, rest.noise_multiplier / math.sqrt(share), sigma_steps)
