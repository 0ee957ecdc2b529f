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

**RDP-only charges.** Some releases are only *proven* in Rényi DP: the distributed discrete
Gaussian / Skellam sums of FederatedMF (KLS21's and AKL21's bounds, at integer orders) and the
cross-silo discrete-Gaussian releases. Their events are Gaussian events whose RDP curve
dominates the bound; the PLD of that Gaussian would overstate their privacy. Such a charge is
reserved with ``accountant="rdp"``: every event of it is stored with ``"accountant": "rdp"``,
it never joins the Gaussian-rate sum, and a scope holding one is composed — all its charges —
with the RDP accountant at :data:`~privrec.privacy.accounting.INTEGER_RDP_ORDERS` (a valid
bound for every event, and the orders FederatedMF's own accountant uses), whatever the
budget's accountant says.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import Any

import dp_accounting
from dp_accounting import dp_event

from privrec.errors import GovernanceError
from privrec.privacy.accounting import INTEGER_RDP_ORDERS, epsilon_of, simplify
from privrec.privacy.events import SpentEvent, event_from_dict, total_event
from privrec.privacy.units import PrivacyUnit

__all__ = ["RDP_ONLY", "ChargeEvents", "composed_epsilon", "event_key"]

#: The accountant value marking a charge whose events are proven only in RDP.
RDP_ONLY = "rdp"


def event_key(event: dp_accounting.DpEvent) -> str:
    """Canonical JSON of one event (to compare planned and released events exactly)."""
    from privrec.privacy.events import event_to_dict

    return json.dumps(event_to_dict(event), sort_keys=True, separators=(",", ":"))


def _rdp_epsilon(event: dp_accounting.DpEvent, delta: float, unit: PrivacyUnit) -> float:
    """ε at ``delta`` with the RDP accountant at the integer orders (RDP-only scopes)."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        acc = dp_accounting.rdp.RdpAccountant(
            orders=list(INTEGER_RDP_ORDERS), neighboring_relation=unit.relation
        )
        acc.compose(simplify(event))
        return float(acc.get_epsilon(delta))
    finally:
        log.setLevel(level)


class ChargeEvents:
    """A charge's events in the forms the ledger stores: canonical JSON and (if Gaussian) a rate."""

    def __init__(
        self,
        spent: Sequence[SpentEvent] | Sequence[dict[str, Any]],
        *,
        accountant: str | None = None,
    ) -> None:
        if accountant not in (None, RDP_ONLY):
            raise GovernanceError(
                f"a charge's accountant is None (any) or {RDP_ONLY!r} (proven only in RDP), "
                f"found {accountant!r}"
            )
        marked = any(isinstance(s, dict) and s.get("accountant") == RDP_ONLY for s in spent)
        items = [s if isinstance(s, SpentEvent) else SpentEvent.from_dict(s) for s in spent]
        if not items:
            raise ValueError("a charge needs at least one event")
        self.spent = items
        self.event = total_event(items)
        #: whether the events are proven only in RDP (composed with RDP, never as Gaussians):
        #: marked so by the caller, or holding an event PLD cannot account (private tuning's
        #: repeat-and-select — a PLD budget used to fail on it with dp-accounting's raw error)
        self.rdp_only = accountant == RDP_ONLY or marked or _rdp_only_kind(self.event)
        extra = {"accountant": RDP_ONLY} if self.rdp_only else {}
        #: labelled events as canonical JSON: what the ledger stores and groups identical charges by
        self.json = json.dumps(
            [{**s.to_dict(), **extra} for s in items], sort_keys=True, separators=(",", ":")
        )
        simple = simplify(self.event)
        self.gaussian_rate: float | None = (
            1.0 / simple.noise_multiplier**2
            if isinstance(simple, dp_accounting.GaussianDpEvent)
            and simple.noise_multiplier > 0
            and not self.rdp_only
            else None
        )

    def epsilon(self, delta: float, accountant: str, unit: PrivacyUnit) -> float:
        if self.rdp_only:
            return _rdp_epsilon(self.event, delta, unit)
        return epsilon_of(self.event, delta, accountant, unit)


def _rdp_only_kind(event: dp_accounting.DpEvent) -> bool:
    """Whether ``event`` holds a kind only the RDP accountant composes (repeat-and-select)."""
    if isinstance(event, dp_event.RepeatAndSelectDpEvent):
        return True
    if isinstance(event, dp_accounting.SelfComposedDpEvent | dp_accounting.PoissonSampledDpEvent):
        return _rdp_only_kind(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return any(_rdp_only_kind(e) for e in event.events)
    return False


def _event_of_json(text: str) -> tuple[dp_accounting.DpEvent, bool]:
    """A stored charge's composed event, and whether it is RDP-only."""
    items = json.loads(text)
    event = total_event([SpentEvent("", event_from_dict(d["event"])) for d in items])
    return event, any(d.get("accountant") == RDP_ONLY for d in items)


def composed_epsilon(
    gaussian_rate: float,
    grouped: Sequence[tuple[str, int]],
    delta: float,
    accountant: str,
    unit: PrivacyUnit,
) -> float:
    """ε at ``delta`` of the composition of charges given as a Gaussian rate sum and grouped others.

    ``grouped`` holds ``(events JSON, number of charges with exactly these events)``. A scope
    holding an RDP-only charge is composed with RDP at the integer orders (module docstring).
    """
    if not grouped:
        return _gaussian_epsilon(float(gaussian_rate), float(delta), str(accountant), unit)
    parts: list[dp_accounting.DpEvent] = []
    if gaussian_rate > 0:
        parts.append(dp_accounting.GaussianDpEvent(gaussian_rate**-0.5))
    rdp_only = False
    for text, count in grouped:
        ev, marked = _event_of_json(text)
        rdp_only = rdp_only or marked
        parts.append(ev if count == 1 else dp_accounting.SelfComposedDpEvent(ev, int(count)))
    if not parts:
        return 0.0
    if rdp_only:
        return _rdp_epsilon(dp_accounting.ComposedDpEvent(parts), delta, unit)
    return epsilon_of(parts, delta, accountant, unit)


@functools.lru_cache(maxsize=1 << 16)
def _gaussian_epsilon(rate: float, delta: float, accountant: str, unit: PrivacyUnit) -> float:
    """ε of Gaussian charges alone (their summed rate): memoised, since listings and the spend
    curves ask for the same exact rates again and again (dp-accounting's closed form costs ms)."""
    if rate <= 0:
        return 0.0
    return epsilon_of([dp_accounting.GaussianDpEvent(rate**-0.5)], delta, accountant, unit)
