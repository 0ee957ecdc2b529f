"""The privacy ledger: datasets, budgets, write-ahead charges, artifacts, consents, deletions, keys.

Every method checks the caller's role first, validates its input, and then performs its writes
and their audit-log row in **one** serialised transaction (:func:`~privrec.governance.db.write_transaction`),
so a refused or failed action leaves the database as it was.

Write-ahead charging: :meth:`Ledger.reserve` checks every applicable budget and records the
charge as ``reserved`` before any noise is drawn, :meth:`Ledger.commit` marks it ``committed``
once the output is released; a reserved charge counts like a committed one, so a crash never
under-reports (details in :mod:`privrec.governance.charging`).

:class:`Ledger` is assembled from parts, one responsibility each: opening, keys, policies and
budgets here (the owner's administration); consents, deletions and loading data through the
policy in :mod:`privrec.governance.intake`; charging in :mod:`privrec.governance.charging`;
the read-only queries in :mod:`privrec.governance.reading`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from privrec.errors import (
    AuthenticationError,
    GovernanceError,
    PolicyViolation,
    PrivacyWarning,
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
from privrec.governance.charging import LedgerCharging
from privrec.governance.db import (
    check_schema,
    create_ledger_engine,
    create_private_sqlite_file,
    open_error,
    read_transaction,
    require_existing,
    resolve_url,
    upgrade,
    write_transaction,
)
from privrec.governance.intake import LedgerIntake
from privrec.governance.policy import Policy
from privrec.governance.reading import file_sha256, ledger_clock
from privrec.governance.records import BudgetStatus, DatasetInfo, GovernedData
from privrec.governance.userkey import new_user_key

__all__ = ["API_KEY_ENV", "Ledger", "file_sha256"]

API_KEY_ENV = "PRIVREC_API_KEY"
SCOPES = ("dataset", "analyst", "purpose")
_VERIFIED: dict[tuple[str, str], str] = {}  # (url, sha256(key)) -> stored scrypt hash


class Ledger(LedgerCharging, LedgerIntake):
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
        stored_key, user_key = new_user_key()  # a malformed $PRIVREC_USER_KEY: before any write
        create_private_sqlite_file(resolved)  # a new file: mode 600 before SQLite creates it
        engine = create_ledger_engine(resolved)
        upgrade(engine)
        full, key_id, secret = new_key()
        salt = secrets.token_bytes(16)
        hashed = hash_secret(secret, salt)
        now = ledger_clock(engine)
        with write_transaction(engine) as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(tbl.Principal)).scalar_one():
                raise GovernanceError(
                    "this ledger is already initialised; ask its owner for a key "
                    "(`privrec keys create NAME --role ROLE`)"
                )
            conn.execute(
                sa.insert(tbl.Meta).values(
                    [
                        # the key itself, or only its fingerprint when it is kept outside
                        {"key": "user_key", "value": stored_key},
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
                # the user-hash key's fingerprint: replacing the key would silently cancel every
                # deletion request and consent (their hashes would no longer match anyone)
                payload={
                    "owner": owner,
                    "key_id": key_id,
                    "user_key_sha256": audit.user_key_fingerprint(user_key),
                },
                rows={"principals": [pid], "api_keys": [kid]},
            )
        return cls(engine, resolved, Principal(owner, Role.OWNER), key_id=key_id), full

    @classmethod
    def connect(cls, url: str | Path | None = None, api_key: str | None = None) -> Ledger:
        """Open an initialised ledger as the principal holding ``api_key`` (or ``$PRIVREC_API_KEY``)."""
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key:
            raise AuthenticationError(f"no API key: pass one (--key) or set ${API_KEY_ENV}")
        resolved = resolve_url(url)
        key_id, secret = parse_key(key)
        require_existing(resolved)  # a mistyped path must not leave an empty database behind
        engine = create_ledger_engine(resolved)
        try:
            with read_transaction(engine) as conn:
                check_schema(conn, resolved)
                row = conn.execute(
                    sa.select(
                        tbl.ApiKey, tbl.Principal.name, tbl.Principal.role, tbl.Principal.disabled
                    )
                    .join(tbl.Principal, tbl.Principal.id == tbl.ApiKey.principal_id)
                    .where(tbl.ApiKey.key_id == key_id)
                ).first()
        except sa.exc.DBAPIError as exc:
            raise open_error(resolved, exc) from None
        if row is None or row.revoked_at is not None or row.disabled:
            raise AuthenticationError("unknown or revoked API key")
        cache_key = (resolved, hashlib.sha256(key.encode()).hexdigest())
        if _VERIFIED.get(cache_key) != row.hash:
            if not verify_secret(secret, row.salt, row.hash):
                raise AuthenticationError("unknown or revoked API key")
            _VERIFIED[cache_key] = row.hash
        return cls(engine, resolved, Principal(row.name, Role(row.role)), key_id=key_id)

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
        now = self.clock()
        with self._write() as conn:
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
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(sa.select(tbl.ApiKey).where(tbl.ApiKey.key_id == key_id)).first()
            if row is None:
                raise UnknownDatasetError(f"unknown key id {key_id!r}")
            if row.revoked_at is not None:
                raise GovernanceError(f"key {key_id} was already revoked")
            # never the last working owner key: nobody could then record a deletion request,
            # change a policy or create a key again (and `ledger init` refuses an initialised ledger)
            owner_keys = (
                conn.execute(
                    sa.select(tbl.ApiKey.id)
                    .join(tbl.Principal, tbl.Principal.id == tbl.ApiKey.principal_id)
                    .where(
                        tbl.Principal.role == Role.OWNER.value,
                        tbl.Principal.disabled.is_(False),
                        tbl.ApiKey.revoked_at.is_(None),
                    )
                )
                .scalars()
                .all()
            )
            if list(owner_keys) == [row.id]:
                raise GovernanceError(
                    "this is the ledger's last working owner key: create another owner key first"
                )
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
        if (
            not dataset.strip()
            or dataset != dataset.strip()  # "demo " beside "demo": two budgets for one dataset
            or len(dataset) > 128
            or not dataset.isprintable()
        ):
            raise GovernanceError(
                f"invalid dataset name {dataset!r} (printable, no leading or trailing spaces)"
            )
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(sa.select(tbl.Dataset).where(tbl.Dataset.name == dataset)).first()
            b = policy.budget
            self._warn_weak_cap(
                conn, None if row is None else row.id, policy.unit.value, b.epsilon, b.delta
            )
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
        if (scope == "dataset") != (value == "") or (value != "" and not value.strip()):
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
        now = self.clock()
        with self._write() as conn:
            ds = self._dataset(conn, dataset)
            self._warn_weak_cap(conn, ds.id, ds.unit, epsilon, delta)  # before writing
            old_period = conn.execute(
                sa.select(tbl.Budget.period_days).where(
                    tbl.Budget.dataset_id == ds.id,
                    tbl.Budget.scope == scope,
                    tbl.Budget.scope_value == value,
                )
            ).first()
            if old_period is not None and old_period[0] is None and period_days is not None:
                warnings.warn(
                    f"this replaces the scope's lifetime cap with a per-{period_days:g}-day one: "
                    "spending is then bounded per window only and the lifetime loss grows "
                    "without bound (one budget per scope — keep the lifetime cap on the dataset "
                    "and put per-period caps on purposes or analysts)",
                    PrivacyWarning,
                    stacklevel=2,
                )
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

    def train(self, model: Any, data: GovernedData, **kwargs: Any) -> Any:
        """Train ``model`` on governed data through a write-ahead charge; see :func:`~privrec.governance.training.train`."""
        from privrec.governance.training import train

        return train(self, model, data, **kwargs)
