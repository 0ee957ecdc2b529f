"""The experiment as a self-contained HTML page (plots embedded) and as Markdown tables.

:func:`write_report` writes the JSON and Markdown results before it draws any plot: the fits
behind them may have been charged to a budget, and a plotting failure must not lose what was
paid for (it leaves an HTML page without figures and a :class:`ReportWarning`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privrec.evaluation.protocol import approx_count, round_count
from privrec.experiments.runner import ExperimentResult
from privrec.experiments.stats import FEW_DRAWS_WIDENING, MIN_USEFUL_DRAWS, PairedComparison

__all__ = ["ReportWarning", "to_markdown", "write_report"]


class ReportWarning(UserWarning):
    """Part of a report could not be produced (e.g. its plots); the results were written."""


#: characters escaped with a backslash in Markdown text: ``|`` ends a table cell, ``\\``
#: escapes, ``<``/``>`` start raw HTML, ``*``, ``_``, ``~`` and backticks start emphasis,
#: strike-through or code, ``[``/``]`` a link or image (a variant named ``[x](https://…)``)
_MD_SPECIAL = re.compile(r"([\\|<>*`\[\]_~])")
#: a Markdown backslash escape of an ASCII punctuation character
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
#: an unescaped ``|`` (a table cell boundary)
_MD_CELL = re.compile(r"(?<!\\)((?:\\\\)*)\|")


#: characters that end a line somewhere (``str.splitlines``, Unicode): besides ASCII controls
_BREAKS = frozenset("\x7f\x85\u2028\u2029")


def _md(text: object) -> str:
    """``text`` safe inside a Markdown table cell or paragraph: special characters escaped and
    line breaks (and other control characters) made spaces. A variant named ``"a|b"`` or with
    a newline would otherwise add a column or end the table."""
    flat = "".join(" " if ord(c) < 32 or c in _BREAKS else c for c in str(text))
    return _MD_SPECIAL.sub(r"\\\1", flat)


def _md_unescape(text: str) -> str:
    return _MD_ESCAPE.sub(r"\1", text)


def _md_cells(line: str) -> list[str]:
    """The cells of a Markdown table row, split at unescaped ``|`` only, unescaped."""
    cells = _MD_CELL.sub(lambda m: m.group(1) + "\x00", line.strip()).split("\x00")
    if cells and not cells[0].strip():
        cells = cells[1:]  # before the leading "|"
    if cells and not cells[-1].strip():
        cells = cells[:-1]  # after the trailing "|"
    return [_md_unescape(c.strip()) for c in cells]


def _tex_safe(text: str) -> str:
    """A label for matplotlib: ``$`` would start mathematics (and may fail to parse)."""
    return text.replace("$", r"\$")


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
    names = [_tex_safe(v.name) for v in res.variants]
    # 1. mean metric per variant, the spread of the noise draws as error bars
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        means = [v.means[key] for v in res.variants]
        # clipped at 0: with identical draws, mean − min can come out as −6e-17 by rounding,
        # and matplotlib refuses negative error bars
        lo = [max(0.0, v.means[key] - min(v.draw_means[key])) for v in res.variants]
        hi = [max(0.0, max(v.draw_means[key]) - v.means[key]) for v in res.variants]
        ax.bar(range(len(names)), means, yerr=[lo, hi], capsize=4, color="#4c78a8")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{key} (bars: min–max over draws)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.append(("Metric per variant", _png(fig)))
    # 2. difference to the baseline per activity group, with the draw-level intervals
    others = [v for v in res.variants if v.comparisons]
    if others:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
        width = 0.8 / len(others)
        for ax, key in zip(axes[0], keys, strict=True):
            for i, v in enumerate(others):
                # no bar where there is no honest interval (the draws did not vary)
                cells = [
                    c if c is not None and not c.identical_draws else None
                    for c in (v.group_comparisons.get(g, {}).get(key) for g in res.groups)
                ]
                x = np.arange(len(res.groups)) + i * width
                mean = [c.mean_diff if c else np.nan for c in cells]
                err = [
                    [max(0.0, c.mean_diff - c.ci_low) if c else 0.0 for c in cells],
                    [max(0.0, c.ci_high - c.mean_diff) if c else 0.0 for c in cells],
                ]
                ax.bar(
                    x,
                    mean,
                    width=width,
                    yerr=err,
                    capsize=3,
                    label=_tex_safe(f"{v.name} − {v.compared_to}"),
                )
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(np.arange(len(res.groups)) + width * (len(others) - 1) / 2)
            ax.set_xticklabels(
                [_tex_safe(g) for g in res.groups], rotation=20, ha="right", fontsize=8
            )
            ax.set_title(f"{key}: variant − its reference", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        conf = res.config.experiment.confidence
        out.append(
            (
                f"Difference to the baseline by user activity ({conf:.0%} intervals, "
                "noise draws as the unit)",
                _png(fig),
            )
        )
    return out


def _cell(c: PairedComparison) -> str:
    """``+0.0123 [-0.0040, +0.0286]``, marked ``†`` when too few draws make it wide; no
    interval (``‡``) when the draws did not vary: it would count only the users."""
    if c.identical_draws:
        return f"{c.mean_diff:+.4f} [no interval ‡]"
    mark = " †" if c.few_draws else ""
    return f"{c.mean_diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]{mark}"


def _p(c: PairedComparison) -> str:
    return "—" if c.identical_draws else f"{c.p_value:.2g}"


def _count(n: int | None, none: str) -> str:
    return none if n is None else f"{round_count(n):,}"


def to_markdown(res: ExperimentResult) -> str:
    """Summary tables: metrics and ε per variant, paired comparisons, per-group comparisons.

    Caveats ("too few noise draws", "draws identical") come first, before any number they
    qualify. Names from the experiment are escaped (:func:`_md`): a ``|`` or a line break in
    a variant's name must not add a column or end a table.
    """
    keys = list(res.variants[0].means)
    spec = res.config.experiment
    lines = [
        f"Split: {res.split}; {approx_count(res.n_users)} evaluated users, "
        f"{approx_count(res.n_items)} items; "
        f"{spec.repeats} noise draws per variant; baseline: {_md(res.baseline)}.",
        "",
    ]
    for note in res.notes():
        lines += [f"**Warning: {_md(note)}.**", ""]
    lines += [
        "| variant | model | ε per model | ε of all draws | " + " | ".join(keys) + " |",
        "|---|---|---:|---:|" + "---:|" * len(keys),
    ]
    for v in res.variants:
        eps = "—" if v.epsilon is None else f"{v.epsilon:.3g}"
        all_ = "—" if v.epsilon_all_draws is None else f"{v.epsilon_all_draws:.3g}"
        lines.append(
            f"| {_md(v.name)} | {_md(v.model)} | {eps} | {all_} | "
            + " | ".join(f"{v.means[k]:.4f}" for k in keys)
            + " |"
        )
    comp = [v for v in res.variants if v.comparisons]
    if comp:
        ckeys = list(comp[0].comparisons)
        lines += [
            "",
            f"Paired differences to the reference variant (mean [{spec.confidence:.0%} interval], "
            "p-value). The noise draw is the unit of replication: one draw moves every user's "
            "score at once, so the interval rests on the spread between draws (t with draws − 1 "
            "degrees of freedom) plus the users' own spread. Planning, to detect "
            f"{spec.detect:g} at α = {spec.alpha:g} with power {spec.power:g}: users needed at "
            f"{spec.repeats} draws (∞: the draws' own variance hides it, add draws instead), "
            "draws needed with these users (> 1000: add users), and the power now:",
            "",
            "| variant | vs | metric | difference | p | users needed | draws needed | power now |",
            "|---|---|---|---|---|---:|---:|---:|",
        ]
        for v in comp:
            for k in ckeys:
                c = v.comparisons[k]
                planned = k in v.power
                need = _count(v.users_needed.get(k), "∞") if planned else "—"
                draws = v.repeats_needed.get(k)
                more = ("> 1000" if draws is None else str(draws)) if planned else "—"
                pw = f"{v.power[k]:.2f}" if planned else "—"
                lines.append(
                    f"| {_md(v.name)} | {_md(v.compared_to)} | {k} | {_cell(c)} | {_p(c)} | "
                    f"{need} | {more} | {pw} |"
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
                    f"| {_md(v.name)} | {_md(g)} ({approx_count(n)}) | "
                    + " | ".join(
                        _cell(cells[k]) if k in cells else "—"
                        for k in ckeys
                        if not k.startswith("coverage")
                    )
                    + " |"
                )
        shown = [c for v in comp for c in v.comparisons.values()] + [
            c for v in comp for g in v.group_comparisons.values() for c in g.values()
        ]
        if any(c.identical_draws for c in shown):
            lines += [
                "",
                "‡ no interval: the difference was the same in every noise draw although a side "
                "is private, so the variance between draws is not measured and an interval would "
                "count only the users.",
            ]
        if any(c.few_draws for c in shown):
            lines += [
                "",
                f"† too few noise draws for a useful interval: fewer than {MIN_USEFUL_DRAWS}, or "
                f"more than {FEW_DRAWS_WIDENING:g}× as wide as it would be with many draws (t at "
                "draws − 1 degrees of freedom); run more repeats.",
            ]
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
            rows.append(_md_cells(line))
        else:
            flush()
            if line.startswith("**Warning"):
                text = html.escape(_md_unescape(line.replace("**", "")))
                out.append(f'<p style="color:#a00;font-weight:bold">{text}</p>')
            elif line.strip():
                out.append(f"<p>{html.escape(_md_unescape(line.replace('**', '')))}</p>")
    flush()
    return "\n".join(out)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then a rename), making
    its folder first: an output that is half-written, or lost to a missing folder after the
    fits were charged, is not a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(
    res: ExperimentResult,
    path: str | Path,
    *,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
) -> Path:
    """Write the HTML report and, optionally, the full results as JSON and the summary tables
    as Markdown.

    The JSON and Markdown are written first, and each file whole or not at all: the fits may
    have been charged to a budget, so nothing that fails later (a plot) may lose them.

    Parameters
    ----------
    res
        The experiment's results.
    path
        The HTML page (plots embedded).
    json_path, markdown_path
        Optional further outputs.

    Returns
    -------
    Path
        The HTML page.

    Warns
    -----
    ReportWarning
        When the plots cannot be drawn: the page is then written without them, after the other
        files, and says so.
    """
    out = Path(path)
    md = to_markdown(res)
    if json_path is not None:
        _write_atomic(Path(json_path), json.dumps(res.to_dict(), indent=2) + "\n")
    if markdown_path is not None:
        _write_atomic(Path(markdown_path), md)
    try:
        plots = _plots(res)
    except Exception as exc:  # matplotlib raises many kinds; the results must still be written
        written = [str(p) for p in (json_path, markdown_path) if p is not None]
        warnings.warn(
            f"the report's plots could not be drawn ({type(exc).__name__}: {exc}); {out} is "
            "written without them"
            + (f", the results are in {', '.join(written)}" if written else ""),
            ReportWarning,
            stacklevel=2,
        )
        missing = f"<p><b>The plots could not be drawn</b> ({html.escape(type(exc).__name__)}).</p>"
        figures = missing
    else:
        figures = "\n".join(
            f'<h3>{html.escape(t)}</h3><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
            for t, b in plots
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>privrec experiment</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>Privacy variants: offline A/B</h1>
<p>Generated {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} in {res.seconds:.0f} s. Every variant was
trained on the same split with the same noise-draw seeds; differences are paired by user and draw,
and the intervals treat the noise draw as the unit of replication (one draw moves every user at once),
so they are wide when there are few draws.
"ε of all draws" composes every model the experiment trained (what it would cost if all were released);
the models were not released. Seeded noise is reproducible and not private: experiments only.
Metrics are measured on held-out data and are not differentially private: user counts are rounded
to two significant figures, statistics to a few, and activity groups are labelled by rounded
quantile edges.</p>
{_md_table_to_html(md)}
{figures}
</body></html>
"""
    _write_atomic(out, page)
    return out
