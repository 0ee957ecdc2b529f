"""Differential-privacy core: units, budgets, accounting, mechanisms, contribution bounds.

The façade: everything a private model (or a user writing one) needs, in one import.
"""

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
