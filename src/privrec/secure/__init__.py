"""Secure computation for federated recommenders: SecAgg+ secure aggregation.

The public surface is small: a :class:`RoundConfig` that every party agrees on, the
:class:`SecAggClient` and :class:`SecAggServer` state machines, the messages they
exchange (:mod:`privrec.secure.messages`), and :func:`choose_parameters` for the
neighbour count and threshold. :func:`privrec.federated.simulate_secagg` runs a whole
round in one process. See ``docs/secagg.md``.
"""

from __future__ import annotations

from privrec.secure.graph import SecAggParameters, choose_parameters, neighbour_graph
from privrec.secure.secagg import (
    PHASES,
    AggregateResult,
    RoundConfig,
    SecAggClient,
    SecAggServer,
)

__all__ = [
    "PHASES",
    "AggregateResult",
    "RoundConfig",
    "SecAggClient",
    "SecAggParameters",
    "SecAggServer",
    "choose_parameters",
    "neighbour_graph",
]
