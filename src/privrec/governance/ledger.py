"""The privacy ledger: datasets, budgets, write-ahead charges, artifacts, consents, deletions, keys.

Every method checks the caller's role first, validates its input, and then performs its writes
and their audit-log row in **one** serialised transaction (:func:`~privrec.governance.db.write_transaction`),
so a refused or failed action leaves the database as it was.

Write-ahead charging: :meth:`Ledger.reserve` composes the scope's reserved and committed
charges with the new events (dp-accounting, at each budget's δ), refuses with
:class:`~privrec.errors.BudgetExceededError` if any cap would be passed, and otherwise inserts the
charge as ``reserved`` — all before any noise is drawn. :meth:`Ledger.commit` marks it
``committed`` once the artifact is written. A reserved charge counts exactly like a committed
one, so a process killed at any point after reserving never under-reports; only
:meth:`Ledger.abort` (before any noise was drawn) releases it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from privrec.data.interactions import Interactions
from privrec.errors import (
    AuthenticationError,
    BudgetExceededError,
    GovernanceError,
    PolicyViolation,
    UnknownDatasetError,
)
from privrec.governance import audit
from privrec.governance import schema as tbl
from privrec.governance.auth import (
    Principal,
    Role,
    hash_secret,
    new_key,
    parse_key,
    require,
    scrypt_params,
    verify_secret,
)
from privrec.governance.composition import ChargeEvents, composed_epsilon
from privrec.governance.db import (
    check_schema,
    create_ledger_engine,
    digest_hex,
    read_transaction,
    resolve_url,
    upgrade,
    user_digests,
    write_transaction,
)
from privrec.governance.policy import Policy, PolicyReport, apply_policy, content_hash
from privrec.governance.reading import LedgerBase, file_sha256
from privrec.governance.records import BudgetStatus, ChargeInfo, DatasetInfo, GovernedData
from privrec.privacy.events import SpentEvent
from privrec.privacy.units import PrivacyUnit

__all__ = ["API_KEY_ENV", "Ledger", "file_sha256"]

API_KEY_ENV = "PRIVREC_API_KEY"
SCOPES = ("dataset", "analyst", "purpose")
_VERIFIED: dict[tuple[str, str], str] = {}  # (url, sha256(key)) -> stored scrypt hash


def _now() -> float:
    return time.time()


class Ledger(LedgerBase):
    """A connection to the ledger acting as one authenticated principal.

    Make one with :meth:`init` (a new ledger and its first owner) or :meth:`connect` (an API
    key). See ``docs/governance.md`` for the model and a worked example.
    """

    # ------------------------------------------------------------------ opening
    @classmethod
    def init(cls, url: str | Path | None = None, *, owner: str = "owner") -> tuple[Ledger, str]:
        """Create (or migrate) the schema and, on an empty ledger, the first owner and their key.

        Returns the ledger acting as that owner and the owner's API key (shown once, stored
        only as a scrypt hash). On an already initialised ledger raises :class:`GovernanceError`.
        """
        resolved = resolve_url(url)
        engine = create_ledger_engine(resolved)
        upgrade(engine)
        full, key_id, secret = new_key()
        salt = secrets.token_bytes(16)
        hashed = hash_secret(secret, salt)
        now = _now()
        with write_transaction(engine) as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(tbl.Principal)).scalar_one():
                raise GovernanceError(
                    "this ledger is already initialised; ask its owner for a key "
                    "(`privrec keys create NAME --role ROLE`)"
                )
            conn.execute(
                sa.insert(tbl.Meta).values(
                    [
                        {"key": "user_key", "value": secrets.token_hex(32)},
                        {
                            "key": "audit_head",
                            "value": audit.canonical_json({"seq": 0, "hash": audit.GENESIS}),
                        },
                        {"key": "created_at", "value": repr(now)},
                    ]
                )
            )
            pid = conn.execute(
                sa.insert(tbl.Principal)
                .values(
                    name=owner,
                    role=Role.OWNER.value,
                    created_at=now,
                    created_by=owner,
                    disabled=False,
                )
                .returning(tbl.Principal.id)
            ).scalar_one()
            kid = cls._insert_key(conn, pid, key_id, salt, hashed, now)
            audit.append(
                conn,
                at=now,
                actor=owner,
                action="ledger.init",
                payload={"owner": owner, "key_id": key_id},
                rows={"principals": [pid], "api_keys": [kid]},
            )
        return cls(engine, resolved, Principal(owner, Role.OWNER)), full

    @classmethod
    def connect(cls, url: str | Path | None = None, api_key: str | None = None) -> Ledger:
        """Open an initialised ledger as the principal holding ``api_key`` (or ``$PRIVREC_API_KEY``)."""
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key:
            raise AuthenticationError(f"no API key: pass one (--key) or set ${API_KEY_ENV}")
        resolved = resolve_url(url)
        engine = create_ledger_engine(resolved)
        key_id, secret = parse_key(key)
        with read_transaction(engine) as conn:
            check_schema(conn, resolved)
            row = conn.execute(
                sa.select(
                    tbl.ApiKey, tbl.Principal.name, tbl.Principal.role, tbl.Principal.disabled
                )
                .join(tbl.Principal, tbl.Principal.id == tbl.ApiKey.principal_id)
                .where(tbl.ApiKey.key_id == key_id)
            ).first()
        if row is None or row.revoked_at is not None or row.disabled:
            raise AuthenticationError("unknown or revoked API key")
        cache_key = (resolved, hashlib.sha256(key.encode()).hexdigest())
        if _VERIFIED.get(cache_key) != row.hash:
            if not verify_secret(secret, row.salt, row.hash):
                raise AuthenticationError("unknown or revoked API key")
            _VERIFIED[cache_key] = row.hash
        return cls(engine, resolved, Principal(row.name, Role(row.role)))

    @staticmethod
    def _insert_key(
        conn: Connection, principal_id: int, key_id: str, salt: bytes, hashed: str, now: float
    ) -> int:
        return int(
            conn.execute(
                sa.insert(tbl.ApiKey)
                .values(
                    key_id=key_id,
                    principal_id=principal_id,
                    salt=salt.hex(),
                    hash=hashed,
                    params=scrypt_params(),
                    created_at=now,
                    revoked_at=None,
                )
                .returning(tbl.ApiKey.id)
            ).scalar_one()
        )

    # ------------------------------------------------------------------ keys and roles (owner)
    def create_key(self, name: str, role: str | Role | None = None) -> str:
        """A new API key for ``name`` (created with ``role`` if new). Returns the key, shown once."""
        require(self.principal, "manage", "creating keys")
        if not name or len(name) > 128 or not name.isprintable():
            raise GovernanceError(f"invalid principal name {name!r}")
        wanted = None if role is None else Role.parse(str(role))
        full, key_id, secret = new_key()
        salt = secrets.token_bytes(16)
        hashed = hash_secret(secret, salt)
        now = _now()
        with write_transaction(self.engine) as conn:
            row = conn.execute(sa.select(tbl.Principal).where(tbl.Principal.name == name)).first()
            touched: dict[str, list[int]] = {}
            if row is None:
                if wanted is None:
                    raise GovernanceError(f"{name!r} is new: give a role (owner, analyst, auditor)")
                pid = conn.execute(
                    sa.insert(tbl.Principal)
                    .values(
                        name=name,
                        role=wanted.value,
                        created_at=now,
                        created_by=self.actor,
                        disabled=False,
                    )
                    .returning(tbl.Principal.id)
                ).scalar_one()
                touched["principals"] = [pid]
            else:
                pid = row.id
                if wanted is not None and wanted.value != row.role:
                    raise GovernanceError(
                        f"{name!r} already has the role {row.role}; roles do not change silently "
                        "(create a new principal)"
                    )
            kid = self._insert_key(conn, pid, key_id, salt, hashed, now)
            touched["api_keys"] = [kid]
            self._log(conn, "key.create", {"principal": name, "key_id": key_id}, touched, now)
        return full

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key by its id (the part after ``prk_``); the principal keeps its history."""
        require(self.principal, "manage", "revoking keys")
        now = _now()
        with write_transaction(self.engine) as conn:
            row = conn.execute(sa.select(tbl.ApiKey).where(tbl.ApiKey.key_id == key_id)).first()
            if row is None:
                raise UnknownDatasetError(f"unknown key id {key_id!r}")
            if row.revoked_at is not None:
                raise GovernanceError(f"key {key_id} was already revoked")
            conn.execute(
                sa.update(tbl.ApiKey).where(tbl.ApiKey.id == row.id).values(revoked_at=now)
            )
            self._log(conn, "key.revoke", {"key_id": key_id}, {"api_keys": [row.id]}, now)

    def keys(self) -> list[dict[str, Any]]:
        """Every key (id, principal, role, created, revoked) — never secrets or hashes."""
        require(self.principal, "read_all", "listing keys")
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                sa.select(
                    tbl.ApiKey.key_id,
                    tbl.Principal.name,
                    tbl.Principal.role,
                    tbl.ApiKey.created_at,
                    tbl.ApiKey.revoked_at,
                )
                .join(tbl.Principal, tbl.Principal.id == tbl.ApiKey.principal_id)
                .order_by(tbl.ApiKey.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    # ------------------------------------------------------------------ datasets, policy, budgets (owner)
    def set_policy(self, dataset: str, policy: Policy) -> DatasetInfo:
        """Register ``dataset`` under ``policy`` (or replace its policy); sets the dataset budget too."""
        require(self.principal, "manage", "setting a policy")
        if not dataset or len(dataset) > 128 or not dataset.isprintable():
            raise GovernanceError(f"invalid dataset name {dataset!r}")
        now = _now()
        with write_transaction(self.engine) as conn:
            row = conn.execute(sa.select(tbl.Dataset).where(tbl.Dataset.name == dataset)).first()
            if row is None:
                did = conn.execute(
                    sa.insert(tbl.Dataset)
                    .values(
                        name=dataset,
                        unit=policy.unit.value,
                        policy_json=policy.canonical(),
                        policy_hash=policy.digest(),
                        epoch=0,
                        created_at=now,
                        created_by=self.actor,
                    )
                    .returning(tbl.Dataset.id)
                ).scalar_one()
            else:
                did = row.id
                if row.unit != policy.unit.value and self._has_charges(conn, did):
                    raise PolicyViolation(
                        f"dataset {dataset!r} was charged under the {row.unit} unit; its unit cannot "
                        "change (register the data under a new name)"
                    )
                conn.execute(
                    sa.update(tbl.Dataset)
                    .where(tbl.Dataset.id == did)
                    .values(
                        unit=policy.unit.value,
                        policy_json=policy.canonical(),
                        policy_hash=policy.digest(),
                        epoch=row.epoch + 1,
                    )
                )
            b = policy.budget
            bid = self._upsert_budget(
                conn, did, "dataset", "", b.epsilon, b.delta, b.period_days, b.accountant, now
            )
            self._log(
                conn,
                "policy.set",
                {"dataset": dataset, "policy": json.loads(policy.canonical())},
                {"datasets": [did], "budgets": [bid]},
                now,
            )
        return self.dataset(dataset)

    def _has_charges(self, conn: Connection, dataset_id: int) -> bool:
        return bool(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(tbl.Charge)
                .where(tbl.Charge.dataset_id == dataset_id)
            ).scalar_one()
        )

    def _upsert_budget(
        self,
        conn: Connection,
        dataset_id: int,
        scope: str,
        value: str,
        epsilon: float,
        delta: float,
        period_days: float | None,
        accountant: str,
        now: float,
    ) -> int:
        row = conn.execute(
            sa.select(tbl.Budget.id).where(
                tbl.Budget.dataset_id == dataset_id,
                tbl.Budget.scope == scope,
                tbl.Budget.scope_value == value,
            )
        ).first()
        values = {
            "epsilon": float(epsilon),
            "delta": float(delta),
            "period_days": None if period_days is None else float(period_days),
            "accountant": accountant,
            "updated_at": now,
            "updated_by": self.actor,
        }
        if row is None:
            return int(
                conn.execute(
                    sa.insert(tbl.Budget)
                    .values(dataset_id=dataset_id, scope=scope, scope_value=value, **values)
                    .returning(tbl.Budget.id)
                ).scalar_one()
            )
        conn.execute(sa.update(tbl.Budget).where(tbl.Budget.id == row.id).values(**values))
        return int(row.id)

    def set_budget(
        self,
        dataset: str,
        *,
        epsilon: float,
        delta: float,
        scope: str = "dataset",
        value: str = "",
        period_days: float | None = None,
        accountant: str = "pld",
    ) -> BudgetStatus:
        """Set an (ε, δ) cap for the whole dataset, one analyst (``value`` = name) or one purpose."""
        require(self.principal, "manage", "setting budgets")
        import pydantic

        from privrec.governance.policy import BudgetRule

        if scope not in SCOPES:
            raise GovernanceError(
                f"unknown budget scope {scope!r}; choose dataset, analyst or purpose"
            )
        if (scope == "dataset") != (value == ""):
            raise GovernanceError(
                "a dataset budget takes no value; analyst and purpose budgets name one"
            )
        try:
            BudgetRule(epsilon=epsilon, delta=delta, period_days=period_days, accountant=accountant)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            raise GovernanceError(
                f"invalid budget: {'.'.join(map(str, err['loc']))}: {err['msg']} (found {err.get('input')!r})"
            ) from None
        now = _now()
        with write_transaction(self.engine) as conn:
            ds = self._dataset(conn, dataset)
            bid = self._upsert_budget(
                conn, ds.id, scope, value, epsilon, delta, period_days, accountant, now
            )
            self._log(
                conn,
                "budget.set",
                {
                    "dataset": dataset,
                    "scope": scope,
                    "value": value,
                    "epsilon": epsilon,
                    "delta": delta,
                    "period_days": period_days,
                    "accountant": accountant,
                },
                {"budgets": [bid]},
                now,
            )
        return next(s for s in self.status(dataset) if s.scope == scope and s.scope_value == value)

    # ------------------------------------------------------------------ consent and deletion (owner)
    def import_consents(
        self, dataset: str, records: Iterable[tuple[Any, bool]], *, source: str = ""
    ) -> dict[str, int]:
        """Record consents (``(user id, granted)``; later records win). Returns counts."""
        require(self.principal, "manage", "importing consents")
        recs = list(records)
        now = _now()
        with write_transaction(self.engine) as conn:
            ds = self._dataset(conn, dataset)
            key = self._user_key(conn)
            digests = user_digests(key, [u for u, _ in recs])
            first = None
            last = None
            if recs:
                rows = [
                    {
                        "dataset_id": ds.id,
                        "user_hash": digest_hex(d),
                        "granted": bool(g),
                        "recorded_at": now,
                        "source": source[:500],
                    }
                    for d, (_, g) in zip(digests, recs, strict=True)
                ]
                ids = (
                    conn.execute(sa.insert(tbl.Consent).returning(tbl.Consent.id), rows)
                    .scalars()
                    .all()
                )
                first, last = min(ids), max(ids)
            conn.execute(
                sa.update(tbl.Dataset).where(tbl.Dataset.id == ds.id).values(epoch=ds.epoch + 1)
            )
            granted = sum(1 for _, g in recs if g)
            counts = {"records": len(recs), "granted": granted, "revoked": len(recs) - granted}
            payload: dict[str, Any] = {"dataset": dataset, "source": source[:500], **counts}
            if first is not None and last is not None:
                payload["consent_batch"] = {
                    "first_id": first,
                    "last_id": last,
                    "digest": audit.consent_digest(conn, first, last),
                }
            self._log(conn, "consent.import", payload, {"datasets": [ds.id]}, now)
        return counts

    def forget(self, dataset: str, user: Any, *, reason: str = "") -> int:
        """Record a deletion request: every later load of ``dataset`` drops ``user``. Returns its id."""
        require(self.principal, "manage", "recording deletion requests")
        now = _now()
        with write_transaction(self.engine) as conn:
            ds = self._dataset(conn, dataset)
            h = digest_hex(user_digests(self._user_key(conn), [user])[0])
            did = conn.execute(
                sa.insert(tbl.Deletion)
                .values(
                    dataset_id=ds.id,
                    user_hash=h,
                    requested_at=now,
                    requested_by=self.actor,
                    reason=reason[:500],
                )
                .returning(tbl.Deletion.id)
            ).scalar_one()
            conn.execute(
                sa.update(tbl.Dataset).where(tbl.Dataset.id == ds.id).values(epoch=ds.epoch + 1)
            )
            self._log(
                conn,
                "deletion.request",
                {"dataset": dataset, "user_hash": h, "reason": reason[:500]},
                {"deletions": [did], "datasets": [ds.id]},
                now,
            )
        return int(did)

    # ------------------------------------------------------------------ loading through the policy (analyst)
    def load(
        self, dataset: str, data: Interactions | str | Path, *, format: str | None = None
    ) -> GovernedData:
        """Apply ``dataset``'s policy to ``data`` (a file or :class:`Interactions`) and register the version.

        This is the one door from raw data to training: the result carries the policy's
        counts-only report, and :meth:`train` accepts nothing else.
        """
        require(self.principal, "spend", "loading data for training")
        if not isinstance(data, Interactions):
            from privrec.data import load as load_file

            data = load_file(data, format=format)
        for _attempt in range(5):
            with read_transaction(self.engine) as conn:
                ds = self._dataset(conn, dataset)
                key = self._user_key(conn)
                deleted = np.array(
                    [
                        int(h, 16)
                        for h in conn.execute(
                            sa.select(tbl.Deletion.user_hash).where(
                                tbl.Deletion.dataset_id == ds.id
                            )
                        ).scalars()
                    ],
                    dtype=np.uint64,
                )
                policy = Policy.from_json(ds.policy_json)
                consented = None
                if policy.consent.required:
                    consented = self._consented(conn, ds.id, policy, key)
            digests = user_digests(key, data.user_ids)
            out, report = apply_policy(
                data, policy, user_digests=digests, deleted=deleted, consented=consented, now=_now()
            )
            h = content_hash(out)
            members = (
                np.sort(digests[np.isin(data.user_ids, out.user_ids)])
                if out.n_users
                else np.zeros(0, np.uint64)
            )
            now = _now()
            with write_transaction(self.engine) as conn:
                current = self._dataset(conn, dataset)
                if current.epoch != ds.epoch:
                    continue  # a deletion, consent import or policy change landed meanwhile: redo
                vid = conn.execute(
                    sa.insert(tbl.DatasetVersion)
                    .values(
                        dataset_id=ds.id,
                        content_hash=h,
                        policy_hash=ds.policy_hash,
                        epoch=ds.epoch,
                        n_users=out.n_users,
                        n_items=out.n_items,
                        nnz=out.nnz,
                        report_json=report.model_dump_json(),
                        members=members.astype("<u8").tobytes(),
                        created_at=now,
                        created_by=self.actor,
                    )
                    .returning(tbl.DatasetVersion.id)
                ).scalar_one()
                self._log(
                    conn,
                    "dataset.load",
                    {
                        "dataset": dataset,
                        "version": vid,
                        "content_hash": h,
                        "report": report.model_dump(mode="json"),
                    },
                    {"dataset_versions": [vid]},
                    now,
                )
            return GovernedData(dataset, int(vid), h, int(ds.epoch), out, report)
        raise GovernanceError(f"dataset {dataset!r} kept changing while loading; try again")

    def _consented(
        self, conn: Connection, dataset_id: int, policy: Policy, key: bytes
    ) -> np.ndarray:
        src = policy.consent.source
        latest: dict[str, bool] = {}
        if src == "ledger":
            rows = conn.execute(
                sa.select(tbl.Consent.user_hash, tbl.Consent.granted)
                .where(tbl.Consent.dataset_id == dataset_id)
                .order_by(tbl.Consent.id)
            )
            for h, g in rows:
                latest[h] = bool(g)
            return np.array([int(h, 16) for h, g in latest.items() if g], dtype=np.uint64)
        from privrec.governance.policy import read_consents

        recs = read_consents(src)
        granted: dict[str, bool] = {}
        for u, g in recs:
            granted[u] = g
        return user_digests(key, [u for u, g in granted.items() if g])

    def check_policy(self, dataset: str, data: Interactions) -> PolicyReport:
        """What :meth:`load` would keep and drop (counts only), without registering anything."""
        require(self.principal, "read_own", "checking a policy")
        policy, key, deleted, consented = self._policy_inputs(dataset)
        _, report = apply_policy(
            data,
            policy,
            user_digests=user_digests(key, data.user_ids),
            deleted=deleted,
            consented=consented,
            now=_now(),
        )
        return report

    def policy_inputs(self, dataset: str) -> tuple[Policy, bytes, np.ndarray, np.ndarray | None]:
        """What :func:`apply_policy` needs besides the data: the policy, the user-hash key, and the
        hashes of deleted and of consenting users.

        For trainings that filter the data where it lies (the workers of :mod:`privrec.engine`
        apply the policy to their own users); needs the right to spend, as :meth:`load` does,
        because the key lets its holder hash user ids the way the ledger does.
        """
        require(self.principal, "spend", "loading data for training")
        return self._policy_inputs(dataset)

    def _policy_inputs(self, dataset: str) -> tuple[Policy, bytes, np.ndarray, np.ndarray | None]:
        with read_transaction(self.engine) as conn:
            ds = self._dataset(conn, dataset)
            key = self._user_key(conn)
            deleted = np.array(
                [
                    int(h, 16)
                    for h in conn.execute(
                        sa.select(tbl.Deletion.user_hash).where(tbl.Deletion.dataset_id == ds.id)
                    ).scalars()
                ],
                dtype=np.uint64,
            )
            policy = Policy.from_json(ds.policy_json)
            consented = (
                self._consented(conn, ds.id, policy, key) if policy.consent.required else None
            )
        return policy, key, deleted, consented

    # ------------------------------------------------------------------ charging (analyst)
    def reserve(
        self,
        dataset: str,
        events: Sequence[SpentEvent] | Sequence[dict[str, Any]],
        *,
        purpose: str | None = None,
        kind: str = "query",
        description: str = "",
        data: GovernedData | None = None,
        idempotency_key: str | None = None,
        accountant: str | None = None,
    ) -> ChargeInfo:
        """Reserve a charge for ``events`` before any noise is drawn (write-ahead).

        Checks, in one serialised transaction, that the composition of the scope's reserved and
        committed charges with these events stays within every applicable budget — the dataset's,
        the analyst's and the purpose's — and inserts the charge as ``reserved``. Raises
        :class:`~privrec.errors.BudgetExceededError` (nothing written) otherwise.

        With ``idempotency_key``, a repeated call by the same analyst returns the existing charge
        (``replayed=True``, with its stored ``result``) and charges nothing. The repeat must be
        the same request — same dataset, events and ``description`` (a query service puts the
        canonical request there) — or it is refused as a different request.

        ``accountant="rdp"`` marks events proven only in Rényi DP (distributed discrete noise,
        cross-silo releases): the scope is then composed with RDP (see
        :mod:`privrec.governance.composition`).
        """
        require(self.principal, "spend", "charging a budget")
        ce = ChargeEvents(events, accountant=accountant)
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 128):
            raise GovernanceError("idempotency keys are 1-128 characters")
        now = _now()
        with write_transaction(self.engine) as conn:
            ds = self._dataset(conn, dataset)
            policy = Policy.from_json(ds.policy_json)
            use = purpose if purpose is not None else policy.purpose
            if idempotency_key is not None:
                old = conn.execute(
                    sa.select(tbl.Charge).where(
                        tbl.Charge.actor == self.actor,
                        tbl.Charge.idempotency_key == idempotency_key,
                    )
                ).first()
                if old is not None:
                    if (
                        old.events_json != ce.json
                        or old.dataset_id != ds.id
                        or old.description != description[:2000]
                    ):
                        raise GovernanceError(
                            f"idempotency key {idempotency_key!r} was used for a different request"
                        )
                    return ChargeInfo.from_row(old, dataset, replayed=True)
            if data is not None:
                self._check_version(conn, ds, data)
            unit = PrivacyUnit(ds.unit)
            budgets = self._applicable_budgets(conn, ds.id, use)
            dataset_budget = next((b for b in budgets if b.scope == "dataset"), None)
            if dataset_budget is None:
                raise PolicyViolation(f"dataset {dataset!r} has no budget; its owner must set one")
            own = ce.epsilon(dataset_budget.delta, dataset_budget.accountant, unit)
            for b in budgets:
                rate, grouped = self._spent_terms(conn, ds.id, b, now)
                new_grouped = list(grouped)
                new_rate = rate
                if ce.gaussian_rate is not None:
                    new_rate += ce.gaussian_rate
                else:
                    new_grouped.append((ce.json, 1))
                after = composed_epsilon(new_rate, new_grouped, b.delta, b.accountant, unit)
                if not after <= b.epsilon * (1 + 1e-12):
                    before = composed_epsilon(rate, grouped, b.delta, b.accountant, unit)
                    alone = (
                        own
                        if b.delta == dataset_budget.delta
                        else ce.epsilon(b.delta, b.accountant, unit)
                    )
                    raise BudgetExceededError(
                        self._scope_label(dataset, b),
                        remaining=b.epsilon - before,
                        requested=alone,
                        cap=b.epsilon,
                    )
            cid = conn.execute(
                sa.insert(tbl.Charge)
                .values(
                    dataset_id=ds.id,
                    version_id=None if data is None else data.version_id,
                    actor=self.actor,
                    purpose=use,
                    kind=kind[:32],
                    description=description[:2000],
                    events_json=ce.json,
                    gaussian_rate=ce.gaussian_rate,
                    epsilon=own,
                    status="reserved",
                    idempotency_key=idempotency_key,
                    result_json=None,
                    artifact_id=None,
                    note="",
                    created_at=now,
                    updated_at=now,
                )
                .returning(tbl.Charge.id)
            ).scalar_one()
            self._log(
                conn,
                "charge.reserve",
                {"dataset": dataset, "charge": cid, "purpose": use, "kind": kind, "epsilon": own},
                {"charges": [cid]},
                now,
            )
            row = conn.execute(sa.select(tbl.Charge).where(tbl.Charge.id == cid)).one()
        return ChargeInfo.from_row(row, dataset)

    def _check_version(self, conn: Connection, ds: Any, data: GovernedData) -> None:
        if not isinstance(data, GovernedData):
            raise PolicyViolation(
                "this data did not pass through the dataset's policy (use ledger.load)"
            )
        v = conn.execute(
            sa.select(tbl.DatasetVersion).where(tbl.DatasetVersion.id == data.version_id)
        ).first()
        if v is None or v.dataset_id != ds.id or v.content_hash != data.content_hash:
            raise PolicyViolation(
                f"this data was not loaded through dataset {ds.name!r}'s policy (unknown version)"
            )
        if v.epoch != ds.epoch:
            raise PolicyViolation(
                f"dataset {ds.name!r} changed since this data was loaded (deletion requests, consents "
                "or policy): load it again so the change applies"
            )

    def _applicable_budgets(self, conn: Connection, dataset_id: int, purpose: str) -> list[Any]:
        return list(
            conn.execute(
                sa.select(tbl.Budget).where(
                    tbl.Budget.dataset_id == dataset_id,
                    sa.or_(
                        tbl.Budget.scope == "dataset",
                        sa.and_(
                            tbl.Budget.scope == "analyst", tbl.Budget.scope_value == self.actor
                        ),
                        sa.and_(tbl.Budget.scope == "purpose", tbl.Budget.scope_value == purpose),
                    ),
                )
            ).all()
        )

    def commit(
        self,
        charge: ChargeInfo | int,
        *,
        artifact: dict[str, Any] | None = None,
        result: Any = None,
        note: str = "",
    ) -> ChargeInfo:
        """Mark a reserved charge committed (its output was released), recording the artifact or result.

        ``artifact`` is what :func:`privrec.governance.training.artifact_info` returns;
        ``result`` is any JSON-serialisable released answer (kept for idempotent replays).
        """
        require(self.principal, "spend", "committing a charge")
        cid = charge if isinstance(charge, int) else charge.id
        now = _now()
        result_json = None if result is None else json.dumps(result, sort_keys=True, default=float)
        with write_transaction(self.engine) as conn:
            row = self._own_charge(conn, cid)
            if row.status == "committed":
                return ChargeInfo.from_row(row, self._dataset_name(conn, row.dataset_id))
            if row.status != "reserved":
                raise GovernanceError(
                    f"charge {cid} is {row.status}; only a reserved charge can be committed"
                )
            touched: dict[str, list[int]] = {"charges": [cid]}
            art_id = None
            if artifact is not None:
                art_id = conn.execute(
                    sa.insert(tbl.Artifact)
                    .values(
                        dataset_id=row.dataset_id,
                        version_id=row.version_id,
                        created_at=now,
                        created_by=self.actor,
                        **artifact,
                    )
                    .returning(tbl.Artifact.id)
                ).scalar_one()
                touched["artifacts"] = [art_id]
            conn.execute(
                sa.update(tbl.Charge)
                .where(tbl.Charge.id == cid)
                .values(
                    status="committed",
                    artifact_id=art_id,
                    result_json=result_json,
                    updated_at=now,
                    note=note[:2000],
                )
            )
            self._log(
                conn,
                "charge.commit",
                {
                    "charge": cid,
                    "artifact": art_id,
                    "file_hash": None if artifact is None else artifact["file_hash"],
                },
                touched,
                now,
            )
            out = conn.execute(sa.select(tbl.Charge).where(tbl.Charge.id == cid)).one()
            name = self._dataset_name(conn, out.dataset_id)
        return ChargeInfo.from_row(out, name)

    def abort(self, charge: ChargeInfo | int, *, reason: str) -> ChargeInfo:
        """Release a reservation whose computation stopped **before any noise was drawn**.

        Aborting a charge whose noisy output may have left the process would under-report; the
        training wrapper never does it once the write-ahead gate has opened.
        """
        require(self.principal, "spend", "aborting a charge")
        cid = charge if isinstance(charge, int) else charge.id
        now = _now()
        with write_transaction(self.engine) as conn:
            row = self._own_charge(conn, cid)
            if row.status != "reserved":
                raise GovernanceError(
                    f"charge {cid} is {row.status}; only a reserved charge can be aborted"
                )
            conn.execute(
                sa.update(tbl.Charge)
                .where(tbl.Charge.id == cid)
                .values(status="aborted", updated_at=now, note=reason[:2000])
            )
            self._log(
                conn,
                "charge.abort",
                {"charge": cid, "reason": reason[:500]},
                {"charges": [cid]},
                now,
            )
            out = conn.execute(sa.select(tbl.Charge).where(tbl.Charge.id == cid)).one()
            name = self._dataset_name(conn, out.dataset_id)
        return ChargeInfo.from_row(out, name)

    def _own_charge(self, conn: Connection, cid: int) -> Any:
        row = conn.execute(sa.select(tbl.Charge).where(tbl.Charge.id == cid)).first()
        if row is None:
            raise UnknownDatasetError(f"unknown charge {cid}")
        if row.actor != self.actor:
            raise GovernanceError(f"charge {cid} belongs to {row.actor}, not {self.actor}")
        return row

    def note(self, charge: ChargeInfo | int, text: str) -> None:
        """Attach a note to one's own reserved charge (e.g. why it stays reserved after a failure)."""
        require(self.principal, "spend", "annotating a charge")
        cid = charge if isinstance(charge, int) else charge.id
        now = _now()
        with write_transaction(self.engine) as conn:
            self._own_charge(conn, cid)
            conn.execute(
                sa.update(tbl.Charge)
                .where(tbl.Charge.id == cid)
                .values(note=text[:2000], updated_at=now)
            )
            self._log(
                conn, "charge.note", {"charge": cid, "note": text[:500]}, {"charges": [cid]}, now
            )

    def train(self, model: Any, data: GovernedData, **kwargs: Any) -> Any:
        """Train ``model`` on governed data through a write-ahead charge; see :func:`~privrec.governance.training.train`."""
        from privrec.governance.training import train

        return train(self, model, data, **kwargs)
