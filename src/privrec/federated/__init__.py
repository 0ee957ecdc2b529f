"""Federated learning: FederatedMF (simulated and on Flower) and the secure-aggregation simulator.

The names are imported on first use (module ``__getattr__``): a Flower ClientApp runs in a
fresh process per message and imports :mod:`privrec.federated.flower`, which must not pay
for the simulator, the estimator and their dependencies every time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privrec.federated.dpals import FederatedDPALS, FederatedDPALSConfig
    from privrec.federated.mf import (
        ClientUpdate,
        FederatedMFConfig,
        FederatedMFServer,
        RoundSpec,
        client_count_vector,
        client_update,
        client_updates,
        pack_payload,
        split_noise,
    )
    from privrec.federated.model import FederatedMF
    from privrec.federated.secure_round import SecureSum, secure_sum
    from privrec.federated.simulate import SecAggResult, simulate_secagg
    from privrec.federated.training import FaultModel, FederatedSimulation, RoundReport

_LAZY = {
    "FederatedDPALS": "dpals",
    "FederatedDPALSConfig": "dpals",
    "ClientUpdate": "mf",
    "FederatedMFConfig": "mf",
    "FederatedMFServer": "mf",
    "RoundSpec": "mf",
    "client_count_vector": "mf",
    "client_update": "mf",
    "client_updates": "mf",
    "pack_payload": "mf",
    "split_noise": "mf",
    "FederatedMF": "model",
    "SecureSum": "secure_round",
    "secure_sum": "secure_round",
    "SecAggResult": "simulate",
    "simulate_secagg": "simulate",
    "FaultModel": "training",
    "FederatedSimulation": "training",
    "RoundReport": "training",
}

__all__ = [
    "ClientUpdate",
    "FaultModel",
    "FederatedDPALS",
    "FederatedDPALSConfig",
    "FederatedMF",
    "FederatedMFConfig",
    "FederatedMFServer",
    "FederatedSimulation",
    "RoundReport",
    "RoundSpec",
    "SecAggResult",
    "SecureSum",
    "client_count_vector",
    "client_update",
    "client_updates",
    "pack_payload",
    "secure_sum",
    "simulate_secagg",
    "split_noise",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
