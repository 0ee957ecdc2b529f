"""Secure computation for federated recommenders: SecAgg+ secure aggregation.

The public surface is small: a :class:`RoundConfig` that every party agrees on, the
:class:`SecAggClient` and :class:`SecAggServer` state machines, the messages they
exchange (:mod:`privrec.secure.messages`), and :func:`choose_parameters` for the
neighbour count and threshold. :func:`privrec.federated.simulate_secagg` runs a whole
round in one process. See ``docs/secagg.md``.

The names are imported on first use (module ``__getattr__``), so that importing one
submodule (say :mod:`privrec.secure.messages` in a Flower ClientApp, a fresh process per
message) does not pay for the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privrec.secure.graph import SecAggParameters, choose_parameters, neighbour_graph
    from privrec.secure.secagg import (
        MALICIOUS_PHASES,
        PHASES,
        AggregateResult,
        RoundConfig,
        SecAggClient,
        SecAggServer,
        generate_identities,
    )

__all__ = [
    "MALICIOUS_PHASES",
    "PHASES",
    "AggregateResult",
    "RoundConfig",
    "SecAggClient",
    "SecAggParameters",
    "SecAggServer",
    "choose_parameters",
    "generate_identities",
    "neighbour_graph",
]

_LAZY = {
    "MALICIOUS_PHASES": "secagg",
    "generate_identities": "secagg",
    "PHASES": "secagg",
    "AggregateResult": "secagg",
    "RoundConfig": "secagg",
    "SecAggClient": "secagg",
    "SecAggServer": "secagg",
    "SecAggParameters": "graph",
    "choose_parameters": "graph",
    "neighbour_graph": "graph",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
