"""``privrec report``: the privacy–utility comparison on the user's own data.

Splits the data as ``privrec evaluate`` does, fits each baseline once and each private model at
every ε (``--seeds`` noise draws each), and writes an HTML report with its plot (PNG beside it)
and, optionally, the numbers as JSON — the same code as ``privrec demo``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from privrec.cli.common import (
    Protocol,
    build_model,
    check_delta_for_data,
    check_output,
    console,
    fit_with_progress,
    handle_errors,
    is_private,
    make_split,
    number_check,
    parse_epsilons,
    parse_params,
    rounded,
)
from privrec.errors import ConfigError


def report(
    data_path: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Interaction file, or a folder of train/valid/test files."
        ),
    ],
    model_name: Annotated[
        list[str],
        typer.Option(
            "--model", "-m", help="Model name (repeat): baselines and private models together."
        ),
    ],
    epsilons: Annotated[
        str,
        typer.Option(help="Comma-separated ε values for the private models, e.g. 0.5,1,2,5."),
    ] = "0.5,1,2,5",
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            min=1,
            max=50,
            help="Noise draws per private model and ε (fresh CSPRNG noise each): error bars.",
        ),
    ] = 1,
    delta: Annotated[
        float,
        typer.Option(help="δ of the private models.", callback=number_check(gt=0, lt=1)),
    ] = 1e-6,
    unit: Annotated[str, typer.Option(help="Privacy unit of the private models.")] = "user",
    protocol: Annotated[Protocol, typer.Option(help="Split protocol.")] = Protocol.holdout,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="key=value for every model, or model.key=value for one."
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Cut-off of Recall/NDCG.")] = 20,
    binarize: Annotated[
        float | None,
        typer.Option(help="Keep values >= threshold as 1.", callback=number_check()),
    ] = None,
    seed: Annotated[int, typer.Option(help="Split seed (never the noise).")] = 0,
    test_fraction: Annotated[
        float,
        typer.Option(help="Holdout fraction per user.", callback=number_check(gt=0, lt=1)),
    ] = 0.2,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML report (PNG beside it).")] = Path(
        "report.html"
    ),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the numbers as JSON.")
    ] = None,
    force_weak_delta: Annotated[
        bool, typer.Option("--force-weak-delta", help="Allow δ not below 1/number of users.")
    ] = False,
) -> None:
    """Privacy–utility curve on your own split: baselines and private models at every ε."""
    from privrec.report import ModelSpec, run_comparison, scoped_params, write_html_report
    from privrec.report.html import write_json_report

    with handle_errors():
        eps = parse_epsilons(epsilons)
        if out.suffix.lower() not in (".html", ".htm"):
            raise ConfigError(f"--out must be an .html file, got {out.name!r}")
        check_output(out)
        check_output(out.with_suffix(".png"))
        check_output(json_out)
        params = parse_params(param)
        specs = [ModelSpec(n, scoped_params(params, n)) for n in model_name]
        for spec in specs:  # validate names and parameters before any work
            privacy = {"epsilon": eps[0], "delta": delta, "unit": unit}
            build_model(spec.name, spec.params, privacy)
        split = make_split(protocol, data_path, fmt, binarize, seed, test_fraction)
        if any(is_private(s.name) for s in specs):
            check_delta_for_data({"delta": delta, "unit": unit}, split.train, force_weak_delta)
        t0 = time.perf_counter()

        def fit(label: str, model: Any, train: Any) -> Any:
            return fit_with_progress(model, train, label)

        rows = run_comparison(
            split, specs, epsilons=eps, delta=delta, unit=unit, draws=seeds, k=k, fit=fit
        )
        table = Table(title=f"Recall@{k} / NDCG@{k} (mean ± std over {seeds} noise draw(s))")
        for col in ("model", "ε", f"Recall@{k}", f"NDCG@{k}", "lightest quartile"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in rows:
            light = r.quartiles.get("Q1", {}).get(f"Recall@{k}", float("nan"))
            table.add_row(
                r.model,
                f"{r.epsilon:g}" if r.private else "∞",
                f"{r.metrics[f'Recall@{k}']:.4f} ± {r.spread.get(f'Recall@{k}', 0):.4f}",
                f"{r.metrics[f'NDCG@{k}']:.4f}",
                f"{light:.4f}",
            )
        console.print(table)
        train = split.train
        dataset = (
            f"{data_path.name} ({rounded(train.n_users)} training users × "
            f"{rounded(train.n_items)} items; {protocol.value} split, seed {seed})"
        )
        notes = [
            f"δ = {delta:g}, privacy unit: {unit}; {seeds} noise draw(s) per private model and ε",
            "metrics are computed without noise on your held-out data: they are for you, not "
            "for release",
        ]
        html = write_html_report(
            out,
            rows,
            title="privrec privacy-utility report",
            dataset=dataset,
            metric_names=[f"Recall@{k}", f"NDCG@{k}", f"Coverage@{k}"],
            plot_metric=f"Recall@{k}",
            notes=notes,
        )
        if json_out is not None:
            write_json_report(json_out, rows, dataset=dataset, k=k)
        console.print(
            f"report: {html} (plot: {html.with_suffix('.png')}"
            + (f", numbers: {json_out}" if json_out else "")
            + f") in {time.perf_counter() - t0:.0f} s"
        )
