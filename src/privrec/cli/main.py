"""The ``privrec`` command line.

Errors the library detects (bad data, bad config, unknown users) print one
clear line and exit with status 1; ``--debug`` shows the traceback instead.

This module only assembles the commands; each lives in its own module below
:mod:`privrec.cli` and shares :mod:`privrec.cli.common`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from privrec.cli import budgets, recommend, report, training
from privrec.cli.audit import audit_app as privacy_audit_app
from privrec.cli.common import STATE
from privrec.cli.data import data_app
from privrec.cli.experiment import experiment_app
from privrec.cli.federated import federated_app
from privrec.cli.governance import (
    audit_app as audit_log_app,
)
from privrec.cli.governance import (
    consent_app,
    forget,
    keys_app,
    ledger_app,
    lineage,
    policy_app,
)
from privrec.cli.he import he_app
from privrec.cli.monitor import monitor_app
from privrec.cli.mpc import mpc_app
from privrec.cli.privacy import privacy_app
from privrec.cli.risk import check, risk
from privrec.cli.serve import serve
from privrec.cli.silo import silo_app

app = typer.Typer(
    name="privrec",
    help="Privacy-preserving recommender systems: train, evaluate and serve recommenders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    STATE["debug"] = debug


app.add_typer(data_app, name="data")
app.command()(training.train)
app.command()(training.evaluate)
app.command()(recommend.recommend)
app.command()(report.report)
app.command()(training.demo)
app.command()(budgets.tune)
app.command("train-tiers")(budgets.train_tiers)
app.add_typer(privacy_app, name="privacy")
app.add_typer(he_app, name="he")
app.add_typer(silo_app, name="silo")
app.add_typer(mpc_app, name="mpc")
app.add_typer(federated_app, name="federated")
app.add_typer(ledger_app, name="ledger")
app.add_typer(keys_app, name="keys")
app.add_typer(policy_app, name="policy")
app.add_typer(consent_app, name="consent")
app.command()(forget)
app.command()(lineage)
app.add_typer(audit_log_app, name="audit-log")
app.add_typer(privacy_audit_app, name="audit")
app.add_typer(experiment_app, name="experiment")
app.add_typer(monitor_app, name="monitor")
app.command()(risk)
app.command()(check)
app.command()(serve)


def _suggest_once(typer_app: typer.Typer) -> None:
    """Turn off typer's own "Did you mean …?" on ``typer_app`` and every group below it.

    click (8.2 and later) already ends its "No such command" error with the close matches;
    typer appends them a second time, so ``privrec trian`` said "Did you mean 'train'?" twice.
    """
    typer_app.suggest_commands = False
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _suggest_once(group.typer_instance)


_suggest_once(app)


def run() -> None:  # pragma: no cover - console entry point helper
    app()


def main() -> None:
    """The ``privrec`` script: :data:`app`, with usage errors (an unknown option, a value that
    does not parse) printed as one line like every other error, instead of click's framed box."""
    import click

    from privrec.cli.common import err_console

    try:
        code = app(prog_name="privrec", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:  # the help was printed already, as before
        sys.exit(2)
    except click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "privrec"
        err_console.print(
            f"error: UsageError: {exc.format_message()} (see '{where} --help')",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except click.exceptions.Abort:
        err_console.print("aborted", highlight=False, markup=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
