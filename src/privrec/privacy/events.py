"""Immutable accounting records, labelled and serialisable.

A private fit appends one :class:`SpentEvent` per noisy release ("item
right-hand sides, step 3"); the guarantee is computed from exactly these
records, and a reviewer can reload them from a saved model and recompute ε
with dp-accounting themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import attrs
import dp_accounting

from privrec.errors import DataError

__all__ = [
    "JOINT_MARK",
    "SpentEvent",
    "describe_event",
    "event_from_dict",
    "event_to_dict",
    "total_event",
    "unsampled",
]

_ALLOWED = {
    "GaussianDpEvent",
    "LaplaceDpEvent",
    "PoissonSampledDpEvent",
    "SampledWithoutReplacementDpEvent",
    "SampledWithReplacementDpEvent",
    "SelfComposedDpEvent",
    "ComposedDpEvent",
    "NoOpDpEvent",
    "NonPrivateDpEvent",
    "RepeatAndSelectDpEvent",
}


def _event_class(name: str) -> type[dp_accounting.DpEvent]:
    """dp-accounting exports most event types at the top level, the rest in ``dp_event``."""
    from dp_accounting import dp_event

    cls = getattr(dp_accounting, name, None) or getattr(dp_event, name)
    return cls  # type: ignore[no-any-return]


#: Ends the label of an event that stands for several releases announced together as ONE
#: Gaussian event (their rates summed; the split between them read from an earlier release).
JOINT_MARK = "(one Gaussian event)"


@dataclass(frozen=True)
class SpentEvent:
    """One noisy release: what it was (``label``) and its dp-accounting event."""

    label: str
    event: dp_accounting.DpEvent

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "event": event_to_dict(self.event)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpentEvent:
        return cls(str(d["label"]), event_from_dict(d["event"]))


def event_to_dict(event: dp_accounting.DpEvent) -> dict[str, Any]:
    """JSON-friendly form of a dp-accounting event (nested events included)."""
    name = type(event).__name__
    if name not in _ALLOWED:
        raise DataError(
            "event type cannot be serialised",
            field="event",
            expected=" | ".join(sorted(_ALLOWED)),
            found=name,
        )
    out: dict[str, Any] = {"type": name}
    for field in attrs.fields(type(event)):
        value = getattr(event, field.name)
        if isinstance(value, dp_accounting.DpEvent):
            out[field.name] = event_to_dict(value)
        elif isinstance(value, list | tuple):
            out[field.name] = [event_to_dict(v) for v in value]
        else:
            out[field.name] = value
    return out


def event_from_dict(d: dict[str, Any]) -> dp_accounting.DpEvent:
    """Inverse of :func:`event_to_dict`; only known event types are rebuilt."""
    name = d.get("type")
    if name not in _ALLOWED:
        raise DataError(
            "unknown event type", field="type", expected=" | ".join(sorted(_ALLOWED)), found=name
        )
    cls = _event_class(str(name))
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key == "type":
            continue
        if isinstance(value, dict):
            kwargs[key] = event_from_dict(value)
        elif isinstance(value, list):
            kwargs[key] = [event_from_dict(v) for v in value]
        else:
            kwargs[key] = value
    event: dp_accounting.DpEvent = cls(**kwargs)
    return event


def total_event(spent: Sequence[SpentEvent]) -> dp_accounting.DpEvent:
    """The composition of every spent event, in order."""
    if not spent:
        return dp_accounting.NoOpDpEvent()
    if len(spent) == 1:
        return spent[0].event
    return dp_accounting.ComposedDpEvent([s.event for s in spent])


def unsampled(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """``event`` with every Poisson sampling removed: the release as seen by whoever knows the
    sample (amplification by sampling needs it to be secret)."""
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        return event.event
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return dp_accounting.SelfComposedDpEvent(unsampled(event.event), event.count)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return dp_accounting.ComposedDpEvent([unsampled(e) for e in event.events])
    return event


def describe_event(event: dp_accounting.DpEvent) -> str:
    """Short human-readable form, e.g. ``"Gaussian (z = 10.4)"`` or ``"3 × [Gaussian (z = 2)]"``."""
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return f"Gaussian (z = {event.noise_multiplier:.4g})"
    if isinstance(event, dp_accounting.LaplaceDpEvent):
        return f"Laplace (z = {event.noise_multiplier:.4g})"
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return f"{event.count} × [{describe_event(event.event)}]"
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return " + ".join(describe_event(e) for e in event.events)
    if type(event).__name__ == "RepeatAndSelectDpEvent":
        inner = describe_event(event.event)
        return f"best of a random number (mean {event.mean:g}) of [{inner}]"
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        return (
            f"Poisson-sampled (q = {event.sampling_probability:.4g}) {describe_event(event.event)}"
        )
    return type(event).__name__
