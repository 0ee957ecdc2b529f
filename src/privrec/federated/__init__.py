"""Federated learning building blocks; for now the in-process secure-aggregation simulator."""

from __future__ import annotations

from privrec.federated.simulate import SecAggResult, simulate_secagg

__all__ = ["SecAggResult", "simulate_secagg"]
