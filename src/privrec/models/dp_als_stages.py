"""DPALS's release bookkeeping, shared by the central fit and the Ray engine's driver.

Split out of :mod:`privrec.models.dp_als`: what a fit fixes before the data are read
(:class:`_Calibration`), the split of the rate after the length histogram between the counts and
the steps (:meth:`DPALSReleases._split_counts`), and the recording of the histogram and count
releases. The Ray driver (:mod:`privrec.engine.fitting`) passes the workers' reduced sums to
these same methods, so both fits add the same noise in the same order and report the same
releases (labels, stds, events) to the ``on_release`` hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from privrec.models.dp_als_accounting import (
    REST_LABEL,
    DPALSSensitivity,
    RestSplit,
    count_base_share,
    split_rest,
)
from privrec.models.dp_als_released import ReleasedItemFactors
from privrec.models.dp_rules import LengthProfile, dpals_count_share
from privrec.privacy.bounds import LENGTHS_LABEL, length_sensitivity
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.units import PrivacyUnit

if TYPE_CHECKING:
    from privrec.models.dp_als import DPALSConfig

__all__ = ["DPALSReleases"]


class _Calibration(NamedTuple):
    """What :meth:`DPALS._calibrate` fixes before the data is read."""

    ratios: tuple[float, float, float, float]
    iterations: int
    length_ratio: float | None
    b_plan: int
    sigma: float
    planned: list[SpentEvent]


class DPALSReleases(ReleasedItemFactors):
    """Base of :class:`~privrec.models.dp_als.DPALS`: the releases' bookkeeping of its fit."""

    count_budget_fraction_: float
    count_noise_multiplier_: float

    def _split_counts(
        self, c: DPALSConfig, cal: _Calibration, profile: LengthProfile | None, n_items: int
    ) -> tuple[float, float]:
        """(the counts' multiplier, the steps' σ), kept as ``count_noise_multiplier_`` and
        ``noise_scale_``: the fixed ratios, or — when the counts and steps were announced as one
        event — its split read from the noisy histogram (opens the group of releases that make
        it up; :meth:`_finish` checks they do)."""
        ratios, sigma = cal.ratios, cal.sigma
        base = count_base_share(cal.iterations, cal.b_plan, ratios, c.lhs)
        z_counts, self.count_budget_fraction_ = ratios[3] * sigma, base
        self._split: RestSplit | None = None
        if cal.planned[-1].label == REST_LABEL:
            share = dpals_count_share(base, profile, n_items, c.epsilon)
            self._split = split_rest(sigma, cal.iterations, cal.b_plan, ratios, c.lhs, share)
            self._open_group(cal.planned[-1])
            z_counts, sigma = self._split.z_counts, self._split.sigma_steps
            self.count_budget_fraction_ = share
        self.count_noise_multiplier_, self.noise_scale_ = z_counts, sigma
        return z_counts, sigma

    def _release_lengths(
        self, hist: np.ndarray, z_len: float, unit: PrivacyUnit, n_items: int
    ) -> LengthProfile:
        """Record the noisy length histogram (multiplier ``z_len``); its profile → B, k."""
        len_sens = length_sensitivity(unit)
        self._release(
            SpentEvent(LENGTHS_LABEL, gaussian_event(z_len)),
            hist,
            name="lengths",
            noise_std=z_len * len_sens,
            sensitivity=len_sens,
        )
        return LengthProfile(hist, z_len * len_sens, n_items)

    def _release_counts(
        self, noisy_counts: np.ndarray, z_counts: float, sens: DPALSSensitivity
    ) -> None:
        """Record the noisy item counts (multiplier ``z_counts``)."""
        self._release(
            SpentEvent("noisy item counts", gaussian_event(z_counts)),
            noisy_counts,
            name="counts",
            noise_std=z_counts * sens.counts,
            sensitivity=sens.counts,
        )
