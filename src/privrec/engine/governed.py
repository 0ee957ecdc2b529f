"""A Ray training through the privacy ledger: policy on the workers, write-ahead charge, commit.

The single-machine :func:`privrec.governance.training.train` loads the data through the
ledger (``Ledger.load``: policy, dataset version) and then charges. On a cluster the data never
reaches one process, so :func:`train_on_ray` does the same steps where the data lies:

1. the dataset's policy inputs (:meth:`Ledger.policy_inputs <privrec.governance.Ledger.policy_inputs>`)
   go to the workers, which apply :func:`~privrec.governance.policy.apply_policy` to their users;
2. the driver registers the workers' result as a dataset version (content hash, keyed member
   hashes, merged policy report; :meth:`Ledger.register_version
   <privrec.governance.Ledger.register_version>`), refused if the dataset changed since the
   policy inputs were read; then the model announces its releases (``_plan``) and the ledger
   reserves their charge against that version — once, before any noise (a deletion request
   landing before the reservation refuses it); a worker lost later is replaced without a
   second charge;
3. the model file is written atomically, then the charge is committed with the artifact (its
   dataset hash is the SHA-256 of the workers' content hashes of their filtered users).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from privrec.engine.parquet import ParquetSource
from privrec.engine.partition import PolicyFilter
from privrec.engine.ray_engine import RayEngine
from privrec.errors import PolicyViolation

__all__ = ["train_on_ray"]


def train_on_ray(
    ledger: Any,
    model: Any,
    engine: RayEngine,
    data: str | Path | ParquetSource,
    *,
    dataset: str,
    output: str | Path,
    purpose: str | None = None,
    item_ids: Any = None,
    progress: Callable[[int, int], None] | None = None,
    on_loaded: Callable[[int, int], None] | None = None,
    signing_key: Any = None,
) -> tuple[Any, Path, Any]:
    """Train ``model`` on the cluster under ``dataset``'s policy and budget; returns
    (model, file, committed charge)."""
    from privrec.governance.training import (
        ChargeSession,
        _atomic_save,
        artifact_info,
        model_accountant,
        refuse_recorded_output,
        signing_identity,
    )
    from privrec.models.private import PrivateRecommender

    if not isinstance(model, PrivateRecommender):
        raise PolicyViolation(
            f"{getattr(model, 'name', type(model).__name__)} is not differentially private: the "
            "ledger only records releases whose privacy loss it can account for"
        )
    cfg = model.config()
    info = ledger.dataset(dataset)
    if str(cfg.unit) != info.unit:  # type: ignore[attr-defined]
        raise PolicyViolation(
            f"dataset {dataset!r} is governed at the {info.unit} level; the model uses "
            f"unit={str(cfg.unit)!r}"  # type: ignore[attr-defined]
        )
    claim = refuse_recorded_output(ledger, Path(output))  # a recorded release stays
    policy = PolicyFilter.from_ledger(ledger, dataset)
    key, signer = signing_identity(signing_key)  # before the charge: a bad key spends nothing
    session = ChargeSession(
        ledger,
        dataset,
        kind="training",
        purpose=purpose,
        description=f"{model.name} on Ray (ε={cfg.epsilon:g}, δ={cfg.delta:g})",  # type: ignore[attr-defined]
        accountant=model_accountant(model),
    )

    def loaded(n_users: int, nnz: int) -> None:
        # the workers hold their filtered users: register that version (refused if a deletion,
        # consent or policy change landed since the policy inputs were read) and reserve the
        # charge against it, so lineage and retraining duties cover this training too
        assert engine.last_policy_report is not None and engine.last_members is not None
        session.data = ledger.register_version(
            dataset,
            epoch=policy.epoch,
            content_hash=engine.last_content_hash or "",
            members=engine.last_members,
            report=engine.last_policy_report,
            n_items=engine.last_n_items,
        )
        if on_loaded is not None:
            on_loaded(n_users, nnz)

    with session:
        model.release_gate = session.gate
        try:
            engine.fit(
                model, data, item_ids=item_ids, policy=policy, progress=progress,
                on_loaded=loaded,
            )  # fmt: skip
        finally:
            model.release_gate = None
        session.released()  # recorded before the file can exist: no abortable released output
        path = _atomic_save(model, claim.path, None, key, claim)
        art = artifact_info(
            path,
            model_kind=model.name,
            config=cfg.model_dump(mode="json"),
            guarantee=model.guarantee_.model_dump(mode="json"),
            seeded_noise=model.guarantee_.seeded_noise,
            # the version's stored hash (the workers' hash, marked: ``workers_version_hash``)
            dataset_hash=session.data.content_hash if session.data is not None else "",
            signer=signer,
        )
        charge = session.commit(artifact=art)
    return model, path, charge
