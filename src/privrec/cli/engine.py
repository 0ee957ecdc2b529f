"""``privrec train --engine ray``: a private model over a user-sharded Parquet directory on Ray.

Called by :func:`privrec.cli.training.train`; kept apart so that the single-machine command does
not import Ray. Prints one line per private step (a Ray cluster's training is usually watched
through its log).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from privrec.cli.common import check_delta_for_data, console, note, rounded
from privrec.errors import ConfigError


def train_distributed(
    model: Any,
    data_path: Path,
    *,
    output: Path,
    address: str | None,
    workers: int,
    threads: int,
    catalogue: Any,
    binarize: float | None,
    ledger: str | None,
    dataset: str | None,
    purpose: str | None,
    key: str | None,
    force_weak_delta: bool,
) -> None:
    """Fit ``model`` on a Ray cluster (``address``; ``None`` starts a local one) and save it."""
    from privrec.engine import ParquetSource, RayEngine

    if getattr(model, "mechanism_name", None) is None or model.name not in (
        "dpals",
        "dppopularity",
        "dpease",
    ):
        raise ConfigError(
            f"--engine ray trains dpals, dppopularity and dpease; {model.name} runs with "
            "--engine local"
        )
    source = ParquetSource.open(data_path, binarize=binarize)
    t0 = time.perf_counter()
    sizes: dict[str, int] = {}

    def loaded(n_users: int, nnz: int) -> None:
        sizes.update(users=n_users, nnz=nnz)
        check_delta_for_data(model.get_params(), _Sizes(n_users, nnz), force_weak_delta)
        note(
            f"ray: {workers} workers hold ≈ {rounded(n_users)} users "
            f"({time.perf_counter() - t0:.1f} s to read and filter)"
        )

    def progress(done: int, total: int) -> None:
        note(f"fitting {model.name} on ray: step {done}/{total} ({time.perf_counter() - t0:.1f} s)")

    with RayEngine(address, num_workers=workers, threads_per_worker=threads) as engine:
        if dataset is not None or ledger is not None:
            if dataset is None:
                raise ConfigError("--ledger needs --dataset NAME (the ledger dataset to charge)")
            from privrec.engine.governed import train_on_ray
            from privrec.governance.ledger import Ledger

            book = Ledger.connect(ledger, key)
            _, saved, charge = train_on_ray(
                book, model, engine, source, dataset=dataset, output=output, purpose=purpose,
                item_ids=catalogue, progress=progress, on_loaded=loaded,
            )  # fmt: skip
            console.print(f"ledger: charge {charge.id} committed on {dataset!r}", highlight=False)
        else:
            engine.fit(model, source, item_ids=catalogue, progress=progress, on_loaded=loaded)
            saved = model.save(output)
        moved = engine.last_group.bytes_reduced if engine.last_group is not None else 0
    console.print(
        f"fitted [bold]{model.name}[/] on ray ({workers} workers) on ≈ {rounded(sizes['users'])} users × "
        f"{len(model.item_ids_):,} items (≈ {rounded(sizes['nnz'])} interactions) in "
        f"{time.perf_counter() - t0:.1f} s, {moved / 1e6:.1f} MB reduced → {saved}",
        highlight=False,
    )
    g = model.guarantee_
    console.print(
        f"privacy: ({g.epsilon:.3g}, {g.delta:.1e})-DP per {g.unit.value}; "
        f"`privrec privacy explain {saved}` says what that means",
        highlight=False,
    )


class _Sizes:
    def __init__(self, n_users: int, nnz: int) -> None:
        self.n_users, self.nnz = n_users, nnz
