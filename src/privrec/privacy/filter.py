"""A privacy filter: a budget that one data owner enforces over releases chosen by someone else.

An accountant answers "what did this sequence of releases cost?" after the fact. A **filter**
answers "may I take part in one more?" before it happens, when the releases — how many, and how
much noise each — are chosen adaptively by a party the data owner does not trust (a federated
server that may lie about its plan). The owner admits a release only if the composition of
everything admitted so far and the new release stays within its own (ε, δ); a refused release
is never run on the owner's data.

Why this is sound even though the sequence is adaptive: composition theorems for (ε, δ)
accountants assume the mechanisms are fixed in advance. Filters are the fully adaptive version
(Rogers, Roth, Ullman & Vadhan 2016). For Rényi DP, Feldman & Zrnic (2021, Thm. 3.1) show that
halting as soon as the running sum of the releases' α-RDP would exceed a bound ``B`` keeps the
whole interaction ``(α, B)``-RDP at that order α. The filter here admits only **Gaussian**
releases (``dp_accounting.GaussianDpEvent`` — as :meth:`DistributedDPPlan.dp_event
<privrec.privacy.distributed.plan.DistributedDPPlan.dp_event>` gives for a distributed round,
a Gaussian whose RDP curve dominates the round's at every order). A Gaussian with multiplier
``z`` has RDP ``α/(2z²)`` at every order, so the sum of the admitted releases' RDP is
``α·ρ`` with ``ρ = Σ 1/(2z_i²)`` at every order at once, and "``ε`` of the composition ≤ cap"
is the same stopping rule ``ρ ≤ ρ_cap`` at every order: Feldman–Zrnic then holds at all the
accountant's orders together, and the interaction is (cap, δ)-DP by the RDP-to-(ε, δ)
conversion the accountant applies. ε is computed by dp-accounting's RDP accountant on
:data:`~privrec.privacy.accounting.INTEGER_RDP_ORDERS` (never hand-summed); PLD is not offered,
because a PLD filter needs the exact Gaussian privacy curve, which a dominating-RDP event does
not give.

Unit and relation: whatever the releases' events are stated for — one user's whole history,
add/remove, for the federated devices that use it (:mod:`privrec.federated.flower.budget`).
No sampling credit is taken: the party that samples is the one not trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting

from privrec.errors import ConfigError
from privrec.privacy.accounting import AccountantKind, epsilon_of
from privrec.privacy.budget import Budget

__all__ = ["GaussianFilter"]


def _multiplier(event: dp_accounting.DpEvent) -> float | None:
    """The noise multiplier of a Gaussian release; ``None`` for one without noise (never fits)."""
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return None
    if not isinstance(event, dp_accounting.GaussianDpEvent):
        raise ConfigError(
            f"a Gaussian filter admits only GaussianDpEvent releases, got {type(event).__name__}"
        )
    z = float(event.noise_multiplier)
    return z if math.isfinite(z) and z > 0 else None


#: admit only up to ``cap·(1 − _SLACK)``: the same releases summed in another order (by another
#: party's accountant) may compose to a last-bit larger ε, which must still be within the cap
_SLACK = 1e-9


@dataclass
class GaussianFilter:
    """Admit Gaussian releases while their fully adaptive composition stays within ``budget``.

    The admitted releases are kept as their composition: ``m`` Gaussian releases with
    multipliers ``z_i`` are exactly one with multiplier ``(Σ z_i⁻²)^(−1/2)``
    (:func:`~privrec.privacy.accounting.simplify`), so the state is the rate ``Σ z_i⁻²`` and the
    count — constant in size however many releases a party is asked for.

    Parameters
    ----------
    budget
        The owner's own (ε, δ) cap, in the unit and relation of the releases' events.
    rate, count
        ``Σ 1/z²`` and the number of the releases already admitted (a filter read back from
        storage).

    >>> import dp_accounting
    >>> f = GaussianFilter(Budget(epsilon=2.0, delta=1e-5))
    >>> f.admit(dp_accounting.GaussianDpEvent(5.0)), f.admit(dp_accounting.GaussianDpEvent(5.0))
    (True, True)
    >>> f.admit(dp_accounting.GaussianDpEvent(1.0))  # would compose to ε ≈ 4.95: refused
    False
    >>> f.count, round(f.epsilon(), 3)
    (2, 1.158)
    """

    budget: Budget
    rate: float = 0.0
    count: int = 0

    @staticmethod
    def check_state(rate: object, count: object) -> None:
        """Raise :class:`~privrec.errors.ConfigError` unless ``(rate, count)`` is a state some
        sequence of admissions can reach (a finite rate ≥ 0, zero exactly when the count is)."""
        if isinstance(rate, bool) or not isinstance(rate, float | int) or not math.isfinite(rate):
            raise ConfigError(f"a filter's rate must be a finite number, found {rate!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"a filter's count must be a non-negative integer, found {count!r}")
        if rate < 0 or (rate == 0) != (count == 0):
            raise ConfigError(f"a filter's rate {rate!r} does not fit its count {count}")

    def __post_init__(self) -> None:
        self.check_state(self.rate, self.count)
        self.rate = float(self.rate)
        if self.epsilon() > self.budget.epsilon:
            raise ConfigError(
                f"the admitted releases already compose to ε = {self.epsilon():.6g}, above the "
                f"filter's cap {self.budget.epsilon:g}"
            )

    def _epsilon_of(self, rate: float) -> float:
        if rate == 0:
            return 0.0
        event = dp_accounting.GaussianDpEvent(rate**-0.5)
        return epsilon_of(event, self.budget.delta, AccountantKind.RDP)

    def epsilon(self) -> float:
        """ε (at the filter's δ) of everything admitted so far."""
        return self._epsilon_of(self.rate)

    def epsilon_with(self, event: dp_accounting.DpEvent) -> float:
        """ε the admitted releases and ``event`` would compose to (``inf`` without noise)."""
        z = _multiplier(event)
        return math.inf if z is None else self._epsilon_of(self.rate + z**-2)

    def admit(self, event: dp_accounting.DpEvent) -> bool:
        """Record ``event`` and return ``True`` if it fits the cap; else record nothing, ``False``.

        A release without noise (``NonPrivateDpEvent``, a zero or non-finite multiplier) never
        fits. Raises :class:`~privrec.errors.ConfigError` for an event that is not a Gaussian
        release (the soundness argument above needs one).
        """
        if self.epsilon_with(event) > self.budget.epsilon * (1.0 - _SLACK):
            return False
        z = _multiplier(event)
        assert z is not None  # a release without noise composes to ε = inf
        self.rate += z**-2
        self.count += 1
        return True
