"""The tamper-evident audit log: an append-only SHA-256 hash chain written with each action.

Every row carries ``hash = SHA-256(prev_hash ‖ at ‖ actor ‖ action ‖ payload)`` where
``payload`` is canonical JSON (sorted keys, no spaces). The row is inserted in the *same*
transaction as the action it records, so an action without its row (or the reverse) cannot
be committed. The ledger's ``audit_head`` fact holds the last ``(seq, hash)``.

Each payload also records fingerprints (SHA-256 of canonical JSON) of the ledger rows the action
created or changed — charges, budgets, datasets, deletion requests, artifacts, principals,
keys — and a digest of each consent batch. :func:`verify` walks the chain and then compares the
tables with the last fingerprint the log holds for every row, so editing a charge's events in the
database (to make the spend look smaller) is caught as surely as editing the log.

It also checks the ledger's user-hash key against the fingerprint logged at ``ledger.init`` (a new
key would silently cancel every deletion request and consent), and that every consent record
belongs to a logged import.

What it does not do: someone who can write the database *and* recompute every later hash can
rewrite history — and removing the most recent actions (their rows, their audit rows, the head
wound back to the row before) needs no hash recomputed at all. Pin the head hash printed by
``privrec audit-log verify`` somewhere they cannot write (a ticket, a signed e-mail) and pass it
back with ``--expect-head`` to detect both; ``privrec check --release`` on a model file whose
charge was removed also fails.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from privrec.errors import AuditLogError
from privrec.governance import schema as tbl
from privrec.governance.userkey import stored_key_fingerprint, user_key_fingerprint

__all__ = [
    "GENESIS",
    "AuditVerification",
    "append",
    "canonical_json",
    "fingerprint",
    "user_key_fingerprint",
    "verify",
]

GENESIS = "0" * 64

#: Tables whose every row must match the last fingerprint the log recorded for it.
TRACKED: dict[str, sa.Table] = {
    t.name: t  # type: ignore[attr-defined, misc]
    for t in (
        tbl.Charge.__table__,
        tbl.Budget.__table__,
        tbl.Dataset.__table__,
        tbl.Deletion.__table__,
        tbl.Artifact.__table__,
        tbl.Principal.__table__,
        tbl.ApiKey.__table__,
        tbl.DatasetVersion.__table__,
    )
}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats as Python's shortest round-trip form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


#: Nullable columns added by a migration after the first (``artifacts.signer``, 0002;
#: ``charges.released_at``, 0003). A row's fingerprint leaves such a column out while it is
#: ``NULL``: rows written before the column existed keep the fingerprint the log recorded for
#: them, so an upgraded ledger still verifies; setting or clearing the value later changes the
#: fingerprint like any other edit.
LATER_NULLABLE: frozenset[str] = frozenset({"signer", "released_at"})


def fingerprint(row: Any) -> str:
    """SHA-256 of a row's canonical JSON (binary columns by their own SHA-256)."""
    data = {
        k: _plain(v)
        for k, v in dict(row._mapping if hasattr(row, "_mapping") else row).items()
        if not (v is None and k in LATER_NULLABLE)
    }
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def row_fingerprints(conn: Connection, table: str, ids: list[int]) -> dict[str, str]:
    """``{"table/id": fingerprint}`` of the given rows, read inside the writing transaction."""
    t = TRACKED[table]
    key = t.c.id
    rows = conn.execute(sa.select(t).where(key.in_(ids))).all()
    return {f"{table}/{r.id}": fingerprint(r) for r in rows}


def consent_digest(conn: Connection, first_id: int, last_id: int) -> str:
    t = tbl.Consent.__table__
    h = hashlib.sha256()
    rows = conn.execute(sa.select(t).where(t.c.id >= first_id, t.c.id <= last_id).order_by(t.c.id))
    for r in rows:
        h.update(fingerprint(r).encode())
    return h.hexdigest()


def chain_hash(prev: str, at: float, actor: str, action: str, payload: str) -> str:
    text = f"{prev}\n{at!r}\n{actor}\n{action}\n{payload}"
    return hashlib.sha256(text.encode()).hexdigest()


