"""Privacy operations: a budget ledger on a real database, policies, deletions, lineage, audit log.

The system's memory for privacy: which datasets exist and under which policy, what each budget
allows, every charge against it (reserved before any noise is drawn, composed with dp-accounting),
every released artifact and where it came from, consents and deletion requests, who may do what
(owner, analyst, auditor), and a hash-chained audit log written with each action.
See ``docs/governance.md``.

Imports are lazy so that ``import privrec.governance`` costs nothing until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privrec.governance.auth import Role
    from privrec.governance.ledger import Ledger
    from privrec.governance.policy import Policy, PolicyReport, apply_policy, load_policy
    from privrec.governance.records import (
        ArtifactRecord,
        BudgetStatus,
        ChargeInfo,
        GovernedData,
    )
    from privrec.governance.training import ChargeSession, TrainingRecord, train

__all__ = [
    "ArtifactRecord",
    "BudgetStatus",
    "ChargeInfo",
    "ChargeSession",
    "GovernedData",
    "Ledger",
    "Policy",
    "PolicyReport",
    "Role",
    "TrainingRecord",
    "apply_policy",
    "load_policy",
    "train",
]

_WHERE = {
    "Role": "auth",
    "Ledger": "ledger",
    "Policy": "policy",
    "PolicyReport": "policy",
    "apply_policy": "policy",
    "load_policy": "policy",
    "ArtifactRecord": "records",
    "BudgetStatus": "records",
    "ChargeInfo": "records",
    "GovernedData": "records",
    "ChargeSession": "training",
    "TrainingRecord": "training",
    "train": "training",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"privrec.governance.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'privrec.governance' has no attribute {name!r}")
