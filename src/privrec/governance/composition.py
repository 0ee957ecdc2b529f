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

**Malformed events are refused, never composed.** dp-accounting does not validate the
parameters of the events it is given, and some of its answers to malformed ones are silently
wrong: the closed-form ε of a Gaussian with a NaN multiplier is ``0``, so one such charge used to
make its scope's Gaussian-rate sum NaN and every later charge free; a ``SelfComposedDpEvent``
with a negative or fractional count under-counts. :func:`check_event` therefore checks every
event before the ledger reserves it (typed :class:`~privrec.errors.GovernanceError`, nothing
written), :func:`composed_epsilon` checks the stored terms it composes again (a ledger written
before the check may hold such a charge: it fails loudly rather than report ``0``), and every
error dp-accounting raises on an event is reported as a ``GovernanceError``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import dp_accounting
from dp_accounting import dp_event

from privrec.errors import GovernanceError, PrivrecError
from privrec.privacy.accounting import (
    INTEGER_RDP_ORDERS,
    epsilon_of,
    gaussian_rate,
    simplify,
)
from privrec.privacy.events import SpentEvent, event_from_dict, total_event
from privrec.privacy.units import PrivacyUnit
from privrec.privacy.verify import MAX_EVENT_DEPTH, MAX_EVENT_NODES

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_RELEASES",
    "RDP_ONLY",
    "ChargeEvents",
    "check_event",
    "composed_epsilon",
    "event_key",
]

#: The accountant value marking a charge whose events are proven only in RDP.
RDP_ONLY = "rdp"


def event_key(event: dp_accounting.DpEvent) -> str:
    """Canonical JSON of one event (to compare planned and released events exactly)."""
    from privrec.privacy.events import event_to_dict

    return json.dumps(event_to_dict(event), sort_keys=True, separators=(",", ":"))


_T = TypeVar("_T")

#: What dp-accounting (and privrec's own event decoding) raise on an event they cannot use.
_ACCOUNTING_ERRORS = (
    ValueError,
    TypeError,
    ArithmeticError,
    IndexError,
    KeyError,
    AttributeError,
    dp_accounting.UnsupportedEventError,
)


def _refuse(where: str, why: str) -> GovernanceError:
    if len(where) > 160:  # a deeply nested event: its start and end
        where = f"{where[:100]} … {where[-50:]}"
    return GovernanceError(f"malformed privacy event at {where}: {why}; nothing was charged")


#: Limits on one charge's events. dp-accounting's cost grows with them (a PLD self-composed
#: 10⁶ times takes ~30 s and ~1 GB; 10⁷ times, GBs; 10¹⁸, forever), and no real training
#: comes near: they bound what one analyst's call can make the service compute.
MAX_RELEASES = 10**6
#: … nesting depth and number of event records over all of a charge's events: the limits a
#: stored guarantee is held to when a model file is verified (:mod:`privrec.privacy.verify`)
MAX_DEPTH = MAX_EVENT_DEPTH
MAX_NODES = MAX_EVENT_NODES


def _real(value: Any, where: str, name: str) -> tuple[int | float, float]:
    """``value`` as a plain Python number (``int`` stays ``int``; numpy scalars, ``Fraction``…
    become ``float``) and as a float, if it is a real number (not a bool, not text), else refuse."""
    if isinstance(value, bool | str) or not isinstance(value, numbers.Real):
        raise _refuse(where, f"{name} must be a number, found {value!r:.80}")
    try:
        plain: int | float = int(value) if isinstance(value, numbers.Integral) else float(value)
        return plain, float(plain)
    except (OverflowError, ValueError, TypeError):
        raise _refuse(where, f"{name} is not representable as a float") from None


