"""What the dashboard shows, computed from the ledger and the served models (JSON for the page).

Every figure comes from a ledger read made *as the caller*, so the roles of the ledger decide
what each person sees: an analyst gets their own budgets and charges, owners and auditors get
everything, and nothing here writes.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from privrec.governance import Ledger
from privrec.governance import schema as tbl
from privrec.governance.db import read_transaction
from privrec.serve.models import ServedModel

__all__ = [
    "ViewCache",
    "artifact_entry",
    "audit",
    "charge_entry",
    "governance",
    "ledger_head",
    "series",
    "tradeoff",
]


def ledger_head(ledger: Ledger) -> str:
    """The audit log's head: it changes with every write to the ledger (one primary-key read).

    Every writing transaction of the ledger appends to the hash-chained audit log and moves
    this head, so a view computed when the head was ``h`` is still the ledger's view while the
    head is ``h`` (up to the clock, for budgets with a period).
    """
    with read_transaction(ledger.engine) as conn:
        head = conn.execute(
            sa.select(tbl.Meta.value).where(tbl.Meta.key == "audit_head")
        ).scalar_one_or_none()
    return str(head or "")


class ViewCache:
    """Answers of the dashboard's heavy reads (budgets with their spend curves), per caller.

    A budget listing composes every charge of each scope (and, with ``series``, the composed ε
    after up to 32 charges per budget): with 10,000 charges that is hundreds of milliseconds,
    while the ledger changes far less often than the dashboard is looked at. An answer is
    reused only while the ledger's head (:func:`ledger_head`) is the one it was computed at —
    any charge, commit, abort or budget change invalidates it — and, when a budget has a
    period (its window slides with the clock), for at most ``max_age`` seconds. Entries are
    keyed by the caller's name and role, so each sees exactly what the ledger showed them.
    Nothing of a request is kept: only aggregate budget figures the caller was shown.
    """

    def __init__(self, max_age: float = 5.0, max_entries: int = 256) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], tuple[str, float | None, Any]] = {}

    def get(
        self,
        ledger: Ledger,
        key: tuple[Any, ...],
        compute: Callable[[], Any],
        *,
        expires: Callable[[Any], bool] = lambda _: False,
    ) -> Any:
        """``compute()``'s answer for ``key``, reused while the ledger's head is unchanged.

        ``expires(answer)`` says whether the answer depends on the clock (then it is kept
        ``max_age`` seconds at most).
        """
        p = ledger.principal
        full = (p.name, p.role.value, *key)
        head = ledger_head(ledger)  # read before computing: a later write moves it on
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(full)
        if hit is not None and hit[0] == head and (hit[1] is None or hit[1] > now):
            return hit[2]
        answer = compute()
        until = now + self.max_age if expires(answer) else None
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[full] = (head, until, answer)
        return answer


def series(ledger: Ledger, b: Any, points: int = 32) -> list[dict[str, float]]:
    """Composed and naive ε of a budget after evenly spaced charges, oldest first."""
    return [
        {"t": t, "composed": c, "naive": n}
        for t, c, n in ledger.spend_over_time(
            b.dataset, scope=b.scope, value=b.scope_value, points=points
        )
    ]


def charge_entry(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "dataset": c.dataset,
        "actor": c.actor,
        "purpose": c.purpose,
        "kind": c.kind,
        "status": c.status,
        "epsilon": c.epsilon,
        "created_at": c.created_at,
        "artifact_id": c.artifact_id,
    }


def tradeoff(models: list[ServedModel]) -> dict[str, Any]:
    """ε → Recall@k / NDCG@k per model, overall and per user-activity group (Q1 = lightest)."""
    rows = []
    for sm in models:
        ev = sm.evaluation
        if ev is None:
            continue
        g = sm.guarantee
        rows.append(
            {
                "model": sm.id,
                "kind": sm.kind,
                "private": sm.private,
                "epsilon": None if g is None else float(g.epsilon),
                "k": ev["k"],
                "metrics": ev["metrics"],
                "per_group": ev["per_group"],
            }
        )
    ks = sorted({int(k) for r in rows for k in r["k"]})
    return {"k": ks, "points": rows}


def artifact_entry(a: Any) -> dict[str, Any]:
    g = a.guarantee or {}
    explanation = None
    if g:
        try:
            from privrec.privacy.guarantee import PrivacyGuarantee

            explanation = PrivacyGuarantee.model_validate(g).explain()
        except Exception:  # another kind of guarantee (e.g. distributed DP): numbers only
            explanation = None
    return {
        "id": a.id,
        "dataset": a.dataset,
        "model_kind": a.model_kind,
        "file_hash": a.file_hash,
        # the file's name only: an absolute path would tell API callers the server's layout
        "file": Path(a.path).name if a.path else None,
        "dataset_version": a.version_id,
        "dataset_hash": a.dataset_hash,
        "privrec_version": a.privrec_version,
        "git_commit": a.git_commit,
        "created_at": a.created_at,
        "created_by": a.created_by,
        "charge_ids": list(a.charge_ids),
        "seeded_noise": a.seeded_noise,
        "signer": a.signer,
        "epsilon": g.get("epsilon"),
        "delta": g.get("delta"),
        "unit": g.get("unit"),
        "plain_language": explanation,
    }


def audit(ctx: Any, ledger: Ledger, limit: int) -> dict[str, Any]:
    """Newest rows and the chain's verification (cached per head: a verification walks it all)."""
    rows = ledger.audit_log(limit=limit)
    head = rows[0]["hash"] if rows else ""
    cached = ctx.audit_cache.get("verification")
    if cached is None or cached[0] != head:
        v = ledger.verify_audit_log()
        cached = (head, v)
        ctx.audit_cache["verification"] = cached
    v = cached[1]
    return {
        "verification": {
            "ok": v.ok,
            "rows": v.rows,
            "head_hash": v.head_hash,
            "first_bad_row": v.first_bad_seq,
            "message": v.message,
        },
        "rows": [
            {
                "seq": r["seq"],
                "at": r["at"],
                "actor": r["actor"],
                "action": r["action"],
                "summary": _summary(r["payload"]),
                "hash": r["hash"],
            }
            for r in rows
        ],
    }


