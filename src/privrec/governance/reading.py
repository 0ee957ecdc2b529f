"""Reading the ledger: budgets with composed ε, charges, artifacts, lineage, the audit log.

:class:`LedgerBase` holds the connection, the caller's principal and every read-only query;
:class:`~privrec.governance.ledger.Ledger` adds the actions that write. Listings are single SQL
queries (aggregations in the database), so a ledger of 10,000 charges lists in milliseconds;
composed ε uses the exact Gaussian-rate rewrite of :mod:`privrec.governance.composition`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from privrec.errors import AuthenticationError, UnknownDatasetError
from privrec.governance import audit
from privrec.governance import schema as tbl
from privrec.governance.auth import Principal, require
from privrec.governance.composition import composed_epsilon
from privrec.governance.db import digest_hex, read_transaction, user_digests, write_transaction
from privrec.governance.policy import Policy
from privrec.governance.records import (
    ArtifactRecord,
    BudgetStatus,
    ChargeInfo,
    DatasetInfo,
    UserLineage,
)
from privrec.governance.userkey import user_key_bytes
from privrec.privacy.units import PrivacyUnit

__all__ = ["LIVE", "LedgerBase", "file_sha256"]

LIVE = ("reserved", "committed")


def ledger_clock(engine: Engine) -> float:
    """Seconds since the epoch by the **ledger's** clock: the PostgreSQL server's, or this
    machine's for SQLite (a file on this machine: every process writing it shares its clock).

    Why: charges' times decide which of them a rolling (``period_days``) budget counts, and a
    load's time decides what retention keeps. Taken from each client's own clock, an analyst
    machine set back 40 days wrote charges that every 30-day window skipped (a budget spent
    twice) and one set forward made the window skip everyone else's; the audit log could not
    tell, since the row was written that way. Against a shared PostgreSQL ledger every process
    now reads the server's ``clock_timestamp()``.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return _server_clock(conn)
    return time.time()


def _server_clock(conn: Connection) -> float:
    value = conn.execute(sa.text("SELECT EXTRACT(EPOCH FROM clock_timestamp())"))
    return float(value.scalar_one())


def _in_window(since: float) -> Any:
    """Charges a rolling window starting at ``since`` holds: by when their output was released.

    Why: a window is a cap on what was *released* in it. Counted by their reservation time,
    a charge reserved before the window and committed — or replayed by its idempotency key —
    after it had left released its ε in no window at all (the same budget spent twice; found
    by review, 2026-12-07). So a charge still reserved counts in every window — it may release
    (more) at any moment: a federated run releases every round under one charge — and a
    committed one from its commit, which comes after all its releases.
    """
    pending = tbl.Charge.status == "reserved"
    finished = sa.and_(tbl.Charge.status == "committed", tbl.Charge.updated_at >= since)
    return sa.or_(pending, finished)


