"""Checking a stored guarantee against its own records before anyone reads its ε.

A guarantee travels inside a model file, which anyone can edit. :func:`check_guarantee`
accepts it only when

* every stored event is a well-formed dp-accounting event of a known type, with values in
  range (finite non-negative noise multipliers, probabilities in [0, 1], positive integer
  counts) and bounded size — so a hostile file cannot make the accountant run for hours;
* δ lies in (0, 1) and ε is what the stored accountant gives for the stored events at δ
  (for RDP, at most 5 % above it: a conversion at fewer orders is still a valid bound);

and :func:`check_against_params` adds that δ, the unit, the accountant and the seeded flag
agree with the model's own parameters and that ε does not exceed the budget asked for.
Everything else is a :class:`~privrec.errors.GuaranteeMismatchError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from privrec.errors import GuaranteeMismatchError
from privrec.privacy.accounting import AccountantKind

if TYPE_CHECKING:
    from privrec.privacy.guarantee import PrivacyGuarantee

__all__ = [
    "check_against_params",
    "check_event_dict",
    "check_guarantee",
    "dense_orders_allowed",
    "quiet_accountant",
]

#: Event nodes a stored guarantee may hold in total (a DPALS fit stores a few dozen).
MAX_EVENT_NODES = 100_000
#: Nesting depth of stored events.
MAX_EVENT_DEPTH = 32
#: Largest self-composition count (rounds × steps of any real training are far below it).
MAX_COMPOSITION = 10_000_000
#: Relative tolerance between the stored and the recomputed ε.
EPSILON_RTOL = 1e-6
#: How far above the recomputed value a stored RDP ε may be: an accountant may convert RDP to
#: (ε, δ) at fewer orders than dp-accounting's default (FederatedMF does), which gives a slightly
#: larger — still valid — ε. A stored ε *below* the recomputed one is always refused.
RDP_SLACK = 0.05

_FIELDS: dict[str, dict[str, str]] = {
    "GaussianDpEvent": {"noise_multiplier": "multiplier"},
    "LaplaceDpEvent": {"noise_multiplier": "multiplier"},
    "PoissonSampledDpEvent": {"sampling_probability": "probability", "event": "event"},
    "SampledWithoutReplacementDpEvent": {
        "source_dataset_size": "count",
        "sample_size": "count",
        "event": "event",
    },
    "SampledWithReplacementDpEvent": {
        "source_dataset_size": "count",
        "sample_size": "count",
        "event": "event",
    },
    "SelfComposedDpEvent": {"event": "event", "count": "count"},
    "ComposedDpEvent": {"events": "events"},
    "NoOpDpEvent": {},
    "NonPrivateDpEvent": {},
    # private hyper-parameter selection (privrec.tuning): best of a random number of trials
    "RepeatAndSelectDpEvent": {"event": "event", "mean": "mean", "shape": "shape"},
}


@contextmanager
def quiet_accountant() -> Iterator[None]:
    """Silence dp-accounting's absl warnings (RDP orders it skips) while re-deriving ε."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _bad(reason: str, found: object = None) -> GuaranteeMismatchError:
    return GuaranteeMismatchError(
        f"the stored privacy guarantee is malformed: {reason}", field="guarantee", found=found
    )


def _real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_event_dict(d: object, *, _depth: int = 0, _budget: list[int] | None = None) -> None:
    """Raise :class:`GuaranteeMismatchError` unless ``d`` is a well-formed stored event."""
    budget = [MAX_EVENT_NODES] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        raise _bad(f"more than {MAX_EVENT_NODES} event records")
    if _depth > MAX_EVENT_DEPTH:
        raise _bad(f"events nested deeper than {MAX_EVENT_DEPTH} levels")
    if not isinstance(d, Mapping):
        raise _bad("an event is not a JSON object", type(d).__name__)
    kind = d.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise _bad("unknown event type", kind)
    spec = _FIELDS[kind]
    keys = set(d) - {"type"}
    if keys != set(spec):
        raise _bad(f"{kind} must have exactly the fields {sorted(spec)}", sorted(keys))
    for key, role in spec.items():
        v = d[key]
        if role == "multiplier":
            if not (_real(v) and v >= 0):
                raise _bad(f"{kind}.{key} must be a finite number >= 0", v)
        elif role == "probability":
            if not (_real(v) and 0 <= v <= 1):
                raise _bad(f"{kind}.{key} must be a probability in [0, 1]", v)
        elif role == "count":
            if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COMPOSITION):
                raise _bad(f"{kind}.{key} must be an integer in [0, {MAX_COMPOSITION}]", v)
        elif role == "mean":
            if not (_real(v) and 0 < v <= MAX_COMPOSITION):
                raise _bad(f"{kind}.{key} must be a number in (0, {MAX_COMPOSITION}]", v)
        elif role == "shape":
            if not (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0):
                raise _bad(f"{kind}.{key} must be a number >= 0 (inf allowed)", v)
        elif role == "event":
            check_event_dict(v, _depth=_depth + 1, _budget=budget)
        else:  # events
            if not isinstance(v, list) or not v:
                raise _bad(f"{kind}.{key} must be a non-empty list of events", type(v).__name__)
            for e in v:
                check_event_dict(e, _depth=_depth + 1, _budget=budget)
    if kind.startswith("SampledWith") and d["sample_size"] > d["source_dataset_size"]:
        raise _bad(f"{kind}: sample larger than the dataset", d["sample_size"])


