"""The data side of the ledger: consents, deletion requests, and loading data through the policy.

:meth:`LedgerIntake.load` is the one door from raw data to training: it applies the dataset's
policy (consents, deletions, retention, contribution caps) and registers the resulting version,
which is the only kind of data a charge for training accepts. Consent imports and deletion
requests bump the dataset's epoch, so data loaded before them is refused afterwards and a load
that races with them starts again.

Mixed into :class:`~privrec.governance.ledger.Ledger`; like every ledger action, each method
checks the caller's role, validates, and writes in one serialised transaction with its audit row.
"""

from __future__ import annotations

import hashlib
import unicodedata
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from privrec.data.interactions import Interactions
from privrec.errors import DataWarning, GovernanceError, StaleDataError
from privrec.governance import audit
from privrec.governance import schema as tbl
from privrec.governance.auth import require
from privrec.governance.db import deletions_in, digest_hex, read_transaction, user_digests
from privrec.governance.policy import (
    _FALSE,
    _TRUE,
    Policy,
    PolicyReport,
    apply_policy,
    check_retention,
    consent_file_digest,
    content_hash,
)
from privrec.governance.reading import LedgerBase
from privrec.governance.records import GovernedData, GovernedVersion

__all__ = ["LedgerIntake"]


def workers_version_hash(workers_hash: str) -> str:
    """The content hash a version registered from a cluster's workers is stored under.

    SHA-256 of a fixed label and the workers' combined hash (:meth:`LedgerIntake.register_version`):
    64 hex digits like every stored hash (the column's width), and — unlike the workers' hash
    itself — a value no data hashes to, so ``Ledger.train``, which hashes the data it is given,
    never accepts local data claiming to be such a version.
    """
    return hashlib.sha256(b"privrec workers version\0" + workers_hash.encode()).hexdigest()


def _deleted_hashes(conn: Connection, dataset_id: int) -> np.ndarray:
    """The keyed hashes of everyone who asked ``dataset_id`` to delete them (``uint64``)."""
    rows = conn.execute(
        sa.select(tbl.Deletion.user_hash).where(tbl.Deletion.dataset_id == dataset_id)
    ).scalars()
    return np.array([int(h, 16) for h in rows], dtype=np.uint64)


def _applied(
    data: Interactions,
    policy: Policy,
    key: bytes,
    deleted: np.ndarray,
    consented: np.ndarray | None,
    now: float,
) -> tuple[Interactions, PolicyReport, np.ndarray]:
    """The data after ``policy``, its report and the data's user hashes (a load and a policy
    check apply it alike)."""
    digests = user_digests(key, data.user_ids)
    out, report = apply_policy(
        data,
        policy,
        user_digests=digests,
        deleted=deletions_in(key, data.user_ids, digests, deleted),
        consented=consented,
        now=now,
    )
    return out, report, digests