def read_head(conn: Connection) -> tuple[int, str]:
    raw = conn.execute(
        sa.select(tbl.Meta.value).where(tbl.Meta.key == "audit_head")
    ).scalar_one_or_none()
    if raw is None:
        # written at init, before the first row: without it an append would restart the chain
        # at row 1 (a raw duplicate-key error) — the database was damaged or edited
        raise AuditLogError("the audit log's stored head (ledger_meta 'audit_head') is missing")
    try:
        head = json.loads(raw)
        return int(head["seq"]), str(head["hash"])
    except (ValueError, TypeError, KeyError) as exc:
        raise AuditLogError(
            f"the audit log's stored head is not a valid record: {raw!r:.80}"
        ) from exc


def append(
    conn: Connection,
    *,
    at: float,
    actor: str,
    action: str,
    payload: dict[str, Any],
    rows: dict[str, list[int]] | None = None,
) -> int:
    """Append one row (inside the caller's writing transaction); returns its ``seq``.

    ``rows`` names the ledger rows this action created or changed (``{"charges": [12]}``):
    their fingerprints go into the payload so :func:`verify` can check the tables too.
    """
    body = dict(payload)
    if rows:
        prints: dict[str, str] = {}
        for table, ids in rows.items():
            prints.update(row_fingerprints(conn, table, ids))
        body["rows"] = prints
    text = canonical_json(body)
    seq, prev = read_head(conn)
    seq += 1
    h = chain_hash(prev, at, actor, action, text)
    conn.execute(
        sa.insert(tbl.AuditRow).values(
            seq=seq, at=at, actor=actor, action=action, payload=text, prev_hash=prev, hash=h
        )
    )
    head = canonical_json({"seq": seq, "hash": h})
    conn.execute(sa.update(tbl.Meta).where(tbl.Meta.key == "audit_head").values(value=head))
    return seq


@dataclass(frozen=True)
class AuditVerification:
    """Outcome of :func:`verify`: ``ok``, how many rows were checked, the head hash, the first problem."""

    ok: bool
    rows: int
    head_hash: str
    first_bad_seq: int | None = None
    message: str = "the audit log verifies: chain intact, tables match"


def _bad(rows: int, head: str, seq: int | None, message: str) -> AuditVerification:
    return AuditVerification(False, rows, head, seq, message)


