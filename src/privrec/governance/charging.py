"""Write-ahead charging: reserve before any noise is drawn, commit once released, abort if never.

:meth:`LedgerCharging.reserve` composes the scope's reserved and committed charges with the new
events (dp-accounting, at each budget's δ), refuses with
:class:`~privrec.errors.BudgetExceededError` if any cap would be passed, and otherwise inserts the
charge as ``reserved`` — all before any noise is drawn. :meth:`LedgerCharging.commit` marks it
``committed`` once the artifact is written. A reserved charge counts exactly like a committed
one, so a process killed at any point after reserving never under-reports; only
:meth:`LedgerCharging.abort` (before any noise was drawn) releases it.

The composition (seconds for a large PLD) is computed on a read snapshot *before* the write
lock is taken, and reused under the lock only if the stored charges are unchanged: one analyst's
call never holds the ledger's writers (an owner's deletion request) while dp-accounting works.

Mixed into :class:`~privrec.governance.ledger.Ledger`; like every ledger action, each method
checks the caller's role, validates, and writes in one serialised transaction with its audit row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from privrec.errors import (
    BudgetExceededError,
    GovernanceError,
    PolicyViolation,
    StaleDataError,
    UnknownDatasetError,
)
from privrec.governance import schema as tbl
from privrec.governance.auth import require
from privrec.governance.composition import ChargeEvents, composed_epsilon
from privrec.governance.db import read_transaction
from privrec.governance.policy import Policy, check_retention, consent_file_digest
from privrec.governance.reading import LedgerBase
from privrec.governance.records import ChargeInfo, GovernedData, GovernedVersion, fmt_time
from privrec.privacy.events import SpentEvent
from privrec.privacy.units import PrivacyUnit

__all__ = ["LedgerCharging"]

#: Write transactions a reservation tries before it composes under the lock (the stored charges
#: changed between its accounting outside the lock and each attempt)
_LOCKED_ATTEMPTS = 3


class _RecomputeError(Exception):
    """Raised under the write lock when an ε is not memoised yet: leave, compute, come back."""


@dataclass(frozen=True)
class _Request:
    """One :meth:`LedgerCharging.reserve` call's arguments, checked."""

    dataset: str
    ce: ChargeEvents
    purpose: str | None
    description: str
    data: GovernedData | GovernedVersion | None
    idempotency_key: str | None
    now: float


@dataclass(frozen=True)
class _Plan:
    """What a reservation read from the ledger: the budgets and what each has spent."""

    dataset_id: int
    unit: PrivacyUnit
    use: str
    main: Any  # the dataset budget (the charge's own ε is stored at its δ)
    budgets: list[Any]
    terms: list[tuple[float, list[tuple[str, int]]]]