class LedgerBase:
    """Connection, principal and read-only queries shared by :class:`~privrec.governance.Ledger`."""

    def __init__(
        self, engine: Engine, url: str, principal: Principal, *, key_id: str | None = None
    ) -> None:
        self.engine = engine
        self.url = url
        self.principal = principal
        #: the id of the API key this connection was opened with (``None``: made without one,
        #: e.g. by a service that verified the key itself — then the principal is checked)
        self.key_id = key_id

    @property
    def actor(self) -> str:
        return self.principal.name

    def clock(self, conn: Connection | None = None) -> float:
        """Now, by the ledger's clock (:func:`ledger_clock`); inside a transaction pass its
        connection — a second connection per writer exhausted PostgreSQL's pool when 32
        analysts raced one budget."""
        if conn is not None and self.engine.dialect.name == "postgresql":
            return _server_clock(conn)
        return ledger_clock(self.engine)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A writing transaction (:func:`~privrec.governance.db.write_transaction`) that first
        re-checks the caller's authority.

        Why: a key is verified when the connection is opened, but a :class:`Ledger` may live for
        hours (a service, a notebook); a key revoked — or a principal disabled — meanwhile must
        stop working at once, not at the next connect. The check runs inside the serialised
        transaction, so a revocation either committed before it (refused, nothing written) or
        after the action (which was then still authorised).
        """
        with write_transaction(self.engine) as conn:
            self._check_authority(conn)
            yield conn

    def _check_authority(self, conn: Connection) -> None:
        q = (
            sa.select(tbl.Principal.role, tbl.Principal.disabled, tbl.ApiKey.revoked_at)
            .join(tbl.ApiKey, tbl.ApiKey.principal_id == tbl.Principal.id)
            .where(tbl.Principal.name == self.actor)
        )
        if self.key_id is not None:
            q = q.where(tbl.ApiKey.key_id == self.key_id)
        if not any(
            r.revoked_at is None and not r.disabled and r.role == self.principal.role.value
            for r in conn.execute(q)
        ):
            raise AuthenticationError(
                f"the API key of {self.actor} was revoked (or the principal disabled) after this "
                "connection was opened: nothing was written"
            )

    def _user_key(self, conn: Connection) -> bytes:
        """The user-hash key (typed errors for a missing or external one: see
        :mod:`privrec.governance.userkey`)."""
        return user_key_bytes(
            conn.execute(
                sa.select(tbl.Meta.value).where(tbl.Meta.key == "user_key")
            ).scalar_one_or_none()
        )

    def _dataset(self, conn: Connection, name: str) -> Any:
        row = conn.execute(sa.select(tbl.Dataset).where(tbl.Dataset.name == name)).first()
        if row is None:
            known = (
                conn.execute(sa.select(tbl.Dataset.name).order_by(tbl.Dataset.name)).scalars().all()
            )
            hint = (
                f"; known: {', '.join(known)}"
                if known
                else "; register it with `privrec policy set`"
            )
            raise UnknownDatasetError(f"unknown dataset {name!r}{hint}")
        return row

    def _log(
        self,
        conn: Connection,
        action: str,
        payload: dict[str, Any],
        rows: dict[str, list[int]] | None = None,
        at: float | None = None,
    ) -> int:
        return audit.append(
            conn,
            at=self.clock(conn) if at is None else at,
            actor=self.actor,
            action=action,
            payload=payload,
            rows=rows,
        )

    @staticmethod
    def _scope_label(dataset: str, b: Any) -> str:
        if b.scope == "dataset":
            return f"dataset {dataset!r}"
        return f"{b.scope} {b.scope_value!r} on dataset {dataset!r}"

    @staticmethod
    def _scope_filter(dataset_id: int, b: Any, now: float) -> list[Any]:
        cond: list[Any] = [tbl.Charge.dataset_id == dataset_id, tbl.Charge.status.in_(LIVE)]
        if b.scope == "analyst":
            cond.append(tbl.Charge.actor == b.scope_value)
        elif b.scope == "purpose":
            cond.append(tbl.Charge.purpose == b.scope_value)
        if b.period_days is not None:
            cond.append(_in_window(now - b.period_days * 86400.0))
        return cond

    def _spent_terms(
        self, conn: Connection, dataset_id: int, b: Any, now: float
    ) -> tuple[float, list[tuple[str, int]]]:
        cond = self._scope_filter(dataset_id, b, now)
        rate = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(tbl.Charge.gaussian_rate), 0.0)).where(
                *cond, tbl.Charge.gaussian_rate.is_not(None)
            )
        ).scalar_one()
        grouped = conn.execute(
            sa.select(tbl.Charge.events_json, sa.func.count())
            .where(*cond, tbl.Charge.gaussian_rate.is_(None))
            .group_by(tbl.Charge.events_json)
        ).all()
        return float(rate or 0.0), [(str(t), int(n)) for t, n in grouped]

    def _dataset_name(self, conn: Connection, dataset_id: int) -> str:
        return str(
            conn.execute(
                sa.select(tbl.Dataset.name).where(tbl.Dataset.id == dataset_id)
            ).scalar_one()
        )

    def _warn_weak_cap(
        self, conn: Connection, dataset_id: int | None, unit: str, epsilon: float, delta: float
    ) -> None:
        """Warn (:class:`~privrec.errors.PrivacyWarning`) about a cap that weakens privacy,
        by the rule training shares (:func:`~privrec.privacy.budget.warn_weak_budget`): ε above
        10, δ at or above one over the latest registered version's number of privacy units
        (or above 0.01 when no version is registered yet)."""
        from privrec.privacy.budget import warn_weak_budget

        row = None
        if dataset_id is not None:
            row = conn.execute(
                sa.select(tbl.DatasetVersion.n_users, tbl.DatasetVersion.nnz)
                .where(tbl.DatasetVersion.dataset_id == dataset_id)
                .order_by(tbl.DatasetVersion.id.desc())
                .limit(1)
            ).first()
        n = None if row is None else int(row.n_users if unit == PrivacyUnit.USER else row.nnz)
        warn_weak_budget(epsilon, delta, n_units=n, what="budget cap: ", stacklevel=3)

    # ------------------------------------------------------------------ reading
    def datasets(self) -> list[DatasetInfo]:
        require(self.principal, "read_own", "listing datasets")
        with read_transaction(self.engine) as conn:
            names = (
                conn.execute(sa.select(tbl.Dataset.name).order_by(tbl.Dataset.name)).scalars().all()
            )
        return [self.dataset(n) for n in names]

    def dataset(self, name: str) -> DatasetInfo:
        require(self.principal, "read_own", "reading a dataset")
        with read_transaction(self.engine) as conn:
            ds = self._dataset(conn, name)

            def count(model: Any) -> int:
                return int(
                    conn.execute(
                        sa.select(sa.func.count())
                        .select_from(model)
                        .where(model.dataset_id == ds.id)
                    ).scalar_one()
                )

            return DatasetInfo(
                id=ds.id,
                name=ds.name,
                unit=ds.unit,
                policy=json.loads(ds.policy_json),
                policy_hash=ds.policy_hash,
                epoch=ds.epoch,
                created_at=ds.created_at,
                versions=count(tbl.DatasetVersion),
                deletions=count(tbl.Deletion),
                consents=count(tbl.Consent),
            )

    def status(self, dataset: str | None = None) -> list[BudgetStatus]:
        """Every budget visible to the caller with its composed ε, naive sum and charge counts.

        Analysts see dataset and purpose budgets and their own analyst budget.
        """
        require(self.principal, "read_own", "reading budgets")
        now = self.clock()
        out: list[BudgetStatus] = []
        with read_transaction(self.engine) as conn:
            q = sa.select(tbl.Budget, tbl.Dataset.name, tbl.Dataset.unit).join(
                tbl.Dataset, tbl.Dataset.id == tbl.Budget.dataset_id
            )
            if dataset is not None:
                q = q.where(tbl.Dataset.id == self._dataset(conn, dataset).id)
            if not self.principal.can("read_all"):
                q = q.where(
                    sa.or_(tbl.Budget.scope != "analyst", tbl.Budget.scope_value == self.actor)
                )
            for b in conn.execute(
                q.order_by(tbl.Dataset.name, tbl.Budget.scope, tbl.Budget.scope_value)
            ).all():
                rate, grouped = self._spent_terms(conn, b.dataset_id, b, now)
                composed = composed_epsilon(
                    rate, grouped, b.delta, b.accountant, PrivacyUnit(b.unit)
                )
                cond = self._scope_filter(b.dataset_id, b, now)
                naive = conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(tbl.Charge.epsilon), 0.0)).where(*cond)
                ).scalar_one()
                cond_all = [c for c in cond if c is not cond[1]]
                counts = dict(
                    conn.execute(
                        sa.select(tbl.Charge.status, sa.func.count())
                        .where(*cond_all)
                        .group_by(tbl.Charge.status)
                    ).all()
                )
                out.append(
                    BudgetStatus(
                        dataset=b.name,
                        scope=b.scope,
                        scope_value=b.scope_value,
                        epsilon=b.epsilon,
                        delta=b.delta,
                        period_days=b.period_days,
                        accountant=b.accountant,
                        composed_epsilon=composed,
                        naive_epsilon=float(naive),
                        committed=int(counts.get("committed", 0)),
                        reserved=int(counts.get("reserved", 0)),
                        aborted=int(counts.get("aborted", 0)),
                    )
                )
        return out

    def history(
        self,
        dataset: str | None = None,
        *,
        limit: int | None = 100,
        actor: str | None = None,
        since: float | None = None,
        status: str | None = None,
    ) -> list[ChargeInfo]:
        """Charges, newest first (analysts see only their own)."""
        require(self.principal, "read_own", "reading charges")
        with read_transaction(self.engine) as conn:
            q = sa.select(tbl.Charge, tbl.Dataset.name.label("dataset_name")).join(
                tbl.Dataset, tbl.Dataset.id == tbl.Charge.dataset_id
            )
            if dataset is not None:
                q = q.where(tbl.Charge.dataset_id == self._dataset(conn, dataset).id)
            if not self.principal.can("read_all"):
                actor = self.actor if actor in (None, self.actor) else "\x00nobody"
            if actor is not None:
                q = q.where(tbl.Charge.actor == actor)
            if since is not None:
                q = q.where(tbl.Charge.created_at >= since)
            if status is not None:
                q = q.where(tbl.Charge.status == status)
            q = q.order_by(tbl.Charge.id.desc())
            if limit is not None:
                q = q.limit(limit)
            return [ChargeInfo.from_row(r, r.dataset_name) for r in conn.execute(q).all()]

    def spend_over_time(
        self, dataset: str, *, scope: str = "dataset", value: str = "", points: int = 50
    ) -> list[tuple[float, float, float]]:
        """``(time, composed ε, naive ε)`` after up to ``points`` evenly spaced charges and the last.

        The charges sampled are every ``step``-th one, ``step`` a power of two, so they stay the
        same as charges are added (until the step doubles, when every other one stays): the
        composed ε of a point already computed is reused (see
        :func:`~privrec.governance.composition.composed_epsilon`).
        """
        require(self.principal, "read_own", "reading budgets")
        if scope == "analyst" and value != self.actor:
            require(self.principal, "read_all", "reading another analyst's budget")
        with read_transaction(self.engine) as conn:
            ds = self._dataset(conn, dataset)
            b = conn.execute(
                sa.select(tbl.Budget).where(
                    tbl.Budget.dataset_id == ds.id,
                    tbl.Budget.scope == scope,
                    tbl.Budget.scope_value == value,
                )
            ).first()
            if b is None:
                raise UnknownDatasetError(f"no {scope} budget {value!r} on dataset {dataset!r}")
            cond = [tbl.Charge.dataset_id == ds.id, tbl.Charge.status.in_(LIVE)]
            if scope == "analyst":
                cond.append(tbl.Charge.actor == value)
            elif scope == "purpose":
                cond.append(tbl.Charge.purpose == value)
            rows = conn.execute(
                sa.select(
                    tbl.Charge.created_at,
                    tbl.Charge.gaussian_rate,
                    tbl.Charge.events_json,
                    tbl.Charge.epsilon,
                )
                .where(*cond)
                .order_by(tbl.Charge.id)
            ).all()
        if not rows:
            return []
        marks = _marks(len(rows), points)
        out = []
        rate = 0.0
        naive = 0.0
        grouped: dict[str, int] = {}
        j = 0
        for i, r in enumerate(rows):
            if r.gaussian_rate is not None:
                rate += r.gaussian_rate
            else:
                grouped[r.events_json] = grouped.get(r.events_json, 0) + 1
            naive += r.epsilon
            if j < len(marks) and i == marks[j]:
                eps = composed_epsilon(
                    rate, list(grouped.items()), b.delta, b.accountant, PrivacyUnit(ds.unit)
                )
                out.append((float(r.created_at), eps, naive))
                j += 1
        return out

    def artifact(self, ref: int | str | Path) -> ArtifactRecord:
        """An artifact by id, by file hash, or by the file itself (hashed)."""
        require(self.principal, "read_own", "reading artifacts")
        with read_transaction(self.engine) as conn:
            q = sa.select(tbl.Artifact, tbl.Dataset.name.label("dataset_name")).join(
                tbl.Dataset, tbl.Dataset.id == tbl.Artifact.dataset_id
            )
            if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
                q = q.where(tbl.Artifact.id == int(ref))
            elif (
                isinstance(ref, str)
                and len(ref) == 64
                and all(c in "0123456789abcdef" for c in ref)
            ):
                q = q.where(tbl.Artifact.file_hash == ref)
            else:
                path = Path(ref)
                if not path.is_file():
                    raise UnknownDatasetError(
                        f"no artifact {str(ref)!r}: not an id, a file hash or a file"
                    )
                q = q.where(tbl.Artifact.file_hash == file_sha256(path))
            row = conn.execute(q.order_by(tbl.Artifact.id.desc())).first()
            if row is None:
                raise UnknownDatasetError(f"the ledger has no artifact {str(ref)!r}")
            if not self.principal.can("read_all") and row.created_by != self.actor:
                require(self.principal, "read_all", "reading another analyst's artifact")
            charges = (
                conn.execute(
                    sa.select(tbl.Charge.id)
                    .where(tbl.Charge.artifact_id == row.id)
                    .order_by(tbl.Charge.id)
                )
                .scalars()
                .all()
            )
        return _artifact_record(row, tuple(int(c) for c in charges))

    def artifacts(self, dataset: str | None = None) -> list[ArtifactRecord]:
        require(self.principal, "read_all", "listing artifacts")
        with read_transaction(self.engine) as conn:
            q = sa.select(tbl.Artifact, tbl.Dataset.name.label("dataset_name")).join(
                tbl.Dataset, tbl.Dataset.id == tbl.Artifact.dataset_id
            )
            if dataset is not None:
                q = q.where(tbl.Artifact.dataset_id == self._dataset(conn, dataset).id)
            rows = conn.execute(q.order_by(tbl.Artifact.id)).all()
            links: dict[int, list[int]] = {}
            for cid, aid in conn.execute(
                sa.select(tbl.Charge.id, tbl.Charge.artifact_id).where(
                    tbl.Charge.artifact_id.is_not(None)
                )
            ):
                links.setdefault(int(aid or 0), []).append(int(cid))
        return [_artifact_record(r, tuple(links.get(r.id, []))) for r in rows]

    def version(self, version_id: int) -> dict[str, Any]:
        require(self.principal, "read_own", "reading dataset versions")
        with read_transaction(self.engine) as conn:
            v = conn.execute(
                sa.select(tbl.DatasetVersion).where(tbl.DatasetVersion.id == version_id)
            ).first()
            if v is None:
                raise UnknownDatasetError(f"unknown dataset version {version_id}")
            # its policy report holds exact counts (e.g. one deleted person's interactions): an
            # analyst reads only the versions they loaded themselves, as with artifacts
            if not self.principal.can("read_all") and v.created_by != self.actor:
                require(self.principal, "read_all", "reading another analyst's dataset version")
            return {
                "id": v.id,
                "dataset": self._dataset_name(conn, v.dataset_id),
                "content_hash": v.content_hash,
                "policy_hash": v.policy_hash,
                "epoch": v.epoch,
                "n_users": v.n_users,
                "n_items": v.n_items,
                "nnz": v.nnz,
                "report": json.loads(v.report_json),
                "created_at": v.created_at,
                "created_by": v.created_by,
            }

    def latest_version(self, dataset: str) -> dict[str, Any] | None:
        """The dataset's most recent version (as :meth:`version`), or ``None`` before any load.

        Holds the policy report's exact counts: an internal record, so owner and auditor only.
        """
        require(self.principal, "read_all", "reading a dataset's policy report")
        with read_transaction(self.engine) as conn:
            vid = conn.execute(
                sa.select(sa.func.max(tbl.DatasetVersion.id)).where(
                    tbl.DatasetVersion.dataset_id == self._dataset(conn, dataset).id
                )
            ).scalar_one()
        return None if vid is None else self.version(int(vid))

    def lineage_of_user(self, user: Any, dataset: str | None = None) -> list[UserLineage]:
        """Artifacts trained on dataset versions that contained ``user`` (and whether a retrain is due)."""
        require(self.principal, "read_all", "tracing a person's lineage")
        out: list[UserLineage] = []
        with read_transaction(self.engine) as conn:
            key = self._user_key(conn)
            d = user_digests(key, [user])[0]
            h = digest_hex(d)
            q = sa.select(
                tbl.DatasetVersion.id, tbl.DatasetVersion.dataset_id, tbl.DatasetVersion.members
            )
            if dataset is not None:
                q = q.where(tbl.DatasetVersion.dataset_id == self._dataset(conn, dataset).id)
            holding: dict[int, int] = {}
            for vid, did, blob in conn.execute(q):
                members = np.frombuffer(blob, dtype="<u8")
                i = int(np.searchsorted(members, d))
                if i < members.size and members[i] == d:
                    holding[int(vid)] = int(did)
            if not holding:
                return []
            rows = conn.execute(
                sa.select(
                    tbl.Artifact, tbl.Dataset.name.label("dataset_name"), tbl.Dataset.policy_json
                )
                .join(tbl.Dataset, tbl.Dataset.id == tbl.Artifact.dataset_id)
                .where(tbl.Artifact.version_id.in_(list(holding)))
                .order_by(tbl.Artifact.id)
            ).all()
            withdrawn_by_dataset: dict[int, float | None] = {}
            for r in rows:
                policy = Policy.from_json(r.policy_json)
                if r.dataset_id not in withdrawn_by_dataset:  # one query per dataset
                    found = _withdrawals(conn, r.dataset_id, policy, h)
                    withdrawn_by_dataset[r.dataset_id] = found.get(int(h, 16))
                withdrawn = withdrawn_by_dataset[r.dataset_id]
                req = conn.execute(
                    sa.select(sa.func.min(tbl.Deletion.requested_at)).where(
                        tbl.Deletion.dataset_id == r.dataset_id, tbl.Deletion.user_hash == h
                    )
                ).scalar_one()
                out.append(
                    UserLineage(
                        _artifact_record(r, ()),
                        int(r.version_id),
                        req,
                        _due(policy, req, withdrawn),
                        withdrawn,
                    )
                )
        return out

    def retrains_due(self, dataset: str | None = None) -> list[UserLineage]:
        """Artifacts trained on data holding a person who has since asked to be deleted — or,
        where the policy requires consent kept in the ledger, withdrawn their consent — under a
        policy that requires a retrain (``[deletion] retrain_within_days``). Ids are never
        returned."""
        require(self.principal, "read_all", "listing retrains due")
        out: list[UserLineage] = []
        with read_transaction(self.engine) as conn:
            q = sa.select(tbl.Dataset)
            if dataset is not None:
                q = q.where(tbl.Dataset.name == dataset)
            for ds in conn.execute(q).all():
                policy = Policy.from_json(ds.policy_json)
                if policy.deletion.retrain_within_days is None:
                    continue
                dels: dict[int, float] = {}
                for h, t in conn.execute(
                    sa.select(tbl.Deletion.user_hash, tbl.Deletion.requested_at).where(
                        tbl.Deletion.dataset_id == ds.id
                    )
                ):
                    dels[int(h, 16)] = min(float(t), dels.get(int(h, 16), math.inf))
                wds = _withdrawals(conn, ds.id, policy)
                if not dels and not wds:
                    continue
                arts = conn.execute(
                    sa.select(
                        tbl.Artifact,
                        tbl.Dataset.name.label("dataset_name"),
                        tbl.DatasetVersion.members,
                    )
                    .join(tbl.Dataset, tbl.Dataset.id == tbl.Artifact.dataset_id)
                    .join(tbl.DatasetVersion, tbl.DatasetVersion.id == tbl.Artifact.version_id)
                    .where(tbl.Artifact.dataset_id == ds.id)
                ).all()
                del_keys, wd_keys = _keys(dels), _keys(wds)  # once per dataset
                for a in arts:
                    members = np.frombuffer(a.members, dtype="<u8")
                    first_del = _first_of(dels, del_keys, members)
                    first_wd = _first_of(wds, wd_keys, members)
                    due = _due(policy, first_del, first_wd)
                    if due is not None:
                        out.append(
                            UserLineage(
                                _artifact_record(a, ()), int(a.version_id), first_del, due, first_wd
                            )
                        )
        return out

    def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        require(self.principal, "read_all", "reading the audit log")
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                sa.select(tbl.AuditRow).order_by(tbl.AuditRow.seq.desc()).limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def verify_audit_log(self, *, expect_head: str | None = None) -> audit.AuditVerification:
        """Walk the hash chain and compare the tables with it; see :func:`privrec.governance.audit.verify`."""
        require(self.principal, "read_all", "verifying the audit log")
        with read_transaction(self.engine) as conn:
            return audit.verify(conn, expect_head=expect_head)


def _withdrawals(
    conn: Connection, dataset_id: int, policy: Policy, user_hash: str | None = None
) -> dict[int, float]:
    """People whose consent is currently withdrawn → when that withdrawn state began.

    Only where consent matters and its records live in the ledger (``[consent] required`` with
    ``source = "ledger"``): a CSV consent file has no per-person times. The latest record wins, as
    when loading; a later grant ends the withdrawal (and with it the retrain it called for).
    """
    if not policy.consent.required or policy.consent.source != "ledger":
        return {}
    q = sa.select(tbl.Consent.user_hash, tbl.Consent.granted, tbl.Consent.recorded_at).where(
        tbl.Consent.dataset_id == dataset_id
    )
    if user_hash is not None:
        q = q.where(tbl.Consent.user_hash == user_hash)
    began: dict[int, float | None] = {}
    for h, granted, at in conn.execute(q.order_by(tbl.Consent.id)):
        k = int(h, 16)
        if granted:
            began[k] = None
        elif began.get(k) is None:
            began[k] = float(at)
    return {k: t for k, t in began.items() if t is not None}


def _keys(events: dict[int, float]) -> np.ndarray:
    return np.fromiter(events, dtype=np.uint64, count=len(events))


def _first_of(events: dict[int, float], keys: np.ndarray, members: np.ndarray) -> float | None:
    """The earliest event of anyone in ``members`` (``keys``: the events' people, as
    :func:`_keys` gives them).

    Not filtered by time: a version's members were loaded before any request of theirs took
    effect (a load drops everyone it sees deleted or withdrawn), so every request of a member
    concerns data an artifact of that version was trained on — also one that landed while the
    model was fitting, after its data was loaded but before its artifact was committed. (It
    used to be compared with the artifact's commit time, which missed exactly those.)
    """
    if not events:
        return None
    times = [events[int(k)] for k in keys[np.isin(keys, members)]]
    return min(times) if times else None


def _due(policy: Policy, deleted: float | None, withdrawn: float | None) -> float | None:
    """When an artifact trained on a person must be replaced: ``retrain_within_days`` after
    their first deletion request or consent withdrawal (``None``: no retrain due)."""
    within = policy.deletion.retrain_within_days
    after = [t for t in (deleted, withdrawn) if t is not None]
    return None if within is None or not after else min(after) + within * 86400.0


def _marks(n: int, points: int) -> list[int]:
    """Indices of at most ``points`` of ``n`` charges: every ``step``-th (a power of two) and the last."""
    if n <= points:
        return list(range(n))
    step = 1 << max(0, math.ceil(math.log2(n / max(points - 1, 1))))
    return [*range(step - 1, n - 1, step), n - 1]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _artifact_record(r: Any, charge_ids: tuple[int, ...]) -> ArtifactRecord:
    return ArtifactRecord(
        id=r.id,
        dataset=r.dataset_name,
        file_hash=r.file_hash,
        path=r.path,
        model_kind=r.model_kind,
        config=json.loads(r.config_json),
        privrec_version=r.privrec_version,
        git_commit=r.git_commit,
        guarantee=json.loads(r.guarantee_json),
        seeded_noise=bool(r.seeded_noise),
        version_id=r.version_id,
        dataset_hash=r.dataset_hash,
        created_at=r.created_at,
        created_by=r.created_by,
        charge_ids=charge_ids,
        signer=r.signer,
    )
