"""Versions filtered where the data lies (Ray workers): what the ledger checks when they register."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privrec.data import synthetic
from privrec.errors import PolicyViolation, StaleDataError
from privrec.governance import Ledger
from privrec.governance.db import user_digests
from privrec.governance.intake import workers_version_hash
from privrec.governance.policy import apply_policy, content_hash, policy_from_dict
from privrec.governance.records import GovernedData


@pytest.fixture
def world(ledger_url: str) -> Any:
    """On SQLite and PostgreSQL (whose column widths SQLite does not enforce)."""
    url = ledger_url
    owner, _ = Ledger.init(url, owner="olga")
    owner.set_policy(
        "ratings",
        policy_from_dict(
            {"purpose": "recs", "unit": "user", "budget": {"epsilon": 10.0, "delta": 1e-5}}
        ),
    )
    ann = Ledger.connect(url, owner.create_key("ann", "analyst"))
    yield owner, ann, synthetic(n_users=80, n_items=30, seed=0)


def _filtered(ann: Ledger, data: Any, *, stale_inputs: bool = False) -> dict[str, Any]:
    """What Ray's workers send back: the policy applied with inputs read from the ledger."""
    epoch = ann.dataset("ratings").epoch
    policy, key, deleted, consented = ann.policy_inputs("ratings")
    if stale_inputs:
        deleted = np.zeros(0, dtype=np.uint64)  # a worker that missed the deletions
    digests = user_digests(key, data.user_ids)
    kept, report = apply_policy(
        data, policy, user_digests=digests, deleted=deleted, consented=consented, now=time.time()
    )
    members = np.sort(digests[np.isin(data.user_ids, kept.user_ids)])
    return {
        "epoch": epoch,
        "content_hash": content_hash(kept),
        "members": members,
        "report": report,
        "n_items": data.n_items,
        "kept": kept,
    }


def test_a_registered_version_is_marked_and_never_trains_locally(
    world: Any, tmp_path: Path
) -> None:
    """A reviewer built a GovernedData by hand naming a worker-registered version and trained raw
    data through Ledger.train; the stored hash is now marked, and train hashes its data."""
    from privrec.models import DPPopularity

    _, ann, data = world
    f = _filtered(ann, data)
    f.pop("kept")
    # the attack: the version claims the RAW data's hash, then raw data is trained "on it"
    v = ann.register_version("ratings", **{**f, "content_hash": content_hash(data)})
    assert v.content_hash == workers_version_hash(content_hash(data)) != content_hash(data)
    assert len(v.content_hash) == 64  # the column's width (PostgreSQL enforces it)
    forged = GovernedData("ratings", v.version_id, v.content_hash, v.epoch, data, v.report)
    with pytest.raises(PolicyViolation):
        ann.train(
            DPPopularity(epsilon=1.0, delta=1e-6, unit="user"), forged, output=tmp_path / "m.npz"
        )
    assert ann.history("ratings") == []


def test_members_a_deletion_or_consent_rules_out_are_refused(world: Any) -> None:
    owner, ann, data = world
    owner.forget("ratings", data.user_ids[3], reason="erasure request")
    f = _filtered(ann, data, stale_inputs=True)  # the forgotten user is still a member
    f.pop("kept")
    with pytest.raises(StaleDataError, match="asked to be deleted"):
        ann.register_version("ratings", **f)
    f = _filtered(ann, data)
    f.pop("kept")
    assert ann.register_version("ratings", **f).version_id > 0


def test_a_version_without_its_oldest_interaction_is_refused_under_retention(world: Any) -> None:
    owner, ann, data = world
    owner.set_policy(
        "ratings",
        policy_from_dict(
            {
                "purpose": "recs", "unit": "user", "retention_days": 36500,
                "budget": {"epsilon": 10.0, "delta": 1e-5},
            }
        ),
    )  # fmt: skip
    f = _filtered(ann, data)
    f.pop("kept")
    hidden = f["report"].model_copy(update={"oldest_kept_timestamp": None})
    with pytest.raises(StaleDataError, match="retention"):
        ann.register_version("ratings", **{**f, "report": hidden})
    assert ann.register_version("ratings", **f).version_id > 0