def _summary(payload: str) -> str:
    try:
        body = json.loads(payload)
    except ValueError:
        return ""
    body.pop("rows", None)
    body.pop("report", None)
    text = json.dumps(body, sort_keys=True)
    return text if len(text) <= 300 else text[:297] + "..."


def governance(ledger: Ledger) -> dict[str, Any]:
    """Per dataset: policy (retention, consent, minimisation), consent and deletion counts, the
    latest policy report (what was dropped and why), retrains due; the drift monitors' windows
    (charged to the ledger by ``privrec.monitor.LedgerWindowCharge``) when there are any.

    These are the ledger's exact internal figures (owner and auditor only; never published).
    """
    out = []
    due = ledger.retrains_due()
    now = ledger.clock()  # the ledger's clock decides what is overdue, as it dates the duties
    for d in ledger.datasets():
        policy = d.policy
        latest = ledger.latest_version(d.name)
        steps = []
        if latest is not None:
            for s in latest["report"].get("steps", []):
                steps.append(
                    {
                        "step": s.get("step"),
                        "users_dropped": s.get("users_dropped"),
                        "interactions_dropped": s.get("interactions_dropped"),
                        "reason": s.get("reason", s.get("detail", "")),
                    }
                )
        out.append(
            {
                "name": d.name,
                "unit": d.unit,
                "purpose": policy.get("purpose"),
                "retention_days": policy.get("retention_days"),
                "max_interactions_per_user": policy.get("max_interactions_per_user"),
                "consent_required": policy.get("consent", {}).get("required"),
                "consent_source": policy.get("consent", {}).get("source"),
                "retrain_within_days": policy.get("deletion", {}).get("retrain_within_days"),
                "consent_records": d.consents,
                "deletion_requests": d.deletions,
                "versions": d.versions,
                "latest_version": None
                if latest is None
                else {
                    "id": latest["id"],
                    "created_at": latest["created_at"],
                    "n_users": latest["n_users"],
                    "n_items": latest["n_items"],
                    "interactions": latest["nnz"],
                    "steps": steps,
                },
                "retrains_due": [
                    {
                        "artifact_id": u.artifact.id,
                        "due": u.retrain_due,
                        "reason": u.reason,
                        "overdue": u.retrain_due is not None and u.retrain_due < now,
                    }
                    for u in due
                    if u.artifact.dataset == d.name
                ],
            }
        )
    # drift monitors (privrec.monitor) charge each window to the ledger as kind "monitor"
    windows = [c for c in ledger.history(limit=2000) if c.kind == "monitor"][:200]
    return {
        "datasets": out,
        "monitors": [
            {
                "at": c.created_at,
                "dataset": c.dataset,
                "by": c.actor,
                "purpose": c.purpose,
                "epsilon": c.epsilon,
                "status": c.status,
                "window": str((c.result or {}).get("window") or c.description)[:300],
            }
            for c in windows
        ],
        "monitors_note": None
        if windows
        else "No drift monitor has charged a window to the ledger yet.",
    }


def finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v