def _size(value: Any, where: str, name: str) -> int:
    """``value`` as an int if it is a whole number ≥ 1 (not a bool, not 2.5), else refuse."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise _refuse(where, f"{name} must be a whole number ≥ 1, found {value!r:.80}")
    return int(value)


def _count(value: Any, where: str, name: str) -> int:
    """``value`` as an int if it is a whole number in [1, :data:`MAX_RELEASES`], else refuse."""
    n = _size(value, where, name)
    if n > MAX_RELEASES:
        raise _refuse(where, f"{name} is above the limit of {MAX_RELEASES:,} (found {_big(n)})")
    return n


def _big(n: int) -> str:
    """A whole number for a message, however large (``f"{10**400:g}"`` overflows)."""
    return str(n) if n < 10**15 else f"about 10^{round((n.bit_length() - 1) * math.log10(2))}"


class _Walk:
    """What :func:`check_event` has seen so far (records, for :data:`MAX_NODES`)."""

    def __init__(self, capped: bool) -> None:
        self.capped = capped
        self.nodes = 0


def check_event(event: Any, where: str = "event", *, capped: bool = True) -> dp_accounting.DpEvent:
    """Refuse (:class:`~privrec.errors.GovernanceError`) an event whose parameters are not ones
    dp-accounting accounts correctly; return it with plain Python numbers.

    Why: dp-accounting trusts its inputs, and several malformed events come back as a *small*
    ε rather than an error (a NaN Gaussian multiplier gives ε = 0; a negative or fractional
    self-composition count under-counts). A ledger that composed them would let later charges
    through for free. Checked here, recursively:

    * Gaussian multiplier z: a number, not NaN, > 0. ``z = +inf`` (a release that adds no
      information) is accepted; :class:`ChargeEvents` allows it only where it is accounted as
      a zero rate.
    * Laplace parameter: finite and > 0.
    * self-composition count, sample and population sizes: whole numbers ≥ 1 (a sample no
      larger than its population).
    * Poisson sampling probability: in (0, 1].
    * repeat-and-select: mean finite and > 0, shape ≥ 0 (``inf`` is the Poisson case).
    * no other event types than those :mod:`privrec.privacy.events` serialises.
    * nesting at most :data:`MAX_DEPTH` deep; with ``capped`` (a new charge): at most
      :data:`MAX_NODES` records and :data:`MAX_RELEASES` releases (self-composition counts
      multiplied through the nesting) — a stored charge is composed again without them.

    The returned event equals ``event`` with every parameter a plain ``int`` or ``float``
    (numpy scalars and ``Fraction`` would fail later, when the charge is stored as JSON).
    """
    out, releases = _check(event, where, 0, _Walk(capped))
    if capped and releases > MAX_RELEASES:
        raise _refuse(where, f"{_big(releases)} releases, above the limit of {MAX_RELEASES:,}")
    return out


def _check(event: Any, where: str, depth: int, walk: _Walk) -> tuple[dp_accounting.DpEvent, int]:
    """:func:`check_event`'s recursion: the plain event and its number of releases."""
    walk.nodes += 1
    if walk.capped and walk.nodes > MAX_NODES:
        raise _refuse(where, f"more than {MAX_NODES:,} event records")
    if depth > MAX_DEPTH:
        raise _refuse(where, f"events nested more than {MAX_DEPTH} deep")
    evolve = attrs.evolve
    if isinstance(event, dp_accounting.GaussianDpEvent):
        plain, z = _real(event.noise_multiplier, where, "the Gaussian noise multiplier")
        if math.isnan(z) or not z > 0 or (math.isfinite(z) and z * z == 0.0):
            raise _refuse(where, f"the Gaussian noise multiplier must be > 0, found {z!r}")
        return evolve(event, noise_multiplier=plain), 1
    if isinstance(event, dp_accounting.LaplaceDpEvent):
        plain, b = _real(event.noise_multiplier, where, "the Laplace parameter")
        if not (math.isfinite(b) and b > 0):
            raise _refuse(where, f"the Laplace parameter must be finite and > 0, found {b!r}")
        return evolve(event, noise_multiplier=plain), 1
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        plain, q = _real(event.sampling_probability, where, "the sampling probability")
        if not 0.0 < q <= 1.0:
            raise _refuse(where, f"the sampling probability must be in (0, 1], found {q!r}")
        inner, n = _check(event.event, f"{where} > sampled", depth + 1, walk)
        return evolve(event, sampling_probability=plain, event=inner), n
    if isinstance(
        event,
        dp_accounting.SampledWithoutReplacementDpEvent
        | dp_accounting.SampledWithReplacementDpEvent,
    ):
        pop = _size(event.source_dataset_size, where, "the population size")
        m = _size(event.sample_size, where, "the sample size")
        if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent) and m > pop:
            raise _refuse(where, f"a sample of {m} drawn without replacement from {pop}")
        inner, n = _check(event.event, f"{where} > sampled", depth + 1, walk)
        return evolve(event, source_dataset_size=pop, sample_size=m, event=inner), n
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        count = _count(event.count, where, "the self-composition count")
        inner, n = _check(event.event, f"{where} > repeated", depth + 1, walk)
        total = count * n
        if walk.capped and total > MAX_RELEASES:
            raise _refuse(where, f"{_big(total)} releases, above the limit of {MAX_RELEASES:,}")
        return evolve(event, event=inner, count=count), total
    if isinstance(event, dp_accounting.ComposedDpEvent):
        if not isinstance(event.events, list | tuple):
            raise _refuse(where, "a composed event must hold a list of events")
        parts, total = [], 0
        for i, e in enumerate(event.events):
            part, n = _check(e, f"{where} > part {i + 1}", depth + 1, walk)
            parts.append(part)
            total += n
        return evolve(event, events=parts), total
    if isinstance(event, dp_event.RepeatAndSelectDpEvent):
        mean_plain, mean = _real(event.mean, where, "the mean number of repetitions")
        shape_plain, shape = _real(event.shape, where, "the shape of the number of repetitions")
        if not (math.isfinite(mean) and mean > 0):
            raise _refuse(where, f"the mean number of repetitions must be > 0, found {mean!r}")
        if math.isnan(shape) or shape < 0:
            raise _refuse(where, f"the repetition shape must be ≥ 0, found {shape!r}")
        inner, n = _check(event.event, f"{where} > repeated", depth + 1, walk)
        return evolve(event, event=inner, mean=mean_plain, shape=shape_plain), n
    if isinstance(event, dp_accounting.NoOpDpEvent | dp_accounting.NonPrivateDpEvent):
        return event, 0
    raise _refuse(where, f"unsupported event type {type(event).__name__}")


