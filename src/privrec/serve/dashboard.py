"""What the dashboard shows, computed from the ledger and the served models (JSON for the page).

Every figure comes from a ledger read made *as the caller*, so the roles of the ledger decide
what each person sees: an analyst gets their own budgets and charges, owners and auditors get
everything, and nothing here writes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from privrec.governance import Ledger
from privrec.serve.models import ServedModel

__all__ = ["artifact_entry", "audit", "charge_entry", "governance", "series", "tradeoff"]


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
        "path": a.path,
        "dataset_version": a.version_id,
        "dataset_hash": a.dataset_hash,
        "privrec_version": a.privrec_version,
        "git_commit": a.git_commit,
        "created_at": a.created_at,
        "created_by": a.created_by,
        "charge_ids": list(a.charge_ids),
        "seeded_noise": a.seeded_noise,
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
                        "overdue": u.retrain_due is not None and u.retrain_due < _now(),
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


def _now() -> float:
    import time

    return time.time()


def finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v
