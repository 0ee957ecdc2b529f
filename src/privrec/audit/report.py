"""Audit results as Markdown tables and JSON (for CI logs and review documents)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from privrec.audit.mia import MembershipResult
from privrec.audit.multi_run import MultiRunAudit
from privrec.audit.one_run import ModelAudit

__all__ = ["to_json", "to_markdown"]

AnyResult = ModelAudit | MultiRunAudit | MembershipResult


def to_json(results: Sequence[AnyResult]) -> str:
    """One JSON document: ``{"one_run": [...], "multi_run": [...], "mia": [...]}``."""
    out: dict[str, list[dict[str, Any]]] = {"one_run": [], "multi_run": [], "mia": []}
    for r in results:
        key = (
            "one_run"
            if isinstance(r, ModelAudit)
            else "multi_run"
            if isinstance(r, MultiRunAudit)
            else "mia"
        )
        out[key].append(r.to_dict())
    return json.dumps(out, indent=2)


def _verdict(verdict: str) -> str:
    return {"FLAGGED": "**FLAGGED**", "inconclusive": "*inconclusive*"}.get(verdict, verdict)


def to_markdown(results: Sequence[AnyResult]) -> str:
    """Tables of the one-run audits, multi-run audits and membership attacks given."""
    lines: list[str] = []
    one = [r for r in results if isinstance(r, ModelAudit)]
    multi = [r for r in results if isinstance(r, MultiRunAudit)]
    mia = [r for r in results if isinstance(r, MembershipResult)]
    if one:
        lines += [
            "| model | claimed ε | design | canaries (L items) | guesses | correct | ε lower bound | cap | verdict |",
            "|---|---:|---|---|---:|---:|---:|---:|---|",
        ]
        for r in one:
            for a in r.audits:
                b = a.bound
                d = a.design
                lines.append(
                    f"| {r.model} | {r.claimed_epsilon:.3g} | {d.label} | {d.n_canaries} ({d.items_per_canary}) "
                    f"| {b.guesses} | {b.correct} | {b.epsilon_lb:.2f} | {b.cap:.2f} "
                    f"| {_verdict(a.verdict)} |"
                )
        notes = [
            f"- {r.model} {a.design.label}: {'; '.join(a.notes)}"
            for r in one
            for a in r.audits
            if a.notes
        ]
        notes += [f"- caveat: {i}" for r in one for i in r.issues]
        lines += ["", *notes] if notes else []
        lines.append("")
    if multi:
        lines += [
            "| model | claimed ε | runs | FPR | FNR | ε lower bound | cap | verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for m in multi:
            mb = m.bound
            lines.append(
                f"| {m.model} | {m.claimed_epsilon:.3g} | {m.runs} | {mb.fpr:.3f} | {mb.fnr:.3f} "
                f"| {mb.epsilon_lb:.2f} | {mb.cap:.2f} | {_verdict(m.verdict)} |"
            )
        issues = [i for m in multi for i in m.issues]
        lines += ["", *(f"- caveat: {i}" for i in issues)] if issues else []
        lines.append("")
    if mia:
        lines += [
            "| model | ε | MIA AUC | 95% interval | DP bound on AUC | hidden recall@k members / non-members |",
            "|---|---:|---:|---|---:|---|",
        ]
        for x in mia:
            eps = "—" if x.epsilon is None else f"{x.epsilon:.3g}"
            bound = "—" if x.auc_bound is None else f"{x.auc_bound:.3f}"
            lines.append(
                f"| {x.model} | {eps} | {x.auc:.3f} | [{x.auc_low:.3f}, {x.auc_high:.3f}] | {bound} "
                f"| {x.member_hit_rate:.2f} / {x.non_member_hit_rate:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)
