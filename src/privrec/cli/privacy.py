"""``privrec privacy …``: what a saved private model promises."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from privrec.cli.common import console, handle_errors
from privrec.errors import ConfigError

privacy_app = typer.Typer(
    help="Inspect the privacy guarantee of a saved model.", no_args_is_help=True
)


@privacy_app.command("explain")
def privacy_explain(
    model_path: Annotated[Path, typer.Argument(help="A private model saved by `privrec train`.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the guarantee as JSON instead.")
    ] = False,
) -> None:
    """Print what a saved private model promises, in numbers and in plain words."""
    from privrec.models import load_model

    with handle_errors():
        model = load_model(model_path)
        guarantee = getattr(model, "guarantee_", None)
        if guarantee is None:
            raise ConfigError(
                f"{model.name} is not a private model: it carries no privacy guarantee"
            )
        if json_out:
            console.print_json(guarantee.to_json())
            return
        console.print(guarantee.explain(), highlight=False)
        table = Table(
            "release", "accounting event", title="noisy releases (composed by the accountant)"
        )
        from privrec.privacy.events import describe_event

        for spent in guarantee.spent_events:
            table.add_row(spent.label, describe_event(spent.event))
        console.print(table)
