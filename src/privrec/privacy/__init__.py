"""Differential-privacy core: units, budgets, accounting, mechanisms, contribution bounds.

The façade: everything a private model (or a user writing one) needs, in one import.

The names are imported on first use (module ``__getattr__``): importing one submodule, say
:mod:`privrec.privacy.randomness` on a federated client (a fresh process per message), must
not pay for ``dp_accounting``, ``numba`` and ``scipy`` that other submodules need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privrec.privacy.accounting import (
        AccountantKind,
        calibrate,
        compose,
        epsilon_of,
        make_accountant,
    )
    from privrec.privacy.budget import Budget
    from privrec.privacy.contribution import adaptive_weights, clip_rows, sample_per_user
    from privrec.privacy.distributed import (
        DistributedDPConfig,
        DistributedDPEncoder,
        DistributedDPPlan,
        DistributedGuarantee,
        calibrate_distributed,
        sample_discrete_gaussian,
        sample_skellam,
    )
    from privrec.privacy.events import SpentEvent, event_from_dict, event_to_dict, total_event
    from privrec.privacy.guarantee import PrivacyGuarantee
    from privrec.privacy.mechanisms import (
        discrete_gaussian,
        discrete_laplace,
        gaussian,
        gaussian_event,
        laplace,
        laplace_event,
        symmetric_gaussian,
    )
    from privrec.privacy.randomness import resolve_generator, secure_generator, seeded_generator
    from privrec.privacy.units import PrivacyUnit

__all__ = [
    "AccountantKind",
    "Budget",
    "DistributedDPConfig",
    "DistributedDPEncoder",
    "DistributedDPPlan",
    "DistributedGuarantee",
    "PrivacyGuarantee",
    "PrivacyUnit",
    "SpentEvent",
    "adaptive_weights",
    "calibrate",
    "calibrate_distributed",
    "clip_rows",
    "compose",
    "discrete_gaussian",
    "discrete_laplace",
    "epsilon_of",
    "event_from_dict",
    "event_to_dict",
    "gaussian",
    "gaussian_event",
    "laplace",
    "laplace_event",
    "make_accountant",
    "resolve_generator",
    "sample_discrete_gaussian",
    "sample_per_user",
    "sample_skellam",
    "secure_generator",
    "seeded_generator",
    "symmetric_gaussian",
    "total_event",
]

_LAZY = {
    "AccountantKind": "accounting",
    "Budget": "budget",
    "DistributedDPConfig": "distributed",
    "DistributedDPEncoder": "distributed",
    "DistributedDPPlan": "distributed",
    "DistributedGuarantee": "distributed",
    "PrivacyGuarantee": "guarantee",
    "PrivacyUnit": "units",
    "SpentEvent": "events",
    "adaptive_weights": "contribution",
    "calibrate": "accounting",
    "calibrate_distributed": "distributed",
    "clip_rows": "contribution",
    "compose": "accounting",
    "discrete_gaussian": "mechanisms",
    "discrete_laplace": "mechanisms",
    "epsilon_of": "accounting",
    "event_from_dict": "events",
    "event_to_dict": "events",
    "gaussian": "mechanisms",
    "gaussian_event": "mechanisms",
    "laplace": "mechanisms",
    "laplace_event": "mechanisms",
    "make_accountant": "accounting",
    "resolve_generator": "randomness",
    "sample_discrete_gaussian": "distributed",
    "sample_per_user": "contribution",
    "sample_skellam": "distributed",
    "secure_generator": "randomness",
    "seeded_generator": "randomness",
    "symmetric_gaussian": "mechanisms",
    "total_event": "events",
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
