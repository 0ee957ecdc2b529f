"""The experiment as a self-contained HTML page (plots embedded) and as Markdown tables."""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privrec.experiments.runner import ExperimentResult

__all__ = ["to_markdown", "write_report"]


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(res: ExperimentResult) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out: list[tuple[str, str]] = []
    keys = [k for k in res.variants[0].means if not k.startswith("coverage")]
    names = [v.name for v in res.variants]
    # 1. mean metric per variant, the spread of the noise draws as error bars
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        means = [v.means[key] for v in res.variants]
        lo = [v.means[key] - min(v.draw_means[key]) for v in res.variants]
        hi = [max(v.draw_means[key]) - v.means[key] for v in res.variants]
        ax.bar(range(len(names)), means, yerr=[lo, hi], capsize=4, color="#4c78a8")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{key} (bars: min–max over draws)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.append(("Metric per variant", _png(fig)))
    # 2. difference to the baseline per activity group, with paired bootstrap intervals
    others = [v for v in res.variants if v.comparisons]
    if others:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
        width = 0.8 / len(others)
        for ax, key in zip(axes[0], keys, strict=True):
            for i, v in enumerate(others):
                cells = [v.group_comparisons.get(g, {}).get(key) for g in res.groups]
                x = np.arange(len(res.groups)) + i * width
                mean = [c.mean_diff if c else np.nan for c in cells]
                err = [
                    [c.mean_diff - c.ci_low if c else 0 for c in cells],
                    [c.ci_high - c.mean_diff if c else 0 for c in cells],
                ]
                ax.bar(
                    x, mean, width=width, yerr=err, capsize=3, label=f"{v.name} − {v.compared_to}"
                )
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(np.arange(len(res.groups)) + width * (len(others) - 1) / 2)
            ax.set_xticklabels(res.groups, rotation=20, ha="right", fontsize=8)
            ax.set_title(f"{key}: variant − its reference", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        out.append(
            ("Difference to the baseline by user activity (95% paired bootstrap)", _png(fig))
        )
    return out


def _cell(c: Any) -> str:
    return f"{c.mean_diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"


def _p(c: Any) -> str:
    parts = [f"boot {c.p_bootstrap:.3g}"]
    if c.p_value == c.p_value:  # not NaN
        parts.append(f"t {c.p_value:.3g}")
    return ", ".join(parts)


def to_markdown(res: ExperimentResult) -> str:
    """Summary tables: metrics and ε per variant, paired comparisons, per-group comparisons."""
    keys = list(res.variants[0].means)
    lines = [
        f"Split: {res.split}; {res.n_users:,} evaluated users, {res.n_items:,} items; "
        f"{res.config.experiment.repeats} noise draws per variant; baseline: {res.baseline}.",
        "",
        "| variant | model | ε per model | ε of all draws | " + " | ".join(keys) + " |",
        "|---|---|---:|---:|" + "---:|" * len(keys),
    ]
    for v in res.variants:
        eps = "—" if v.epsilon is None else f"{v.epsilon:.3g}"
        all_ = "—" if v.epsilon_all_draws is None else f"{v.epsilon_all_draws:.3g}"
        lines.append(
            f"| {v.name} | {v.model} | {eps} | {all_} | "
            + " | ".join(f"{v.means[k]:.4f}" for k in keys)
            + " |"
        )
    comp = [v for v in res.variants if v.comparisons]
    if comp:
        ckeys = list(comp[0].comparisons)
        lines += [
            "",
            "Paired differences to the reference variant (mean [95% interval]; p-values: "
            "bootstrap, paired t-test over users); users needed to detect "
            f"{res.config.experiment.detect:g} at α = {res.config.experiment.alpha:g}, "
            f"power {res.config.experiment.power:g}:",
            "",
            "| variant | vs | metric | difference | p | users needed | power now |",
            "|---|---|---|---|---|---:|---:|",
        ]
        for v in comp:
            for k in ckeys:
                c = v.comparisons[k]
                need = v.users_needed.get(k)
                pw = v.power.get(k)
                lines.append(
                    f"| {v.name} | {v.compared_to} | {k} | {_cell(c)} | {_p(c)} | "
                    f"{'—' if need is None else f'{need:,}'} | {'—' if pw is None else f'{pw:.2f}'} |"
                )
        lines += [
            "",
            "By user activity (training interactions), paired differences to the reference variant:",
            "",
            "| variant | group (users) | "
            + " | ".join(k for k in ckeys if not k.startswith("coverage"))
            + " |",
            "|---|---|" + "---|" * len([k for k in ckeys if not k.startswith("coverage")]),
        ]
        for v in comp:
            for g, n in zip(res.groups, res.group_sizes, strict=True):
                cells = v.group_comparisons.get(g, {})
                lines.append(
                    f"| {v.name} | {g} ({n:,}) | "
                    + " | ".join(
                        _cell(cells[k]) if k in cells else "—"
                        for k in ckeys
                        if not k.startswith("coverage")
                    )
                    + " |"
                )
    return "\n".join(lines) + "\n"


def _md_table_to_html(md: str) -> str:
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            head, body = rows[0], rows[2:]
            out.append(
                "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
            )
            for r in body:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip().replace("**", "") for c in line.strip("|").split("|")])
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line.replace('**', ''))}</p>")
    flush()
    return "\n".join(out)


def write_report(
    res: ExperimentResult, path: str | Path, *, json_path: str | Path | None = None
) -> Path:
    """Write the HTML report (and, optionally, the full results as JSON)."""
    out = Path(path)
    figures = "\n".join(
        f'<h3>{html.escape(t)}</h3><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
        for t, b in _plots(res)
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>privrec experiment</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>Privacy variants: offline A/B</h1>
<p>Generated {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} in {res.seconds:.0f} s. Every variant was
trained on the same split with the same noise-draw seeds; differences are paired by user and draw.
"ε of all draws" composes every model the experiment trained (what it would cost if all were released);
the models were not released. Seeded noise is reproducible and not private: experiments only.</p>
{_md_table_to_html(to_markdown(res))}
{figures}
</body></html>
"""
    out.write_text(page, encoding="utf-8")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(res.to_dict(), indent=2) + "\n")
    return out
