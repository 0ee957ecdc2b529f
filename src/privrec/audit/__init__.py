"""Empirical privacy: audits that attack trained private models.

* :mod:`~privrec.audit.bounds` — ε lower bounds from guesses (one-run, Steinke, Nasr &
  Jagielski 2023), Clopper–Pearson (multi-run, Jagielski et al. 2020), AUC;
* :mod:`~privrec.audit.canaries` — canary users whose presence is detectable without noise;
* :mod:`~privrec.audit.targets` — each private model trained with canaries and scored from
  what it releases;
* :mod:`~privrec.audit.one_run`, :mod:`~privrec.audit.multi_run` — the audits;
* :mod:`~privrec.audit.mia` — black-box membership inference on recommendation lists.

Names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privrec.audit.bounds import (
        MultiRunBound,
        OneRunBound,
        auc,
        clopper_pearson,
        multi_run_bound,
        one_run_bound,
        one_run_epsilon,
        one_run_p_value,
    )
    from privrec.audit.canaries import Canaries, CanaryDesign, plant
    from privrec.audit.mia import MembershipResult, recommendation_mia
    from privrec.audit.multi_run import MultiRunAudit, multi_run_audit
    from privrec.audit.one_run import ModelAudit, OneRunAudit, audit_model, one_run_audit
    from privrec.audit.targets import TARGETS, AuditTarget, make_target

_LAZY = {
    "MultiRunBound": "bounds",
    "OneRunBound": "bounds",
    "auc": "bounds",
    "clopper_pearson": "bounds",
    "multi_run_bound": "bounds",
    "one_run_bound": "bounds",
    "one_run_epsilon": "bounds",
    "one_run_p_value": "bounds",
    "Canaries": "canaries",
    "CanaryDesign": "canaries",
    "plant": "canaries",
    "MembershipResult": "mia",
    "recommendation_mia": "mia",
    "MultiRunAudit": "multi_run",
    "multi_run_audit": "multi_run",
    "ModelAudit": "one_run",
    "OneRunAudit": "one_run",
    "audit_model": "one_run",
    "one_run_audit": "one_run",
    "TARGETS": "targets",
    "AuditTarget": "targets",
    "make_target": "targets",
}

__all__ = [
    "TARGETS",
    "AuditTarget",
    "Canaries",
    "CanaryDesign",
    "MembershipResult",
    "ModelAudit",
    "MultiRunAudit",
    "MultiRunBound",
    "OneRunAudit",
    "OneRunBound",
    "auc",
    "audit_model",
    "clopper_pearson",
    "make_target",
    "multi_run_audit",
    "multi_run_bound",
    "one_run_audit",
    "one_run_bound",
    "one_run_epsilon",
    "one_run_p_value",
    "plant",
    "recommendation_mia",
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