def _has_infinite_gaussian(event: dp_accounting.DpEvent) -> bool:
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return math.isinf(float(event.noise_multiplier))
    inner = getattr(event, "event", None)
    if isinstance(inner, dp_accounting.DpEvent) and _has_infinite_gaussian(inner):
        return True
    parts = getattr(event, "events", None)
    return isinstance(parts, list | tuple) and any(_has_infinite_gaussian(e) for e in parts)


def _accounted(what: str, compute: Callable[[], _T]) -> _T:
    """``compute()``, with dp-accounting's errors on an event reported as a typed refusal."""
    try:
        return compute()
    except GovernanceError:
        raise
    except MemoryError:
        raise GovernanceError(
            f"dp-accounting ran out of memory accounting {what}: nothing was charged"
        ) from None
    except RecursionError:
        raise GovernanceError(
            f"{what} are nested too deeply to account: nothing was charged"
        ) from None
    except (PrivrecError, *_ACCOUNTING_ERRORS) as exc:
        raise GovernanceError(
            f"dp-accounting cannot account {what}: {type(exc).__name__}: {exc}"[:500]
        ) from None


def _finite_epsilon(eps: float, what: str) -> float:
    """``eps`` unless it is NaN or negative (``+inf`` is a valid, unaffordable ε)."""
    if math.isnan(eps) or eps < 0:
        raise GovernanceError(
            f"the composed ε of {what} is {eps!r}, not a valid privacy loss: a stored charge is "
            "malformed (see `privrec ledger history`); no charge is accepted until it is fixed"
        )
    return eps


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
        if isinstance(spent, str | bytes) or not isinstance(spent, Sequence):
            raise GovernanceError("a charge's events are a list of spent events")
        marked = any(isinstance(s, dict) and s.get("accountant") == RDP_ONLY for s in spent)
        if len(spent) > MAX_NODES:
            raise _refuse("a charge's events", f"more than {MAX_NODES:,} events")
        items = _checked([_spent(s, i) for i, s in enumerate(spent)])
        if not items:
            raise GovernanceError("a charge needs at least one event")
        self.spent = items
        self.event = total_event(items)
        #: whether the events are proven only in RDP (composed with RDP, never as Gaussians):
        #: marked so by the caller, or holding an event PLD cannot account (private tuning's
        #: repeat-and-select — a PLD budget used to fail on it with dp-accounting's raw error)
        self.rdp_only = accountant == RDP_ONLY or marked or _rdp_only_kind(self.event)
        extra = {"accountant": RDP_ONLY} if self.rdp_only else {}
        #: labelled events as canonical JSON: what the ledger stores and groups identical charges by
        self.json = _accounted(
            "these events",
            lambda: json.dumps(
                [{**s.to_dict(), **extra} for s in items], sort_keys=True, separators=(",", ":")
            ),
        )
        rate = _accounted("these events", lambda: gaussian_rate(self.event))
        if _has_infinite_gaussian(self.event) and rate is None:
            # z = +inf is "no release" only where it is a zero rate; PLD cannot sample or
            # compose an infinite Gaussian with other kinds (it fails, or returns NaN)
            raise _refuse(
                "a charge's events",
                "an infinite Gaussian noise multiplier (a release without information) is only "
                "accepted among unsampled Gaussian releases; record a NoOpDpEvent instead",
            )
        #: whether every release of the charge has z = +inf (or is a no-op): nothing released
        self._free = rate == 0.0
        #: Σ 1/z² of a charge made only of unsampled Gaussian releases (``None`` otherwise, and
        #: for RDP-only charges); 0 for releases with z = +inf
        self.gaussian_rate: float | None = (
            float(rate) if rate is not None and math.isfinite(rate) and not self.rdp_only else None
        )

    def epsilon(self, delta: float, accountant: str, unit: PrivacyUnit) -> float:
        """The charge's own ε at ``delta`` (a typed refusal if dp-accounting cannot give it)."""
        if self._free:  # PLD cannot represent z = +inf unless it stands alone
            return 0.0
        if self.rdp_only:
            eps = _accounted("these events", lambda: _rdp_epsilon(self.event, delta, unit))
        else:
            eps = _accounted(
                "these events", lambda: epsilon_of(self.event, delta, accountant, unit)
            )
        return _finite_epsilon(eps, "this charge")