class LedgerCharging(LedgerBase):
    """Reserving, committing, aborting and annotating one's own charges (analyst)."""

    # ------------------------------------------------------------------ charging (analyst)
    def reserve(
        self,
        dataset: str,
        events: Sequence[SpentEvent] | Sequence[dict[str, Any]],
        *,
        purpose: str | None = None,
        kind: str = "query",
        description: str = "",
        data: GovernedData | GovernedVersion | None = None,
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
        now = self.clock()
        req = _Request(dataset, ce, purpose, description[:2000], data, idempotency_key, now)
        # Composing with dp-accounting can take seconds (a PLD of many non-Gaussian releases):
        # it runs first on a read snapshot, outside the write lock, so one analyst's call never
        # holds every other writer (an owner's deletion request) for that long. A refusal from
        # the snapshot is final (it is what the ledger said a moment ago); an acceptance is
        # decided again under the lock, where the memoised results are reused as long as the
        # stored charges did not change meanwhile.
        memo: dict[tuple[Any, ...], float] = {}
        with read_transaction(self.engine) as conn:
            self._check_authority(conn)
            found = self._plan(conn, req)
        if isinstance(found, ChargeInfo):
            return found
        plan = found
        self._account(req, plan, memo, compute=True)
        for attempt in range(_LOCKED_ATTEMPTS):
            try:
                with self._write() as conn:
                    found = self._plan(conn, req)
                    if isinstance(found, ChargeInfo):
                        return found
                    plan = found
                    # the last attempt computes under the lock rather than retry for ever
                    own = self._account(req, plan, memo, compute=attempt == _LOCKED_ATTEMPTS - 1)
                    return self._insert(conn, req, plan, kind, own)
            except _RecomputeError:  # nothing was written; compose the new state outside the lock
                self._account(req, plan, memo, compute=True)
        raise AssertionError("unreachable")  # pragma: no cover

    def _plan(self, conn: Connection, req: _Request) -> _Plan | ChargeInfo:
        """Everything a reservation checks on the ledger's rows, before any accounting: the
        existing charge of a replayed idempotency key, or the budgets and their spent terms."""
        ds = self._dataset(conn, req.dataset)
        policy = Policy.from_json(ds.policy_json)
        use = req.purpose if req.purpose is not None else policy.purpose
        if req.idempotency_key is not None:
            old = conn.execute(
                sa.select(tbl.Charge).where(
                    tbl.Charge.actor == self.actor,
                    tbl.Charge.idempotency_key == req.idempotency_key,
                )
            ).first()
            if old is not None:
                if (
                    old.events_json != req.ce.json
                    or old.dataset_id != ds.id
                    or old.description != req.description
                ):
                    raise GovernanceError(
                        f"idempotency key {req.idempotency_key!r} was used for a different request"
                    )
                if old.status == "reserved" and req.data is not None:
                    # not answered yet: the repeat will compute now, so on data still current
                    # (a deletion since the first attempt must stop it, as it stops a new charge)
                    self._check_version(conn, ds, req.data, req.now)
                return ChargeInfo.from_row(old, req.dataset, replayed=True)
        if req.data is not None:
            self._check_version(conn, ds, req.data, req.now)
        budgets, main = self._usable_budgets(conn, ds, policy, use)
        terms = [self._spent_terms(conn, ds.id, b, req.now) for b in budgets]
        return _Plan(int(ds.id), PrivacyUnit(ds.unit), use, main, budgets, terms)

    def check_use(self, dataset: str, purpose: str | None = None) -> None:
        """Refuse now what :meth:`reserve` would refuse for ``purpose`` whatever the events: an
        undeclared purpose, a dataset without a budget (:class:`~privrec.errors.PolicyViolation`).

        For callers that must do costly work before they can reserve (a service loading a
        dataset through its policy, which reads the whole file and records a version): a
        request refused for these reasons then costs none of it. Reads only.
        """
        require(self.principal, "spend", "charging a dataset")
        with read_transaction(self.engine) as conn:
            ds = self._dataset(conn, dataset)
            policy = Policy.from_json(ds.policy_json)
            self._usable_budgets(conn, ds, policy, policy.purpose if purpose is None else purpose)

    def _usable_budgets(
        self, conn: Connection, ds: Any, policy: Policy, use: str
    ) -> tuple[list[Any], Any]:
        """The budgets a charge for ``use`` draws on and the dataset's own among them, or a
        :class:`~privrec.errors.PolicyViolation` (the caller's purpose is not echoed: a service
        passes this text on)."""
        budgets = self._applicable_budgets(conn, ds.id, use)
        if use != policy.purpose and not any(b.scope == "purpose" for b in budgets):
            # purpose limitation: a free-text purpose would also slip past every purpose cap
            raise PolicyViolation(
                f"the purpose is not declared for dataset {ds.name!r}: use its policy's purpose "
                f"({policy.purpose!r}) or one its owner gave a purpose budget"
            )
        main = next((b for b in budgets if b.scope == "dataset"), None)
        if main is None:
            raise PolicyViolation(f"dataset {ds.name!r} has no budget; its owner must set one")
        return budgets, main

    def _account(
        self, req: _Request, plan: _Plan, memo: dict[tuple[Any, ...], float], *, compute: bool
    ) -> float:
        """The charge's own ε at the dataset budget's δ, after checking every budget's cap.

        Every ε comes from ``memo`` (keyed by exactly what it is computed from); a missing one
        is computed when ``compute``, else :class:`_RecomputeError` is raised (under the lock: leave
        it and compute outside). Raises :class:`~privrec.errors.BudgetExceededError`.
        """
        ce, unit = req.ce, plan.unit

        def eps(key: tuple[Any, ...], fn: Callable[[], float]) -> float:
            if key not in memo:
                if not compute:
                    raise _RecomputeError
                memo[key] = fn()
            return memo[key]

        def composed(rate: float, grouped: tuple[tuple[str, int], ...], b: Any) -> float:
            return eps(
                ("composed", rate, grouped, b.delta, b.accountant),
                lambda: composed_epsilon(rate, grouped, b.delta, b.accountant, unit),
            )

        def alone(b: Any) -> float:
            return eps(
                ("own", b.delta, b.accountant), lambda: ce.epsilon(b.delta, b.accountant, unit)
            )

        for b, (rate, grouped) in zip(plan.budgets, plan.terms, strict=True):
            cap = b.epsilon * (1 + 1e-12)
            own = alone(b)
            if own <= cap:  # else doomed whatever was spent: no need to compose
                new_rate, new_grouped = rate, tuple(grouped)
                if ce.gaussian_rate is not None:
                    new_rate += ce.gaussian_rate
                else:
                    new_grouped += ((ce.json, 1),)
                if composed(new_rate, new_grouped, b) <= cap:
                    continue
            raise BudgetExceededError(
                self._scope_label(req.dataset, b),
                remaining=b.epsilon - composed(rate, tuple(grouped), b),
                requested=own,
                cap=b.epsilon,
            )
        return alone(plan.main)

    def _insert(
        self, conn: Connection, req: _Request, plan: _Plan, kind: str, own: float
    ) -> ChargeInfo:
        ce, now = req.ce, req.now
        cid = conn.execute(
            sa.insert(tbl.Charge)
            .values(
                dataset_id=plan.dataset_id,
                version_id=None if req.data is None else req.data.version_id,
                actor=self.actor,
                purpose=plan.use,
                kind=kind[:32],
                description=req.description,
                events_json=ce.json,
                gaussian_rate=ce.gaussian_rate,
                epsilon=own,
                status="reserved",
                idempotency_key=req.idempotency_key,
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
            {
                "dataset": req.dataset,
                "charge": cid,
                "purpose": plan.use,
                "kind": kind,
                "epsilon": own,
            },
            {"charges": [cid]},
            now,
        )
        row = conn.execute(sa.select(tbl.Charge).where(tbl.Charge.id == cid)).one()
        return ChargeInfo.from_row(row, req.dataset)

    def _check_version(
        self, conn: Connection, ds: Any, data: GovernedData | GovernedVersion, now: float
    ) -> None:
        """Refuse a charge on ``data`` unless it is still what a load would give now.

        :class:`~privrec.errors.StaleDataError` — "load again and the change applies", the one
        refusal a service answers by reloading its cached view — for: a deletion request,
        consent import or policy change since the load (the epoch moved); a changed consent
        file; and the passing of the retention window over the oldest interaction the load
        kept. Any other refusal (data that never went through the policy) is a plain
        :class:`~privrec.errors.PolicyViolation`.
        """
        if not isinstance(data, GovernedData | GovernedVersion):
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
            raise StaleDataError(
                f"dataset {ds.name!r} changed since this data was loaded (deletion requests, consents "
                "or policy): load it again so the change applies"
            )
        policy = Policy.from_json(ds.policy_json)
        if policy.consent.required and policy.consent.source != "ledger":
            # consents kept in a file change outside the ledger: compare the file with the load's
            loaded = json.loads(v.report_json).get("consent_file_sha256")
            if loaded != consent_file_digest(policy.consent.source):
                raise StaleDataError(
                    f"the consent file of dataset {ds.name!r} changed since this data was loaded "
                    "(someone may have withdrawn): load it again so the change applies"
                )
        if policy.retention_days is not None:
            check_retention(ds.name, policy.retention_days, json.loads(v.report_json), now)

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
        result_json = None if result is None else json.dumps(result, sort_keys=True, default=float)
        with self._write() as conn:
            # after the write lock: a commit without a release mark counts in rolling windows
            # from this time, so it must not be taken before a wait for the lock
            now = self.clock(conn)
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
                _check_artifact_data(conn, row, artifact)
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
                    # the signer of a signed release (absent, not null, for unsigned ones)
                    **(
                        {"signer": artifact["signer"]}
                        if artifact is not None and artifact.get("signer")
                        else {}
                    ),
                },
                touched,
                now,
            )
            out = conn.execute(sa.select(tbl.Charge).where(tbl.Charge.id == cid)).one()
            name = self._dataset_name(conn, out.dataset_id)
        return ChargeInfo.from_row(out, name)

    def abort(self, charge: ChargeInfo | int, *, reason: str) -> ChargeInfo:
        """Release a reservation whose computation stopped **before its output left the process**.

        Aborting a charge whose noisy output may have left the process would under-report; the
        training wrapper never does it once the write-ahead gate has opened, and a charge marked
        released is refused. An analyst aborts their own charges; an owner may abort any
        analyst's unreleased one (logged with the reason): a reservation left by a failed query
        or a revoked key holds its ε in every window of a rolling budget until then.
        """
        owner = self.principal.can("manage")
        if not owner:
            require(self.principal, "spend", "aborting a charge")
        cid = charge if isinstance(charge, int) else charge.id
        with self._write() as conn:
            now = self.clock(conn)  # after the write lock: the time the abort takes effect
            row = self._any_charge(conn, cid) if owner else self._own_charge(conn, cid)
            if row.status != "reserved":
                raise GovernanceError(
                    f"charge {cid} is {row.status}; only a reserved charge can be aborted"
                )
            if row.released_at is not None:
                raise GovernanceError(
                    f"charge {cid}'s output was released (recorded {fmt_time(row.released_at)}): "
                    "it can only be committed — aborting it would give back privacy already spent"
                )
            conn.execute(
                sa.update(tbl.Charge)
                .where(tbl.Charge.id == cid)
                .values(status="aborted", updated_at=now, note=reason[:2000])
            )
            self._log(
                conn,
                "charge.abort",
                {"charge": cid, "reason": reason[:500], "of": row.actor},
                {"charges": [cid]},
                now,
            )
            out = conn.execute(sa.select(tbl.Charge).where(tbl.Charge.id == cid)).one()
            name = self._dataset_name(conn, out.dataset_id)
        return ChargeInfo.from_row(out, name)

    def mark_released(self, charges: ChargeInfo | int | Sequence[ChargeInfo | int]) -> None:
        """Record that the noisy output of one's own reserved charges has left the process.

        From then on :meth:`abort` refuses them: the privacy was spent whatever happens next,
        and an abort would give it back. :class:`~privrec.governance.training.ChargeSession`
        calls this from ``released()``; before this existed, "output was released" was only a
        free-text note that nothing checked. Committed charges are left as they are (already
        final); aborted ones are refused (their output should never have been released).
        """
        require(self.principal, "spend", "marking a charge released")
        items = [charges] if isinstance(charges, ChargeInfo | int) else list(charges)
        ids = [c if isinstance(c, int) else c.id for c in items]
        with self._write() as conn:
            # read after the write lock is held: a release is timed when it is recorded (timed
            # before a long wait for the lock, it left later windows too early)
            now = self.clock(conn)
            rows = [self._own_charge(conn, cid) for cid in ids]  # all checked before any write
            for row in rows:
                if row.status == "aborted":
                    raise GovernanceError(
                        f"charge {row.id} was aborted: output released under it is not covered "
                        "by any charge (reserve a new one)"
                    )
            todo = [r.id for r in rows if r.status == "reserved" and r.released_at is None]
            if not todo:
                return
            conn.execute(
                sa.update(tbl.Charge)
                .where(tbl.Charge.id.in_(todo))
                .values(released_at=now, updated_at=now)
            )
            self._log(conn, "charge.release", {"charges": todo}, {"charges": todo}, now)

    def _any_charge(self, conn: Connection, cid: int) -> Any:
        row = conn.execute(sa.select(tbl.Charge).where(tbl.Charge.id == cid)).first()
        if row is None:
            raise UnknownDatasetError(f"unknown charge {cid}")
        return row

    def _own_charge(self, conn: Connection, cid: int) -> Any:
        row = self._any_charge(conn, cid)
        if row.actor != self.actor:
            raise GovernanceError(f"charge {cid} belongs to {row.actor}, not {self.actor}")
        return row

    def note(self, charge: ChargeInfo | int, text: str) -> None:
        """Attach a note to one's own reserved charge (e.g. why it stays reserved after a failure)."""
        require(self.principal, "spend", "annotating a charge")
        cid = charge if isinstance(charge, int) else charge.id
        now = self.clock()
        with self._write() as conn:
            self._own_charge(conn, cid)
            conn.execute(
                sa.update(tbl.Charge)
                .where(tbl.Charge.id == cid)
                .values(note=text[:2000], updated_at=now)
            )
            self._log(
                conn, "charge.note", {"charge": cid, "note": text[:500]}, {"charges": [cid]}, now
            )


