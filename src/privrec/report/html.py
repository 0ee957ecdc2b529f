"""A self-contained HTML report: privacy-utility curve, results table, guarantees in words."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from privrec.privacy.guarantee import PrivacyGuarantee

__all__ = ["ReportRow", "privacy_utility_plot", "write_html_report"]


@dataclass(frozen=True)
class ReportRow:
    """One trained model: its family (curve), ε (``math.inf`` if not private) and metrics."""

    model: str
    family: str
    epsilon: float
    metrics: dict[str, float]
    guarantee: PrivacyGuarantee | None = None
    notes: dict[str, str] = field(default_factory=dict)


def privacy_utility_plot(
    rows: Sequence[ReportRow],
    metric: str,
    path: str | Path,
    title: str = "Privacy-utility trade-off",
) -> Path:
    """Plot ``metric`` against ε, one line per model family; non-private models as dashed levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=110)
    private = [r for r in rows if math.isfinite(r.epsilon)]
    eps_values = sorted({r.epsilon for r in private}) or [1.0]
    for fam in sorted({r.family for r in private}):
        pts = sorted((r.epsilon, r.metrics[metric]) for r in private if r.family == fam)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{fam}")
    for r in rows:
        if not math.isfinite(r.epsilon):
            ax.axhline(
                r.metrics[metric],
                linestyle="--",
                linewidth=1,
                alpha=0.8,
                label=f"{r.model} (not private)",
            )
    ax.set_xscale("log")
    ax.set_xticks(eps_values)
    ax.set_xticklabels([f"{e:g}" for e in eps_values])
    ax.minorticks_off()
    ax.set_xlabel("ε (user level)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def _fmt_eps(eps: float) -> str:
    return "∞ (not private)" if not math.isfinite(eps) else f"{eps:g}"


def write_html_report(
    path: str | Path,
    rows: Sequence[ReportRow],
    *,
    title: str,
    dataset: str,
    metric_names: Sequence[str],
    plot_metric: str,
) -> Path:
    """Write ``path`` (HTML, plot embedded) and the plot as ``<path stem>.png`` beside it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = privacy_utility_plot(
        rows, plot_metric, out.with_suffix(".png"), title=f"{plot_metric} vs ε — {dataset}"
    )
    data = base64.b64encode(png.read_bytes()).decode()
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metric_names)
    body_rows = []
    for r in rows:
        cells = "".join(f"<td>{r.metrics.get(m, float('nan')):.4f}</td>" for m in metric_names)
        eps = _fmt_eps(r.epsilon)
        body_rows.append(
            f"<tr><td>{html.escape(r.model)}</td><td>{html.escape(eps)}</td>{cells}</tr>"
        )
    guarantees = []
    seen: set[str] = set()
    for r in rows:
        if r.guarantee is None:
            continue
        text = r.guarantee.explain()
        key = f"{r.model}"
        if key in seen:
            continue
        seen.add(key)
        paras = "".join(f"<p>{html.escape(line)}</p>" for line in text.splitlines())
        guarantees.append(f"<section><h3>{html.escape(r.model)}</h3>{paras}</section>")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; line-height: 1.45; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
section {{ border-left: 3px solid #4a7; padding-left: 1rem; margin: 1rem 0; }}
.small {{ color: #666; font-size: .85rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="small">Dataset: {html.escape(dataset)} · generated {stamp} by privrec</p>
<h2>Privacy-utility curve</h2>
<img alt="{html.escape(plot_metric)} against epsilon" src="data:image/png;base64,{data}">
<h2>Results</h2>
<table><thead><tr><th>model</th><th>ε</th>{head}</tr></thead>
<tbody>{"".join(body_rows)}</tbody></table>
<h2>What each private model promises</h2>
{"".join(guarantees) or "<p>No private model in this report.</p>"}
</body></html>
"""
    out.write_text(doc, encoding="utf-8")
    return out
