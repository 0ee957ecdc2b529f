"""Composing a dataset's charges with dp-accounting (PLD by default, RDP on request).

A scope's spent privacy is the composition of every reserved and committed charge's events,
computed by :func:`privrec.privacy.accounting.epsilon_of` at the budget's δ — never a sum of ε's.
Two exact rewrites keep that fast with thousands of charges:

* every unsampled Gaussian release ``N(0, z²Δ²)`` is kept as its rate ``1/z²``; a set of them is
  exactly one Gaussian release with multiplier ``(Σ 1/z²)^{-1/2}`` (the same identity
  :func:`privrec.privacy.accounting.simplify` applies inside one model), so the database sums the
  rates in SQL and the accountant sees one event;
* identical non-Gaussian charges (e.g. Poisson-sampled federated rounds at one rate) are grouped
  and composed as one ``SelfComposedDpEvent(event, count)``.

The *naive* sum of each charge's own ε is computed beside it, only to show the saving.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import dp_accounting

from privrec.privacy.accounting import epsilon_of, simplify
from privrec.privacy.events import SpentEvent, event_from_dict, total_event
from privrec.privacy.units import PrivacyUnit

__all__ = ["ChargeEvents", "composed_epsilon"]


class ChargeEvents:
    """A charge's events in the forms the ledger stores: canonical JSON and (if Gaussian) a rate."""

    def __init__(self, spent: Sequence[SpentEvent] | Sequence[dict[str, Any]]) -> None:
        items = [s if isinstance(s, SpentEvent) else SpentEvent.from_dict(s) for s in spent]
        if not items:
            raise ValueError("a charge needs at least one event")
        self.spent = items
        self.event = total_event(items)
        #: labelled events as canonical JSON: what the ledger stores and groups identical charges by
        self.json = json.dumps([s.to_dict() for s in items], sort_keys=True, separators=(",", ":"))
        simple = simplify(self.event)
        self.gaussian_rate: float | None = (
            1.0 / simple.noise_multiplier**2
            if isinstance(simple, dp_accounting.GaussianDpEvent) and simple.noise_multiplier > 0
            else None
        )

    def epsilon(self, delta: float, accountant: str, unit: PrivacyUnit) -> float:
        return epsilon_of(self.event, delta, accountant, unit)


def _event_of_json(text: str) -> dp_accounting.DpEvent:
    return total_event([SpentEvent("", event_from_dict(d["event"])) for d in json.loads(text)])


def composed_epsilon(
    gaussian_rate: float,
    grouped: Sequence[tuple[str, int]],
    delta: float,
    accountant: str,
    unit: PrivacyUnit,
) -> float:
    """ε at ``delta`` of the composition of charges given as a Gaussian rate sum and grouped others.

    ``grouped`` holds ``(events JSON, number of charges with exactly these events)``.
    """
    if not grouped:
        return _gaussian_epsilon(float(gaussian_rate), float(delta), str(accountant), unit)
    parts: list[dp_accounting.DpEvent] = []
    if gaussian_rate > 0:
        parts.append(dp_accounting.GaussianDpEvent(gaussian_rate**-0.5))
    for text, count in grouped:
        ev = _event_of_json(text)
        parts.append(ev if count == 1 else dp_accounting.SelfComposedDpEvent(ev, int(count)))
    if not parts:
        return 0.0
    return epsilon_of(parts, delta, accountant, unit)


@functools.lru_cache(maxsize=1 << 16)
def _gaussian_epsilon(rate: float, delta: float, accountant: str, unit: PrivacyUnit) -> float:
    """ε of Gaussian charges alone (their summed rate): memoised, since listings and the spend
    curves ask for the same exact rates again and again (dp-accounting's closed form costs ms)."""
    if rate <= 0:
        return 0.0
    return epsilon_of([dp_accounting.GaussianDpEvent(rate**-0.5)], delta, accountant, unit)
