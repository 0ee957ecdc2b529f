"""Round reports of a simulated FederatedMF run: what may leave the simulator, and what a
checkpoint keeps.

A :class:`~privrec.federated.training.RoundReport` holds exact counts of people — the
Poisson-sampled cohort, its survivors, stragglers and rejected devices, and the bytes they
uploaded — and the protocol's counters (``extra``: seeds reconstructed, shares sent). No
guarantee covers any of them. (Its unclipped fraction is the released, noised one.) In memory they serve the operator of the simulation; what is printed or written
as output is rounded (:func:`public_round`), and what a checkpoint keeps carries none of them
(:func:`checkpoint_round`): a resumed run needs only the round log's public part.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from privrec.evaluation.protocol import approx_count, round_count

__all__ = ["CHECKPOINT_KEYS", "checkpoint_round", "json_default", "public_round", "without_numbers"]

_COUNTS = ("sampled", "survivors", "stragglers", "rejected")
_INTEGER = re.compile(r"(?<![\w.])\d+(?![\w.])")


def without_numbers(text: str) -> str:
    """``text`` (an abort reason) with each whole number as ``N``: its words stay, the counts
    of people it may quote ("only 23 masked inputs") do not — what checkpoints keep."""
    return _INTEGER.sub("N", text)


#: What a checkpoint keeps of each round report: the round and attempt, the clip norm (set by
#: noised clip-bit counts, released), ε so far (from the public events), the validation
#: Recall@20 (an evaluation output of the operator's validation split), the secure-sum mode
#: and the abort's phase and reason (its numbers as ``N``).
CHECKPOINT_KEYS = ("round", "attempt", "clip_norm", "epsilon", "recall", "secure", "aborted")


def _as_dict(report: Any) -> dict[str, Any]:
    if is_dataclass(report) and not isinstance(report, type):
        return asdict(report)
    return dict(report)


def public_round(report: Any) -> dict[str, Any]:
    """A round report fit to leave the simulator (``--json``, printed tables, logs).

    No guarantee covers the sizes of a round: the Poisson-sampled cohort, its survivors,
    stragglers and rejected devices are exact counts of people, and the bytes uploaded are a
    count of survivors times a payload. They are rounded as evaluation outputs are
    (:func:`~privrec.evaluation.protocol.approx_count`: ``"≈ 940"``; bytes and the unclipped
    fraction to two significant figures), and so are the numbers in an abort reason. The
    exact values stay in :attr:`FederatedSimulation.reports` in memory only; a report read
    back from a checkpoint (:func:`checkpoint_round`) has none of them, and stays without.
    """
    d = _as_dict(report)
    for key in _COUNTS:
        if key in d:
            d[key] = approx_count(int(d[key]))
    if "dropped" in d:
        d["dropped"] = {p: approx_count(int(n)) for p, n in dict(d["dropped"] or {}).items()}
    for key in ("bytes_up", "bytes_down"):
        if key in d:
            d[key] = round_count(int(d[key]))
    frac = d.get("unclipped_fraction")
    if isinstance(frac, float) and not math.isnan(frac):
        d["unclipped_fraction"] = round(frac, 2)
    if isinstance(d.get("recall"), float):
        d["recall"] = _metric(d["recall"])
    if d.get("extra"):
        # the protocol's counters count survivors and their neighbours: rounded as counts
        d["extra"] = {k: _public_number(v) for k, v in dict(d["extra"]).items()}
    if d.get("aborted"):
        d["aborted"] = _INTEGER.sub(lambda m: approx_count(int(m[0])), str(d["aborted"]))
    return d


def checkpoint_round(report: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The part of a round report a checkpoint keeps (:data:`CHECKPOINT_KEYS`).

    Cohort sizes, survivors, drops, stragglers, rejections, bytes, the exact unclipped
    fraction, timings and protocol statistics are dropped, not rounded: rounding leaves counts
    below 100 exact, and resuming needs none of them.
    """
    d = _as_dict(report)
    out = {k: d[k] for k in CHECKPOINT_KEYS if k in d}
    if isinstance(out.get("recall"), float):
        out["recall"] = _metric(out["recall"])
    if out.get("aborted"):
        out["aborted"] = without_numbers(str(out["aborted"]))
    return out


def _metric(v: float) -> float:
    """A validation metric to 4 decimals, as evaluation outputs: at full precision a mean over
    n users (0.2502848815959 …) gives n away."""
    return v if not math.isfinite(v) else round(v, 4)


def _public_number(v: Any) -> Any:
    """A protocol counter rounded as a count (``"≈ 130"``), other numbers to 2 significant figures."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return v
    if float(v).is_integer():
        return approx_count(int(v))
    return float(f"{v:.2g}")


def json_default(o: object) -> object:
    """JSON for numpy scalars (non-finite floats as ``null``)."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not math.isfinite(float(o)) else float(o)
    raise TypeError(type(o).__name__)