def verify(conn: Connection, *, expect_head: str | None = None) -> AuditVerification:
    """Walk the chain in ``seq`` order, then compare the tracked tables with the log.

    Names the first bad row: a missing ``seq`` (a deleted row), a row whose hash does not match
    its content (edited), or a row whose ``prev_hash`` is not its predecessor's hash (reordered,
    or inserted). Then every tracked table row must equal the fingerprint last logged for it.

    ``expect_head`` is a head hash printed (and pinned elsewhere) earlier: it must still be the
    hash of some row of the chain — the ledger may have moved on since — so a log rewritten up
    to the pin, or cut back to before it, fails.
    """
    t = tbl.AuditRow.__table__
    prev_hash = GENESIS
    expected = 1
    n = 0
    latest: dict[str, tuple[str, int]] = {}
    consent_batches: list[tuple[int, int, str, int]] = []
    init_key_print: tuple[str, int] | None = None
    pinned_seq: int | None = None
    result = conn.execution_options(yield_per=2000).execute(sa.select(t).order_by(t.c.seq))
    for row in result:
        if row.seq != expected:
            which = (
                f"row {expected} is missing (the log jumps from row {expected - 1} to row {row.seq})"
                if row.seq > expected
                else f"row {row.seq} appears again after row {expected - 1}"
            )
            return _bad(n, prev_hash, expected, f"audit log broken: {which}")
        if chain_hash(row.prev_hash, row.at, row.actor, row.action, row.payload) != row.hash:
            return _bad(
                n, prev_hash, row.seq, f"audit log broken: row {row.seq} was edited (hash mismatch)"
            )
        if row.prev_hash != prev_hash:
            return _bad(
                n,
                prev_hash,
                row.seq,
                f"audit log broken: row {row.seq} is out of order (its previous-hash is not row "
                f"{row.seq - 1}'s hash: rows were reordered, inserted or rewritten)",
            )
        try:
            body = json.loads(row.payload)
            if not isinstance(body, dict) or not isinstance(body.get("rows", {}), dict):
                raise ValueError("not an object")
            for key, fp in body.get("rows", {}).items():
                latest[key] = (str(fp), row.seq)
            batch = body.get("consent_batch")
            if batch:
                consent_batches.append(
                    (int(batch["first_id"]), int(batch["last_id"]), str(batch["digest"]), row.seq)
                )
            if row.action == "ledger.init" and "user_key_sha256" in body:
                init_key_print = (str(body["user_key_sha256"]), row.seq)
        except (ValueError, TypeError, KeyError):
            return _bad(
                n, prev_hash, row.seq, f"audit log broken: row {row.seq}'s payload is malformed"
            )
        prev_hash = row.hash
        if expect_head is not None and row.hash == expect_head:
            pinned_seq = row.seq
        expected += 1
        n += 1
    try:
        head_seq, head_hash = read_head(conn)
    except AuditLogError as exc:
        return _bad(n, prev_hash, None, f"audit log broken: {exc}")
    if head_seq != n or head_hash != prev_hash:
        return _bad(
            n,
            prev_hash,
            n + 1,
            f"audit log broken: the head records row {head_seq} but the log ends at row {n} "
            f"(row {n + 1} onwards was deleted)",
        )
    if expect_head is not None and pinned_seq is None:
        # A pin is a head printed earlier: the ledger has usually moved on since, so the pinned
        # hash must still be *in* the chain (at any row), not be its head. Comparing with the
        # head failed after every later action, so a pin could only be checked before the next
        # write — useless for the rewrite and cut-tail detection it exists for.
        return _bad(
            n,
            prev_hash,
            None,
            f"the pinned head {expect_head[:16]}… is not in the audit log (its head is now "
            f"{prev_hash[:16]}…): history up to the pin was rewritten or the log was cut back "
            "before it (or the pin is from another ledger)",
        )
    seen: set[str] = set()
    for name, table in TRACKED.items():
        binary = [c.name for c in table.columns if isinstance(c.type, sa.LargeBinary)]
        for r in conn.execution_options(yield_per=2000).execute(
            sa.select(table).order_by(table.c.id)
        ):
            key = f"{name}/{r.id}"
            seen.add(key)
            logged = latest.get(key)
            # a binary column is fingerprinted by its bytes' SHA-256 as the text "sha256:…";
            # SQLite lets any column hold text, so that very text stored *instead* of the bytes
            # (a dataset version's member list erased) would fingerprint the same
            wrong_type = next(
                (
                    c
                    for c in binary
                    if r._mapping[c] is not None
                    and not isinstance(r._mapping[c], bytes | bytearray | memoryview)
                ),
                None,
            )
            if wrong_type is not None:
                return _bad(
                    n,
                    prev_hash,
                    None if logged is None else logged[1],
                    f"table {name} row {r.id} was edited: its {wrong_type} column holds "
                    f"{type(r._mapping[wrong_type]).__name__}, not bytes",
                )
            if logged is None:
                return _bad(
                    n,
                    prev_hash,
                    None,
                    f"table {name} row {r.id} was never recorded in the audit log",
                )
            if fingerprint(r) != logged[0]:
                return _bad(
                    n,
                    prev_hash,
                    logged[1],
                    f"table {name} row {r.id} was edited after audit-log row {logged[1]} recorded it",
                )
    missing = sorted(set(latest) - seen, key=lambda k: latest[k][1])
    if missing:
        return _bad(
            n,
            prev_hash,
            latest[missing[0]][1],
            f"table row {missing[0]} recorded by audit-log row {latest[missing[0]][1]} was deleted",
        )
    for first, last, digest, seq in consent_batches:
        if consent_digest(conn, first, last) != digest:
            return _bad(
                n,
                prev_hash,
                seq,
                f"consent records {first}-{last} (imported in audit-log row {seq}) were changed",
            )
    # every consent record must belong to a logged import (an inserted row would grant consent)
    ct = tbl.Consent.__table__
    logged_ids = sa.or_(sa.false(), *(ct.c.id.between(a, b) for a, b, _, _ in consent_batches))
    stray = conn.execute(sa.select(sa.func.min(ct.c.id)).where(sa.not_(logged_ids))).scalar()
    if stray is not None:
        return _bad(
            n, prev_hash, None, f"consent record {stray} was never imported through the ledger"
        )
    if init_key_print is not None:
        key = conn.execute(
            sa.select(tbl.Meta.value).where(tbl.Meta.key == "user_key")
        ).scalar_one_or_none()
        if key is None or stored_key_fingerprint(key) != init_key_print[0]:
            return _bad(
                n,
                prev_hash,
                init_key_print[1],
                "the ledger's user-hash key differs from the one audit-log row "
                f"{init_key_print[1]} recorded at init (deletion requests and consents would no "
                "longer match anyone)",
            )
    return AuditVerification(True, n, prev_hash)
