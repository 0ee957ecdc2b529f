"""A self-contained HTML report: privacy-utility curves, results table, guarantees in words.

The report is written for the data owner and a privacy reviewer. It holds metrics (rounded
to 4 decimals), settings and guarantees — never a user id or an exact count of users: the
dataset line gives sizes to two significant figures, and the quartile panels are labelled
Q1–Q4 without the users' exact history lengths.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privrec.report.compare import ReportRow

__all__ = ["ReportRow", "privacy_utility_plot", "write_html_report", "write_json_report"]

# private families: solid lines with markers; baselines: distinct dashed styles in greys/browns
_BASELINE_STYLES = [
    ("#444444", (0, (6, 3))),
    ("#8c564b", (0, (2, 2))),
    ("#7f7f7f", (0, (8, 3, 2, 3))),
    ("#bcbd22", (0, (1, 1))),
    ("#17becf", (0, (4, 1, 1, 1))),
    ("#000000", (0, (10, 4))),
]


def _draw(
    ax: Any, rows: Sequence[ReportRow], metric: str, eps: list[float], quartile: str | None
) -> None:
    import matplotlib.pyplot as plt

    def value(r: ReportRow) -> float:
        if quartile is None:
            return r.metrics.get(metric, math.nan)
        return r.quartiles.get(quartile, {}).get(metric, math.nan)

    colours = plt.get_cmap("tab10")
    families = sorted({r.family for r in rows if r.private})
    for i, fam in enumerate(families):
        pts = sorted(
            (r.epsilon, value(r), r.spread.get(metric, 0.0))
            for r in rows
            if r.private and r.family == fam
        )
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=None if quartile is not None else [p[2] for p in pts],
            marker="o",
            markersize=4,
            capsize=3,
            color=colours(i),
            label=fam,
        )
    for j, r in enumerate([r for r in rows if not r.private]):
        colour, dash = _BASELINE_STYLES[j % len(_BASELINE_STYLES)]
        ax.axhline(
            value(r), color=colour, linestyle=dash, linewidth=1.3, label=f"{r.model} (not private)"
        )
    ax.set_xscale("log")
    ax.set_xticks(eps)
    ax.set_xticklabels([f"{e:g}" for e in eps])
    ax.minorticks_off()
    ax.grid(True, which="both", alpha=0.3)


def privacy_utility_plot(
    rows: Sequence[ReportRow],
    metric: str,
    path: str | Path,
    title: str = "Privacy-utility trade-off",
) -> Path:
    """``metric`` against ε: one line per private model (error bars = std over noise draws),
    each baseline a distinct dashed level; below, one panel per user-activity quartile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = sorted({r.epsilon for r in rows if r.private}) or [1.0]
    quartiles = sorted({q for r in rows for q in r.quartiles})
    n_q = len(quartiles)
    fig = plt.figure(figsize=(9.0, 6.6 if n_q else 4.0), dpi=110)
    grid = fig.add_gridspec(2 if n_q else 1, max(n_q, 1), height_ratios=[2.2, 1] if n_q else [1])
    ax = fig.add_subplot(grid[0, :])
    _draw(ax, rows, metric, eps, None)
    ax.set_xlabel("ε (user level)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    for i, q in enumerate(quartiles):
        sub = fig.add_subplot(grid[1, i], sharey=None)
        _draw(sub, rows, metric, eps, q)
        sub.set_title(
            f"{q} ({'lightest' if i == 0 else 'heaviest' if i == n_q - 1 else 'users'})", fontsize=8
        )
        sub.tick_params(labelsize=7)
        if i == 0:
            sub.set_ylabel(f"{metric} by activity", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, metadata={"Software": "privrec"})
    plt.close(fig)
    return out


def _fmt_eps(eps: float) -> str:
    return "∞ (not private)" if not math.isfinite(eps) else f"{eps:g}"


def _cell(r: ReportRow, m: str) -> str:
    v = r.metrics.get(m, float("nan"))
    if r.draws > 1 and m in r.spread:
        return f"{v:.4f} ± {r.spread[m]:.4f}"
    return f"{v:.4f}"


def write_html_report(
    path: str | Path,
    rows: Sequence[ReportRow],
    *,
    title: str,
    dataset: str,
    metric_names: Sequence[str],
    plot_metric: str,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``path`` (HTML, plot embedded) and the plot as ``<path stem>.png`` beside it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = privacy_utility_plot(
        rows, plot_metric, out.with_suffix(".png"), title=f"{plot_metric} vs ε — {dataset}"
    )
    data = base64.b64encode(png.read_bytes()).decode()
    cols = [
        "model",
        "ε",
        "δ",
        "unit",
        "accountant",
        "seeded noise",
        "draws",
        *metric_names,
        "hyper-parameters",
        "privrec",
    ]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body_rows = []
    for r in rows:
        d = r.details
        cells = [
            r.model,
            _fmt_eps(r.epsilon),
            d.get("delta", "—"),
            d.get("unit", "—"),
            d.get("accountant", "—"),
            d.get("seeded", "—"),
            str(r.draws),
            *(_cell(r, m) for m in metric_names),
            d.get("hyper-parameters", ""),
            d.get("version", ""),
        ]
        body_rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    quartiles = sorted({q for r in rows for q in r.quartiles})
    q_rows = []
    for r in rows:
        cells = [
            r.model,
            *(_metric_text(r.quartiles.get(q, {}).get(plot_metric, math.nan)) for q in quartiles),
        ]
        q_rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    guarantees = []
    seen: set[str] = set()
    for r in rows:
        if r.guarantee is None or r.model in seen:
            continue
        seen.add(r.model)
        paras = "".join(
            f"<p>{html.escape(line)}</p>" for line in r.guarantee.explain().splitlines()
        )
        guarantees.append(f"<section><h3>{html.escape(r.model)}</h3>{paras}</section>")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    q_table = (
        f"""<h2>By user activity ({html.escape(plot_metric)})</h2>
<p class="small">Evaluated users split into quartiles of their training history length: Q1 holds the
lightest users, who lose most to privacy noise.</p>
<table><thead><tr><th>model</th>{"".join(f"<th>{q}</th>" for q in quartiles)}</tr></thead>
<tbody>{"".join(q_rows)}</tbody></table>"""
        if quartiles
        else ""
    )
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; line-height: 1.45; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
section {{ border-left: 3px solid #4a7; padding-left: 1rem; margin: 1rem 0; }}
.small {{ color: #666; font-size: .85rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="small">Dataset: {html.escape(dataset)} · generated {stamp} by privrec</p>
<ul class="small">{note_html}</ul>
<h2>Privacy-utility curve</h2>
<img alt="{html.escape(plot_metric)} against epsilon" src="data:image/png;base64,{data}">
<p class="small">Error bars: standard deviation over independent noise draws of each private model
(fresh CSPRNG noise per fit). Dashed levels: non-private baselines.</p>
<h2>Results</h2>
<table><thead><tr>{head}</tr></thead>
<tbody>{"".join(body_rows)}</tbody></table>
{q_table}
<h2>What each private model promises</h2>
{"".join(guarantees) or "<p>No private model in this report.</p>"}
</body></html>
"""
    out.write_text(doc, encoding="utf-8")
    return out


def write_json_report(path: str | Path, rows: Sequence[ReportRow], *, dataset: str, k: int) -> Path:
    """The report's numbers as JSON: rows (mean, std, quartiles, settings) and guarantees."""
    from privrec import __version__

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "privrec_version": __version__,
        "dataset": dataset,
        "k": k,
        # as the HTML report says: the metrics are computed without noise on held-out data
        "not_private": (
            "metrics, standard deviations and per-quartile values are computed without noise on "
            "held-out data: they are for the data holder, not for release; non-private rows "
            "(epsilon null) are baselines with no guarantee at all"
        ),
        "rows": [r.to_dict() for r in rows],
        "guarantees": {
            r.model: r.guarantee.model_dump(mode="json") for r in rows if r.guarantee is not None
        },
    }
    out.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return out


def _metric_text(v: float) -> str:
    """A metric as printed; a withheld one (a group of too few users) as "—"."""
    return "—" if math.isnan(v) else f"{v:.4f}"