def _checked(items: list[SpentEvent]) -> list[SpentEvent]:
    """``items`` checked by :func:`check_event` (limits counted over all of them), with plain
    numbers and text labels."""
    walk, total, out = _Walk(capped=True), 0, []
    for i, item in enumerate(items):
        label = str(item.label)
        event, n = _check(item.event, f"event {i + 1} ({label[:80]!r})", 0, walk)
        total += n
        if total > MAX_RELEASES:
            raise _refuse(
                "a charge's events", f"more releases in all than the limit of {MAX_RELEASES:,}"
            )
        out.append(SpentEvent(label, event))
    return out


def _spent(item: Any, i: int) -> SpentEvent:
    """A :class:`SpentEvent` from one item of a charge (a ``SpentEvent`` or its dict form)."""
    if isinstance(item, SpentEvent):
        if not isinstance(item.event, dp_accounting.DpEvent):
            raise _refuse(f"event {i + 1}", f"not a dp-accounting event: {item.event!r:.80}")
        return item
    if not isinstance(item, dict):
        raise _refuse(f"event {i + 1}", f"expected a spent event, found {type(item).__name__}")
    return _accounted(f"event {i + 1}", lambda: SpentEvent.from_dict(item))


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
    """A stored charge's composed event, and whether it is RDP-only (checked like a new one:
    a charge stored before :func:`check_event` existed may be malformed)."""

    def decode() -> tuple[dp_accounting.DpEvent, bool]:
        items = json.loads(text)
        event = total_event([SpentEvent("", event_from_dict(d["event"])) for d in items])
        return event, any(d.get("accountant") == RDP_ONLY for d in items)

    event, rdp_only = _accounted("a stored charge's events", decode)
    # without the size limits: a charge stored before them must not block its whole dataset
    return check_event(event, "a stored charge", capped=False), rdp_only


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

    Raises :class:`~privrec.errors.GovernanceError` rather than return a number it cannot
    vouch for: a NaN or negative rate sum (a stored charge with a NaN or non-positive
    multiplier), a malformed stored event, or a NaN ε. Returning ``0`` there would make every
    later charge of the scope free.
    """
    rate = float(gaussian_rate)
    if math.isnan(rate) or rate < 0:
        raise GovernanceError(
            f"the scope's Gaussian rate sum Σ 1/z² is {rate!r}: a stored charge has a "
            "non-finite or non-positive noise multiplier; no charge is accepted until it is fixed"
        )
    if not grouped:
        eps = _accounted(
            "the scope's Gaussian charges",
            lambda: _gaussian_epsilon(rate, float(delta), str(accountant), unit),
        )
        return _finite_epsilon(eps, "the scope's charges")
    parts: list[dp_accounting.DpEvent] = []
    if rate > 0:
        parts.append(dp_accounting.GaussianDpEvent(rate**-0.5))
    rdp_only = False
    for text, count in grouped:
        ev, marked = _event_of_json(text)
        rdp_only = rdp_only or marked
        parts.append(ev if count == 1 else dp_accounting.SelfComposedDpEvent(ev, int(count)))
    if not parts:
        return 0.0
    if rdp_only:
        eps = _accounted(
            "the scope's charges",
            lambda: _rdp_epsilon(dp_accounting.ComposedDpEvent(parts), delta, unit),
        )
    else:
        eps = _accounted("the scope's charges", lambda: epsilon_of(parts, delta, accountant, unit))
    return _finite_epsilon(eps, "the scope's charges")


@functools.lru_cache(maxsize=1 << 16)
def _gaussian_epsilon(rate: float, delta: float, accountant: str, unit: PrivacyUnit) -> float:
    """ε of Gaussian charges alone (their summed rate): memoised, since listings and the spend
    curves ask for the same exact rates again and again (dp-accounting's closed form costs ms)."""
    if rate == 0:
        return 0.0
    if math.isinf(rate):  # a zero multiplier: no privacy at all
        return math.inf
    return epsilon_of([dp_accounting.GaussianDpEvent(rate**-0.5)], delta, accountant, unit)
