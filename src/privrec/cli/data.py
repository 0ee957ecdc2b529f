"""``privrec data …``: inspect interaction files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from privrec.cli.common import console, handle_errors, load_data

data_app = typer.Typer(help="Inspect interaction data.", no_args_is_help=True)


@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="Interaction file.")],
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="File format (inferred when omitted).")
    ] = None,
) -> None:
    """Print users, items, interactions, density and activity quantiles of a file."""
    with handle_errors():
        data = load_data(path, fmt)
        uc, ic = data.user_counts, data.item_counts
        table = Table(title=str(path), show_header=False)
        rows = [
            ("users", f"{data.n_users:,}"),
            ("items", f"{data.n_items:,}"),
            ("interactions", f"{data.nnz:,}"),
            ("density", f"{data.density:.4%}"),
            ("per user (min / median / max)", f"{uc.min()} / {np.median(uc):g} / {uc.max()}"),
            ("per item (min / median / max)", f"{ic.min()} / {np.median(ic):g} / {ic.max()}"),
            (
                "values (min / max)",
                f"{data.matrix.data.min():g} / {data.matrix.data.max():g}" if data.nnz else "-",
            ),
            ("timestamps", "yes" if data.timestamps is not None else "no"),
        ]
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)
