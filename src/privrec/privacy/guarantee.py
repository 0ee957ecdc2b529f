"""What a fitted private model promises, in numbers and in words."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import dp_accounting
import pydantic

from privrec.privacy.accounting import (
    AccountantKind,
    epsilon_of,
    make_accountant,
    simplify,
)
from privrec.privacy.events import JOINT_MARK, SpentEvent, total_event
from privrec.privacy.units import PrivacyUnit

__all__ = ["Catalogue", "PrivacyGuarantee", "Tuning", "distinguishing_accuracy"]

#: Where the item catalogue came from: the training data (assumed public) or the trainer.
Catalogue = Literal["data", "given"]
#: How the hyper-parameters were chosen, as declared by whoever trained the model.
Tuning = Literal["unstated", "defaults", "public", "private", "charged"]

_TUNING_TEXT = {
    "defaults": (
        "privrec's defaults, which were chosen on public benchmark data (validation splits of "
        "ml-1m, gowalla and ml-100k), not on this data: nothing to charge"
    ),
    "public": (
        "chosen on public or separate data, not on this training data (as declared by the "
        "trainer): nothing to charge"
    ),
    "charged": (
        "chosen on this training data by private selection (privrec.tuning, Papernot & Steinke "
        "2022), and that choice is charged: the stated ε covers the selection"
    ),
    "private": (
        "WARNING: chosen by comparing results on this same private data, and that choice is NOT "
        "charged to ε — the true privacy loss is higher than stated (tuning on private data leaks; "
        "see Papernot & Steinke, ICLR 2022, for tuning that is charged)"
    ),
}


def distinguishing_accuracy(epsilon: float, delta: float) -> float:
    """Best accuracy of any test telling two neighbouring datasets apart (equal priors).

    For an (ε, δ)-DP mechanism every test's false-positive rate α and false-negative rate β
    satisfy α + e^ε β ≥ 1 − δ (and symmetrically), so with a 50/50 prior the probability of a
    right guess is at most (e^ε + δ) / (1 + e^ε) — 73.1 % at ε = 1 (Kairouz, Oh & Viswanath 2015).

    >>> round(distinguishing_accuracy(1.0, 1e-6), 3)
    0.731
    """
    if not math.isfinite(epsilon) or epsilon > 700:
        return 1.0
    e = math.exp(epsilon)
    return min(1.0, (e + delta) / (1.0 + e))


class PrivacyGuarantee(pydantic.BaseModel):
    """The (ε, δ) guarantee of a fitted private model and what it covers.

    ``epsilon`` is computed by the accountant from ``events`` (never summed by
    hand); :meth:`verify` redoes that from the saved records and refuses a
    mismatch, and :meth:`explain` only ever prints a verified ε.
    ``released`` / ``not_released`` and ``threat_model`` say which outputs the
    guarantee is about — e.g. for joint-DP ("billboard") models the item
    factors are released with DP while each user's own recommendations use that
    user's data and are shown only to them. ``catalogue`` and ``tuning`` say
    what the guarantee takes as public: where the item catalogue came from, and
    how the hyper-parameters were chosen.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    epsilon: float
    delta: float
    unit: PrivacyUnit
    accountant: AccountantKind
    mechanism: str
    events: tuple[dict[str, Any], ...]
    released: tuple[str, ...]
    not_released: tuple[str, ...]
    threat_model: str
    seeded_noise: bool = False
    #: privrec release that computed this guarantee
    privrec_version: str = "unknown"
    #: ``"data"``: the item catalogue is the set of items in the training data (assumed public);
    #: ``"given"``: the trainer passed it explicitly, nothing about it was learned from the data
    catalogue: Catalogue = "data"
    #: how hyper-parameters were chosen (declared by the trainer; see :data:`Tuning`)
    tuning: Tuning = "unstated"
    #: hyper-parameters set to something other than privrec's defaults
    non_default_params: tuple[str, ...] = ()
    #: Personalised budgets (protection tiers), one ``{"requested_epsilon", "epsilon", "weight"}``
    #: per tier; the loosest tier's ε is ``epsilon`` (:mod:`privrec.privacy.personalized`).
    tiers: tuple[dict[str, float], ...] = ()

    _verified: bool = pydantic.PrivateAttr(default=False)
    _eps_cache: dict[float, float] = pydantic.PrivateAttr(default_factory=dict)
    #: whether ``_eps_cache`` holds ε at :data:`INTEGER_RDP_ORDERS` (the fast path, below)
    _integer_orders: bool = pydantic.PrivateAttr(default=False)

    def __eq__(self, other: object) -> bool:
        # the same promise whether or not this process has re-checked it yet
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_events(
        cls,
        spent: list[SpentEvent],
        *,
        delta: float,
        unit: PrivacyUnit,
        accountant: AccountantKind | str,
        mechanism: str,
        released: list[str],
        not_released: list[str],
        threat_model: str,
        seeded_noise: bool,
    ) -> PrivacyGuarantee:
        from privrec import __version__

        kind = AccountantKind(accountant)
        eps = epsilon_of(total_event(spent), delta, kind, unit)
        out = cls(
            epsilon=eps,
            delta=delta,
            unit=unit,
            accountant=kind,
            mechanism=mechanism,
            events=tuple(s.to_dict() for s in spent),
            released=tuple(released),
            not_released=tuple(not_released),
            threat_model=threat_model,
            seeded_noise=seeded_noise,
            privrec_version=__version__,
        )
        out._verified = True  # computed from the events just now
        return out

    def with_disclosure(
        self,
        *,
        catalogue: Catalogue | None = None,
        tuning: Tuning | None = None,
        non_default_params: tuple[str, ...] | None = None,
    ) -> PrivacyGuarantee:
        """A copy with what is assumed public filled in (ε and the events are unchanged)."""
        from privrec import __version__

        update: dict[str, Any] = {"privrec_version": __version__}
        if catalogue is not None:
            update["catalogue"] = catalogue
        if tuning is not None:
            update["tuning"] = tuning
        if non_default_params is not None:
            update["non_default_params"] = tuple(non_default_params)
        out = self.model_copy(update=update)
        out._verified = self._verified
        return out

    @property
    def spent_events(self) -> list[SpentEvent]:
        return [SpentEvent.from_dict(e) for e in self.events]

    def recompute_epsilon(
        self, accountant: AccountantKind | str | None = None, delta: float | None = None
    ) -> float:
        """ε re-derived from the recorded events (optionally with another accountant or at another δ)."""
        kind = self.accountant if accountant is None else AccountantKind(accountant)
        at = self.delta if delta is None else delta
        if kind is self.accountant:
            return self.epsilons_at([at])[0]
        return epsilon_of(total_event(self.spent_events), at, kind, self.unit)

    def epsilons_at(self, deltas: list[float], *, dense: bool = False) -> list[float]:
        """ε at each δ from the recorded events, with the guarantee's accountant.

        The events are composed once (the costly part for sampled or RDP events) and the
        results are kept, so verifying and explaining a guarantee compose them only once.

        RDP is composed at :data:`~privrec.privacy.accounting.INTEGER_RDP_ORDERS`, the orders
        every privrec RDP accountant uses (so the stored ε is re-derived exactly);
        ``dense=True`` uses dp-accounting's default orders instead — what guarantees written
        before 2026-12-07 were computed at.
        """
        event = simplify(total_event(self.spent_events))
        # dense: dp-accounting's default orders, for guarantees written before 2026-12-07
        integer = not dense
        if integer != self._integer_orders:
            self._eps_cache.clear()
            self._integer_orders = integer
        missing = [d for d in deltas if d not in self._eps_cache]
        if missing:
            if self.accountant is AccountantKind.PLD and isinstance(
                event, dp_accounting.GaussianDpEvent
            ):
                for d in missing:
                    self._eps_cache[d] = epsilon_of(event, d, self.accountant, self.unit)
            else:
                acc = (
                    dp_accounting.rdp.RdpAccountant(neighboring_relation=self.unit.relation)
                    if not integer and self.accountant is AccountantKind.RDP
                    else make_accountant(self.accountant, self.unit)
                )
                acc.compose(event)
                for d in missing:
                    self._eps_cache[d] = float(acc.get_epsilon(d))
        return [self._eps_cache[d] for d in deltas]

    @property
    def verified(self) -> bool:
        """Whether ε was computed or re-checked from the events in this process."""
        return self._verified

    def verify(self) -> PrivacyGuarantee:
        """Check the events are well formed and recompute ε from them; returns ``self``.

        Raises :class:`~privrec.errors.GuaranteeMismatchError` when the stored ε is not what
        the stored events give (a tampered or corrupted guarantee).
        """
        if not self._verified:
            from privrec.privacy.verify import check_guarantee

            check_guarantee(self)
            self._verified = True
        return self

    def explain(self) -> str:
        """A few paragraphs a product manager and a privacy reviewer can both read.

        Verifies the guarantee first: an ε that its events do not support is never printed.
        """
        self.verify()
        who = (
            "any single user (their whole history)"
            if self.unit is PrivacyUnit.USER
            else "any single interaction"
        )
        if self.tiers:  # ε is the loosest tier's; the stricter tiers' ε follow below
            who += (
                f" who chose the loosest protection tier; {len(self.tiers) - 1} stricter "
                "tier(s) below get a smaller ε"
            )
        one = "your whole history" if self.unit is PrivacyUnit.USER else "one interaction"
        eps, delta = self.epsilon, self.delta
        acc = distinguishing_accuracy(eps, delta)
        lines = [
            f"{self.mechanism} is ({eps:.3g}, {delta:.1e})-differentially private with respect to "
            f"{who}: neighbouring inputs are {self.unit.neighbouring}.",
            f"In words: someone who sees everything this model releases, knows everything else about "
            f"the training data, and tries to tell whether {one} was in it guesses right at most "
            f"{acc:.1%} of the time when both answers were equally likely beforehand (a coin flip "
            f"is right 50% of the time).",
            f"Formally, for every set S of outcomes: P[release ∈ S with {one}] ≤ e^ε · P[release ∈ "
            f"S without it] + δ, with e^ε = {_exp(eps)} and δ = {delta:.1e}. δ is an additive "
            "slack in that inequality — not a probability that ε fails — and should be far below "
            "one over the number of people in the data.",
        ]
        others = self._other_deltas()
        if others:
            lines.append(
                "The same releases also satisfy "
                + " and ".join(f"ε = {e:.3g} at δ = {d:.0e}" for d, e in others)
                + " (one privacy curve, read at three points)."
            )
        lines.append(f"Released with this guarantee: {'; '.join(self.released)}.")
        if self.not_released:
            lines.append(
                f"Not released (covered by the threat model below): {'; '.join(self.not_released)}."
            )
        lines.append(f"Assumed public (neither protected nor charged): {self._assumed_public()}.")
        lines.append(f"Hyper-parameters: {self._tuning_text()}.")
        lines.append(f"Threat model: {self.threat_model}")
        n = len(self.events)
        # an event may stand for several releases announced as one Gaussian event (a split read
        # from an earlier release: DPEASE's pair, DPALS's counts and steps)
        joint = sum(str(e.get("label", "")).endswith(JOINT_MARK) for e in self.events)
        of_which = f", {joint} of them several releases announced as one" if joint else ""
        lines.append(
            f"Accounting: {n} noisy release{'s' if n != 1 else ''}{of_which} composed with the "
            f"{self.accountant.value.upper()} accountant of dp-accounting; ε recomputed from the "
            "stored events and checked. Computed by privrec "
            f"{self.privrec_version}."
        )
        for t in self.tiers:
            lines.append(
                f"Protection tier: users who asked for epsilon {t['requested_epsilon']:g} contribute "
                f"with weight {t['weight']:.3g} and are ({t['epsilon']:.3g}, {self.delta:.1e})-DP."
            )
        if self.unit is PrivacyUnit.INTERACTION:
            lines.append(
                "Caution: interaction-level privacy does not protect a person with many interactions; "
                "a user with n interactions gets roughly n times the stated epsilon."
            )
        if self.seeded_noise:
            lines.append(
                "WARNING: this model was trained with seeded (reproducible) noise and is NOT private."
            )
        return "\n".join(lines)

    def _other_deltas(self) -> list[tuple[float, float]]:
        if not math.isfinite(self.epsilon) or not self.events:
            return []
        from privrec.privacy.verify import quiet_accountant

        others = [d for d in (self.delta * 10.0, self.delta / 10.0) if 0 < d < 1]
        with quiet_accountant():
            return list(zip(others, self.epsilons_at(others), strict=True))

    def _assumed_public(self) -> str:
        if self.catalogue == "given":
            cat = (
                "the item catalogue, which the trainer passed explicitly — nothing about it was "
                "learned from the training data"
            )
        else:
            cat = (
                "the item catalogue, taken from the training data: an item is in it when anyone "
                "interacted with it, so an item only one person touched shows up — pass the "
                "catalogue explicitly (item_ids= on fit, --items FILE on the command line) to "
                "learn nothing about it from the data"
            )
        return f"{cat}; the hyper-parameters and the privacy parameters (ε, δ, unit)"

    def _tuning_text(self) -> str:
        if self.tuning in _TUNING_TEXT:
            return _TUNING_TEXT[self.tuning]
        changed = (
            f"{len(self.non_default_params)} setting{'s' if len(self.non_default_params) != 1 else ''} "
            f"differ from privrec's defaults ({', '.join(self.non_default_params)})"
            if self.non_default_params
            else "all at privrec's defaults (chosen on public benchmark data)"
        )
        return (
            f"how they were chosen was not declared; {changed}. If any were chosen by comparing "
            "results on this same private data, that choice leaks information ε does not count "
            "(declare it with declare_tuning(...) or --tuning)"
        )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PrivacyGuarantee:
        """Parse a guarantee (not yet verified: :meth:`verify` or :meth:`explain` check it)."""
        return cls.model_validate(json.loads(text))


def _exp(eps: float) -> str:
    return f"{math.exp(eps):.3g}" if eps < 50 else "∞ (no meaningful protection)"
