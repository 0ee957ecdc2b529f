"""``privrec experiment run``: offline A/B of privacy variants from a TOML file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from privrec.cli.common import check_output, console, err_console, handle_errors, print_plain
from privrec.errors import PrivacyWarning

experiment_app = typer.Typer(
    help="Compare privacy variants on one split with paired statistics.", no_args_is_help=True
)


@experiment_app.command("run")
def experiment_run(
    config: Annotated[
        Path, typer.Argument(help="Experiment TOML ([data], [experiment], [[variant]]).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML report.")] = Path(
        "experiment.html"
    ),
    json_out: Annotated[Path | None, typer.Option("--json", help="All results as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Summary tables as Markdown.")] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="PRIVREC_DB", help="Charge every fit to this ledger."),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", envvar="PRIVREC_API_KEY", show_default=False)
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Ledger dataset to charge (with --db).")
    ] = None,
    purpose: Annotated[str | None, typer.Option(help="Purpose recorded with the charges.")] = None,
) -> None:
    """Train each variant several times on the same split and compare it with the baseline."""
    from privrec.experiments import load_experiment, run_experiment, write_report
    from privrec.experiments.report import to_markdown

    with handle_errors():
        for path in (output, json_out, markdown):  # before any fit is charged
            check_output(path)
        cfg = load_experiment(config)
        charge: Any = None
        split = None
        if db is not None and dataset is None:
            warnings.warn(
                "--db (or $PRIVREC_DB) without --dataset: the fits are charged to no budget",
                PrivacyWarning,
                stacklevel=1,
            )
        if dataset is not None:
            from privrec.experiments import LedgerCharge
            from privrec.experiments.runner import load_governed_split
            from privrec.governance import Ledger

            ledger = Ledger.connect(db, key)
            # the dataset's policy first, as for training
            split, governed = load_governed_split(cfg.data, ledger, dataset)
            charge = LedgerCharge(ledger, dataset, purpose=purpose, data=governed)
        with err_console.status("running the experiment…") as status:
            res = run_experiment(
                cfg, charge=charge, split=split, progress=lambda m: status.update(m)
            )
        print_plain(to_markdown(res))  # Markdown: unwrapped, each table row on one line
        # the JSON and Markdown are written before the HTML draws its plots (write_report):
        # the fits may be charged already, and a failing plot must not lose their results
        write_report(res, output, json_path=json_out, markdown_path=markdown)
        for path in (json_out, markdown):
            if path is not None:
                console.print(f"results → {path}")
        console.print(f"report → {output}")
