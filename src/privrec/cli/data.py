"""``privrec data …``: inspect interaction files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from privrec.cli.common import DATA_HELP, console, handle_errors, load_data

data_app = typer.Typer(help="Inspect interaction data.", no_args_is_help=True)


@data_app.command("stats")
def data_stats(
    path: Annotated[
        Path,
        typer.Argument(help=DATA_HELP),
    ],
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


@data_app.command("shard")
def data_shard(
    path: Annotated[
        Path, typer.Argument(help="Interaction file (any format) or Parquet directory.")
    ],
    out: Annotated[Path, typer.Argument(help="New directory for the user-sharded Parquet files.")],
    shards: Annotated[int, typer.Option(help="Number of shard files.", min=1, max=4096)] = 16,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="File format (inferred when omitted).")
    ] = None,
) -> None:
    """Write interactions as Parquet shards partitioned by a hash of the user id (for --engine ray).

    A Parquet source (a *.parquet file or a directory of them, columns user, item and optionally
    weight, timestamp) is streamed in batches; any other file is loaded first.
    """
    from privrec.engine.parquet import write_user_shards

    with handle_errors():
        if path.is_dir() or (path.suffix == ".parquet" and fmt in (None, "parquet")):
            import pyarrow.dataset as ds

            names = set(ds.dataset(str(path), format="parquet").schema.names)
            src = write_user_shards(
                path, out, shards,
                weight_col="weight" if "weight" in names else None,
                timestamp_col="timestamp" if "timestamp" in names else None,
            )  # fmt: skip
        else:
            src = write_user_shards(load_data(path, fmt), out, shards)
        n = len(src.shard_files())
        console.print(f"wrote {n} shard files ({', '.join(src.columns)}) → {out}", highlight=False)