class LedgerIntake(LedgerBase):
    """Consents, deletion requests (owner) and loading data through the policy (analyst)."""

    # ------------------------------------------------------------------ consent and deletion (owner)
    def import_consents(
        self, dataset: str, records: Iterable[tuple[Any, bool]], *, source: str = ""
    ) -> dict[str, int]:
        """Record consents (``(user id, granted)``; later records win). Returns counts.

        ``granted`` is a bool (``numpy.bool_`` too) or one of the words a consent file may use
        (``"true"``/``"false"``, ``"granted"``/``"revoked"``, … — :func:`read_consents`'s sets,
        case-insensitive). Anything else — ``None``, a number, an unknown word — is refused with
        a :class:`~privrec.errors.GovernanceError` before anything is written: ``bool("false")``
        is ``True``, and a withdrawal recorded as a grant would put the person back in training.
        """
        require(self.principal, "manage", "importing consents")
        try:
            recs = [(u, _consent_flag(g, u)) for u, g in records]
        except (TypeError, ValueError) as exc:  # not pairs
            raise GovernanceError(f"consent records are (user id, granted) pairs: {exc}") from None
        for u, _ in recs:  # all checked before anything is written
            _exact_id(u, "a consent record")
        now = self.clock()
        with self._write() as conn:
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
                        "granted": g,
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
        if user is None or (isinstance(user, str) and not user.strip()):
            raise GovernanceError("a deletion request needs a user id (found an empty one)")
        _exact_id(user, "a deletion request")
        now = self.clock()
        with self._write() as conn:
            ds = self._dataset(conn, dataset)
            d = user_digests(self._user_key(conn), [user])[0]
            h = digest_hex(d)
            _warn_if_unknown(conn, ds.id, d, user)
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
            # the person's hash is not repeated in the log: the deletions row's fingerprint is
            # all verification needs, and each copy of the hash is one more place to test
            # candidate ids against (see privrec.governance.userkey)
            self._log(
                conn,
                "deletion.request",
                {"dataset": dataset, "reason": reason[:500]},
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
                deleted = _deleted_hashes(conn, ds.id)
                policy = Policy.from_json(ds.policy_json)
                consented = None
                file_digest = None
                if policy.consent.required:
                    if policy.consent.source != "ledger":  # read before the file's records
                        file_digest = consent_file_digest(policy.consent.source)
                    consented = self._consented(conn, ds.id, policy, key)
            out, report, digests = _applied(data, policy, key, deleted, consented, self.clock())
            if file_digest is not None:
                report = report.model_copy(update={"consent_file_sha256": file_digest})
            h = content_hash(out)
            members = (
                digests[np.isin(data.user_ids, out.user_ids)]  # sorted when recorded
                if out.n_users
                else np.zeros(0, np.uint64)
            )
            now = self.clock()
            with self._write() as conn:
                current = self._dataset(conn, dataset)
                if current.epoch != ds.epoch:
                    continue  # a deletion, consent import or policy change landed meanwhile: redo
                vid = self._insert_version(
                    conn, ds, h, report, members, n_items=out.n_items, now=now, where=None
                )
            return GovernedData(dataset, int(vid), h, int(ds.epoch), out, report)
        raise GovernanceError(f"dataset {dataset!r} kept changing while loading; try again")

    def register_version(
        self,
        dataset: str,
        *,
        epoch: int,
        content_hash: str,
        members: np.ndarray,
        report: PolicyReport,
        n_items: int,
    ) -> GovernedVersion:
        """Register a version whose policy was applied where the data lies (a cluster's workers).

        ``epoch`` is the dataset's epoch read *before* the policy inputs the workers applied
        (:meth:`policy_inputs`); a deletion request, consent import or policy change since then
        refuses the registration (:class:`~privrec.errors.StaleDataError`: filter again).
        ``members`` are the keyed hashes of the users the workers kept (as :meth:`load` records
        them), so lineage and retraining duties cover the distributed training; ``report`` is
        the workers' merged policy report. The returned :class:`GovernedVersion` is what the
        training's charge is reserved with.
        """
        require(self.principal, "spend", "loading data for training")
        m = np.asarray(members)
        if m.ndim != 1 or m.dtype != np.uint64 or m.size != report.users_out:
            raise GovernanceError(
                "register_version needs one uint64 user hash per kept user "
                f"(found {m.dtype}{list(m.shape)} for the report's kept users)"
            )
        if not (isinstance(n_items, int) and n_items >= 0):
            raise GovernanceError(f"n_items must be a whole number ≥ 0, found {n_items!r}")
        # marked as the workers' hash: Ledger.train (which hashes the data it is given) can
        # never accept a hand-built GovernedData naming this version
        stored_hash = workers_version_hash(content_hash)
        now = self.clock()
        with self._write() as conn:
            ds = self._dataset(conn, dataset)
            if int(ds.epoch) != int(epoch):
                raise StaleDataError(
                    f"dataset {dataset!r} changed while the workers filtered it (deletion "
                    "requests, consents or policy): filter it again so the change applies"
                )
            if report.policy_hash != ds.policy_hash:
                raise StaleDataError(
                    f"the workers applied another policy than dataset {dataset!r}'s current one: "
                    "filter it again"
                )
            self._check_members(conn, ds, m, report, now)
            vid = self._insert_version(
                conn, ds, stored_hash, report, m, n_items=n_items, now=now, where="workers"
            )
        return GovernedVersion(dataset, int(vid), stored_hash, int(ds.epoch), report)

    def _insert_version(
        self,
        conn: Connection,
        ds: Any,
        content_hash: str,
        report: PolicyReport,
        members: np.ndarray,
        *,
        n_items: int,
        now: float,
        where: str | None,
    ) -> int:
        """Record a dataset version (and its audit row): the one place both kinds are written.

        ``where="workers"`` marks one filtered on a cluster's workers (:meth:`register_version`).
        """
        vid = conn.execute(
            sa.insert(tbl.DatasetVersion)
            .values(
                dataset_id=ds.id,
                content_hash=content_hash,
                policy_hash=ds.policy_hash,
                epoch=ds.epoch,
                n_users=report.users_out,
                n_items=n_items,
                nnz=report.interactions_out,
                report_json=report.model_dump_json(),
                members=np.sort(members).astype("<u8").tobytes(),
                created_at=now,
                created_by=self.actor,
            )
            .returning(tbl.DatasetVersion.id)
        ).scalar_one()
        payload: dict[str, Any] = {"dataset": ds.name, "version": vid, "content_hash": content_hash}
        if where is not None:
            payload["where"] = where
        payload["report"] = report.model_dump(mode="json")
        self._log(conn, "dataset.load", payload, {"dataset_versions": [vid]}, now)
        return int(vid)

    def _check_members(
        self, conn: Connection, ds: Any, members: np.ndarray, report: PolicyReport, now: float
    ) -> None:
        """What the ledger can check of a version filtered elsewhere: no member asked to be
        deleted, every member consented (where the policy requires it), and the oldest kept
        interaction inside the retention window. The workers are inside the training's trust
        boundary (central DP) and their data never reaches the ledger, so this catches mistakes
        (an old policy input, a misconfigured worker), not a forger — as everywhere in the
        ledger, roles give accountability, not a security boundary (docs/governance.md)."""
        deleted = _deleted_hashes(conn, ds.id)
        if members.size and np.isin(members, deleted).any():
            raise StaleDataError(
                f"the workers' data for dataset {ds.name!r} holds a person who asked to be "
                "deleted: filter it again with the current policy inputs"
            )
        policy = Policy.from_json(ds.policy_json)
        if policy.consent.required and members.size:
            consented = self._consented(conn, ds.id, policy, self._user_key(conn))
            if not np.isin(members, consented).all():
                raise StaleDataError(
                    f"the workers' data for dataset {ds.name!r} holds a person without a "
                    "recorded consent: filter it again with the current policy inputs"
                )
        if policy.retention_days is not None:
            check_retention(ds.name, policy.retention_days, report.model_dump(mode="json"), now)

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
        return _applied(data, policy, key, deleted, consented, self.clock())[1]

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
            deleted = _deleted_hashes(conn, ds.id)
            policy = Policy.from_json(ds.policy_json)
            consented = (
                self._consented(conn, ds.id, policy, key) if policy.consent.required else None
            )
        return policy, key, deleted, consented


def _consent_flag(granted: Any, user: Any) -> bool:
    """``granted`` as a bool, parsed strictly (see :meth:`LedgerIntake.import_consents`)."""
    if isinstance(granted, bool | np.bool_):
        return bool(granted)
    if isinstance(granted, str):
        word = granted.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise GovernanceError(
        f"the consent record of user {user!r} says {granted!r}: give True/False (or "
        "true/false, granted/revoked); nothing was recorded"
    )


def _exact_id(user: Any, what: str) -> None:
    """Refuse an id with surrounding white space or invisible characters: it hashes apart from
    the person it names (" 17" is not 17), so the request would be recorded and match nobody."""
    if isinstance(user, str) and user != user.strip():
        raise GovernanceError(
            f"{what} names user {user!r}, with white space around the id: it would match "
            f"nobody whose id is {user.strip()!r}; give the id exactly"
        )
    if isinstance(user, str) and any(unicodedata.category(c).startswith("C") for c in user):
        raise GovernanceError(
            f"{what} names user {user!r}, with an invisible or control character in the id: "
            "it would match nobody; give the id exactly"
        )


def _warn_if_unknown(conn: Connection, dataset_id: int, digest: Any, user: Any) -> None:
    """Warn when no loaded version of the dataset held ``user``: "017" or "17.0" for the
    person 17 is recorded but matches nobody (a request for someone not loaded yet is fine)."""
    blobs = conn.execute(
        sa.select(tbl.DatasetVersion.members).where(tbl.DatasetVersion.dataset_id == dataset_id)
    ).scalars()
    seen_any = False
    for blob in blobs:
        seen_any = True
        members = np.frombuffer(blob, dtype="<u8")
        i = int(np.searchsorted(members, digest))
        if i < members.size and members[i] == digest:
            return
    if seen_any:
        warnings.warn(
            f"no loaded version of this dataset held user {user!r}: the request is recorded and "
            "drops them from later loads, but check the id is written exactly as in the data "
            '("017", "17.0" and 17 are different ids)',
            DataWarning,
            stacklevel=3,
        )