def check_guarantee(g: PrivacyGuarantee) -> float:
    """Validate ``g``'s events and recompute ε from them; returns the recomputed ε.

    Raises :class:`GuaranteeMismatchError` when the events are malformed or ε differs from the
    recomputed value by more than a relative 1e-6.
    """
    if not (_real(g.delta) and 0 < g.delta < 1):
        raise _bad("delta must be in (0, 1)", g.delta)
    if not (g.epsilon >= 0 or math.isinf(g.epsilon)) or math.isnan(g.epsilon):
        raise _bad("epsilon must be >= 0", g.epsilon)
    budget = [MAX_EVENT_NODES]
    for spent in g.events:
        if not isinstance(spent, Mapping) or set(spent) != {"label", "event"}:
            raise _bad("a spent event must be {label, event}", spent)
        if not isinstance(spent["label"], str):
            raise _bad("an event label must be text", spent["label"])
        check_event_dict(spent["event"], _budget=budget)
    others = [d for d in (g.delta * 10, g.delta / 10) if d < 1]

    def recompute(dense: bool) -> float:
        try:
            with quiet_accountant():
                # with the two other δ that explain() shows: the events are composed only once
                return g.epsilons_at([g.delta, *others], dense=dense)[0]
        except GuaranteeMismatchError:
            raise
        except Exception as exc:  # dp-accounting refusing the events is a malformed guarantee
            raise _bad(f"the accountant cannot compose the stored events ({exc})") from None

    def agrees(recomputed: float) -> bool:
        return _agrees(g.epsilon, recomputed, g.accountant.value)

    recomputed = recompute(dense=False)
    same = agrees(recomputed)
    if not same and g.epsilon < recomputed and dense_orders_allowed(g):
        # written before 2026-12-07, at dp-accounting's denser default orders: valid for
        # Gaussian events (their RDP holds at every order)
        dense = recompute(dense=True)
        if dense != recomputed:
            recomputed, same = dense, agrees(dense)
    if not same:
        older = (
            " (or, for a distributed-DP model saved before 2026-12-07, converted at fractional "
            "orders its discrete bound does not cover: retrain it)"
            if g.accountant is AccountantKind.RDP and g.epsilon < recomputed
            else ""
        )
        raise GuaranteeMismatchError(
            "the stored ε is not what the stored events give: the guarantee was altered or "
            f"corrupted{older}, so no ε from this file can be trusted",
            field="guarantee.epsilon",
            expected=f"{recomputed:.6g} (recomputed with the {g.accountant.value.upper()} accountant)",
            found=g.epsilon,
        )
    if g.tiers:
        _check_tiers(g)
    return recomputed


def _agrees(stored: float, recomputed: float, accountant: str) -> bool:
    """Whether a stored ε is the recomputed one (within the accountant's tolerance)."""
    upper = RDP_SLACK if accountant == "rdp" else EPSILON_RTOL
    return (math.isinf(recomputed) and math.isinf(stored)) or (
        recomputed * (1 - EPSILON_RTOL) - 1e-9 <= stored <= recomputed * (1 + upper) + 1e-9
    )


def dense_orders_allowed(g: PrivacyGuarantee) -> bool:
    """Whether ``g`` may have been converted at dp-accounting's denser default orders.

    Files written before 2026-12-07 were, and for central Gaussian events that is a valid bound
    (their RDP holds at every order). Distributed DP's discrete bounds are proven only at integer
    orders, so such a guarantee is held to them.
    """
    return g.accountant is AccountantKind.RDP and "distributed" not in g.mechanism.lower()


def _tier_epsilon_dense(g: PrivacyGuarantee, weight: float) -> float:
    """A tier's ε at dp-accounting's default orders (see :func:`dense_orders_allowed`)."""
    import dp_accounting

    from privrec.privacy.accounting import simplify
    from privrec.privacy.events import total_event
    from privrec.privacy.personalized import scale_event

    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=g.unit.relation)
    acc.compose(simplify(scale_event(total_event(g.spent_events), weight)))
    return float(acc.get_epsilon(g.delta))