def _check_artifact_data(conn: Any, row: Any, artifact: dict[str, Any]) -> None:
    """Refuse an artifact that says it was trained on other data than the charge's version.

    Why: lineage (which models held a deleted person, which are due for retraining) follows
    the charge's dataset version. An artifact committed with another ``dataset_hash`` — a model
    fitted on the raw file instead of the policy-checked load, or on another version — was
    recorded as if it held only that version's members, and deletion tracing would miss it.
    """
    claimed = artifact.get("dataset_hash")
    if row.version_id is None:
        # a charge reserved without a checked version: the artifact may not name one either
        # (a model fitted on the raw file, recorded under a version's hash, escaped lineage);
        # cross-silo runs, whose driver never sees the data, record none
        if claimed:
            raise GovernanceError(
                f"charge {row.id} was reserved without a checked dataset version, so its "
                "artifact cannot claim one: reserve with data= (the load it was fitted on); "
                "nothing recorded"
            )
        return
    version_hash = conn.execute(
        sa.select(tbl.DatasetVersion.content_hash).where(tbl.DatasetVersion.id == row.version_id)
    ).scalar_one()
    if claimed != version_hash:
        raise GovernanceError(
            f"the artifact was trained on data with hash {str(claimed)[:16]}…, but charge "
            f"{row.id} was reserved for dataset version {row.version_id} "
            f"({version_hash[:16]}…): commit the model fitted on that version; nothing recorded"
        )