def _check_tiers(g: PrivacyGuarantee) -> None:
    """Recompute every protection tier's ε from the stored events and its weight.

    A tier promises ε_t to the users who asked for it: its users' contributions were scaled
    by ``weight``, so ε_t is what the stored events give with every multiplier ÷ weight
    (:func:`~privrec.privacy.personalized.tier_epsilon`). A stored ε_t that is not that value,
    or above what its users asked for, or a loosest tier that is not the model's ε, means the
    file was altered: nothing in it is explained.
    """
    from privrec.privacy.personalized import MAX_TIERS, tier_epsilon, weight_meeting

    keys = {"requested_epsilon", "epsilon", "weight"}
    requested: list[float] = []
    if len(g.tiers) > MAX_TIERS:
        raise _bad(f"at most {MAX_TIERS} protection tiers", len(g.tiers))
    for t in g.tiers:
        if not isinstance(t, Mapping) or set(t) != keys or not all(_real(t[k]) for k in keys):
            raise _bad("a protection tier must be {requested_epsilon, epsilon, weight}", t)
        w, eps, asked = float(t["weight"]), float(t["epsilon"]), float(t["requested_epsilon"])
        if not 0 < w <= 1 or asked <= 0:
            raise _bad("a tier's weight must be in (0, 1] and its requested ε > 0", t)

        def eps_at(weight: float) -> float:
            return tier_epsilon(g.spent_events, weight, g.delta, g.accountant, g.unit)

        try:
            with quiet_accountant():
                expected = eps_at(w)
        except Exception as exc:
            raise _bad(f"the accountant cannot compose a tier's scaled events ({exc})") from None
        if not _agrees(eps, expected, g.accountant.value) and dense_orders_allowed(g):

            def eps_at(weight: float) -> float:  # a file from before integer orders
                return _tier_epsilon_dense(g, weight)

            with quiet_accountant():
                expected = eps_at(w)
        if (
            not _agrees(eps, expected, g.accountant.value)
            or eps > asked * (1 + EPSILON_RTOL) + 1e-9
        ):
            raise GuaranteeMismatchError(
                "a protection tier's ε is not what the stored events give at its weight (or is "
                "above what its users asked for): the guarantee was altered or corrupted",
                field="guarantee.tiers",
                expected=f"{expected:.6g} at weight {w:.6g}, at most {asked:g}",
                found=eps,
            )
        # the weight is not the file's to choose: training takes the largest that meets the
        # requested ε, so a smaller stored weight (with its smaller ε) claims protection the
        # users never got (an edited file passed with weight 0.05 and ε 0.11 for a 0.5 tier)
        try:
            with quiet_accountant():
                chosen = weight_meeting(eps_at, asked, g.delta)
        except Exception as exc:
            raise _bad(f"no weight meets a tier's requested ε ({exc})", t) from None
        if abs(w - chosen) > 1e-6 * chosen:
            raise GuaranteeMismatchError(
                "a protection tier's weight is not the one its requested ε gives: the "
                "guarantee was altered or corrupted",
                field="guarantee.tiers",
                expected=f"weight {chosen:.9g} for ε {asked:g}",
                found=w,
            )
        requested.append(asked)
    loosest = max(g.tiers, key=lambda t: float(t["requested_epsilon"]))
    if float(loosest["weight"]) != 1.0 or not _agrees(
        g.epsilon, float(loosest["epsilon"]), g.accountant.value
    ):
        raise _bad("the loosest protection tier must be the model's own ε at weight 1", loosest)
    if len(set(requested)) != len(requested):
        raise _bad("protection tiers must be distinct", requested)


def check_against_params(g: PrivacyGuarantee, params: Mapping[str, Any]) -> None:
    """Raise :class:`GuaranteeMismatchError` when ``g`` disagrees with the model's parameters.

    Only parameters the model has are compared: ``delta`` (equal), ``unit`` and ``accountant``
    (equal), ``seed`` (set exactly when the guarantee says the noise was seeded) and
    ``epsilon`` (the spent ε may not exceed the asked budget).
    """

    def mismatch(field: str, expected: object, found: object) -> GuaranteeMismatchError:
        return GuaranteeMismatchError(
            "the stored privacy guarantee disagrees with the model's parameters",
            field=f"guarantee.{field}",
            expected=str(expected),
            found=found,
        )

    if "delta" in params and params["delta"] is not None and params["delta"] != g.delta:
        raise mismatch("delta", params["delta"], g.delta)
    if "unit" in params and params["unit"] is not None and str(params["unit"]) != g.unit.value:
        raise mismatch("unit", params["unit"], g.unit.value)
    acc = params.get("accountant")
    if isinstance(acc, str) and acc != g.accountant.value:
        raise mismatch("accountant", acc, g.accountant.value)
    if "seed" in params and (params["seed"] is not None) != g.seeded_noise:
        raise mismatch(
            "seeded_noise", "seeded" if params["seed"] is not None else "not seeded", g.seeded_noise
        )
    asked = params.get("epsilon")
    if _real(asked) and g.epsilon > asked * (1 + EPSILON_RTOL) + 1e-9:  # type: ignore[operator]
        raise mismatch("epsilon", f"at most the asked budget {asked}", g.epsilon)
    if "tiers" in params or g.tiers:
        declared = params.get("tiers") or ()
        loosest = {float(asked)} if isinstance(asked, (int, float)) and _real(asked) else set()
        offered = sorted({float(t) for t in declared} | loosest)
        stated = sorted(float(t["requested_epsilon"]) for t in g.tiers)
        if (declared or g.tiers) and offered != stated:
            raise mismatch("tiers", f"the declared tiers {offered}", stated)
