"""``privrec silo …``: cross-silo DPALS / DPEASE over two non-colluding aggregation servers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from privrec.cli.common import console, handle_errors
from privrec.errors import ConfigError

# ------------------------------------------------------- silo: cross-silo DPALS
silo_app = typer.Typer(
    help="Cross-silo DPALS or DPEASE over two non-colluding aggregation servers (docs/cross_silo.md).",
    no_args_is_help=True,
)
_RosterOpt = Annotated[Path, typer.Option("--roster", help="roster.json from `privrec silo keys`.")]
_KeyOpt = Annotated[Path, typer.Option("--key", help="This party's <name>.key (secret).")]
_TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for any peer.")]


@silo_app.command("keys")
def silo_keys(
    out: Annotated[
        Path, typer.Argument(help="Directory for roster.json and the <name>.key files.")
    ],
    silos: Annotated[int, typer.Option("--silos", min=1, help="Number of silos K.")] = 3,
    host: Annotated[str, typer.Option("--host", help="Address the listening roles use.")] = (
        "127.0.0.1"
    ),
    ports: Annotated[
        str, typer.Option("--ports", help="Ports of driver,server0,server1 (comma-separated).")
    ] = "7100,7101,7102",
) -> None:
    """Create static X25519 keys and the public roster for driver, 2 servers and K silos."""
    from privrec.secure.channel import check_port
    from privrec.secure.silo import setup_keys

    with handle_errors():
        raw = [p.strip() for p in ports.split(",")]
        if len(raw) != 3 or not all(p.isdigit() for p in raw):
            raise ConfigError(f"--ports needs three ports driver,server0,server1, found {ports!r}")
        port_list = [check_port(int(p), "--ports") for p in raw]
        roster, _ = setup_keys(out, silos, host=host, ports=port_list)
        console.print(
            f"wrote {out / 'roster.json'} (public) and {len(roster.parties)} key files "
            "(give each party only its own .key)"
        )


@silo_app.command("serve")
def silo_serve(
    roster: _RosterOpt,
    key: _KeyOpt,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The run's public config.json (written by `train` in its checkpoint "
            "directory): the server then refuses any step with less noise than it requires.",
        ),
    ] = None,
    timeout: _TimeoutOpt = 60.0,
) -> None:
    """Run an aggregation server for one training session."""
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import AggregationServer, load_config

    with handle_errors():
        cfg = None if config is None else load_config(config.read_text())
        AggregationServer(
            Identity.load(key), Roster.load(roster), timeout=timeout, config=cfg
        ).run()


@silo_app.command("join")
def silo_join(
    roster: _RosterOpt,
    key: _KeyOpt,
    data: Annotated[Path, typer.Option("--data", help="This silo's `user item item …` file.")],
    n_items: Annotated[int, typer.Option("--n-items", min=1, help="Shared catalogue size.")],
    timeout: _TimeoutOpt = 60.0,
) -> None:
    """Join a training session as a silo with its own users' data (item ids < n_items)."""
    import scipy.sparse as sp

    from privrec.data.loaders import read_user_item_lists
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import Silo

    with handle_errors():
        users, items, all_users = read_user_item_lists(data)
        if items.size and int(items.max()) >= n_items:
            raise ConfigError(f"{data}: item id {int(items.max())} ≥ --n-items {n_items}")
        rows = np.searchsorted(all_users, users)
        x = sp.csr_matrix(
            (np.ones(len(rows)), (rows, items)), shape=(len(all_users), n_items), dtype=np.float64
        )
        Silo(Identity.load(key), Roster.load(roster), x, timeout=timeout).run()


@silo_app.command("train")
def silo_train(
    roster: _RosterOpt,
    key: _KeyOpt,
    n_items: Annotated[
        int | None, typer.Option("--n-items", min=1, help="Shared catalogue size.")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option("--epsilon", help="User-level ε over the union.")
    ] = None,
    delta: Annotated[float, typer.Option("--delta")] = 1e-6,
    factors: Annotated[int, typer.Option("--factors")] = 32,
    iterations: Annotated[int | None, typer.Option("--iterations")] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="dpals (item factors) or dpease (EASE weights from a noisy Gram matrix).",
        ),
    ] = "dpals",
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Directory written after every step.")
    ] = Path("silo-checkpoint"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint.")] = False,
    out: Annotated[
        Path, typer.Option("--out", help="Released item factors (.npz) + guarantee (.json).")
    ] = Path("silo-model.npz"),
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A SiloConfig or SiloEASEConfig as JSON (the file the servers get); replaces "
            "--model, --n-items, --epsilon, --delta, --factors and --iterations.",
        ),
    ] = None,
    timeout: _TimeoutOpt = 60.0,
) -> None:
    """Drive cross-silo DPALS or DPEASE training (the driver holds no data)."""
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import (
        AnyConfig,
        SiloConfig,
        SiloEASEConfig,
        SiloResult,
        load_config,
        make_driver,
    )

    with handle_errors():
        config: AnyConfig
        if config_file is not None:
            config = load_config(config_file.read_text())
        elif n_items is None or epsilon is None:
            raise ConfigError("--n-items and --epsilon are required (or give --config)")
        elif model == "dpease":
            config = SiloEASEConfig(epsilon=epsilon, delta=delta, n_items=n_items)
        elif model == "dpals":
            config = SiloConfig(
                epsilon=epsilon,
                delta=delta,
                n_items=n_items,
                factors=factors,
                iterations=iterations,
            )
        else:
            raise ConfigError(f"--model must be dpals or dpease, got {model!r}")
        driver = make_driver(
            Identity.load(key),
            Roster.load(roster),
            config,
            checkpoint=checkpoint,
            resume=resume,
            timeout=timeout,
        )
        result = driver.train()
        if isinstance(result, SiloResult):
            np.savez(
                out,
                item_factors=result.item_factors,
                head_items=result.head_items,
                noisy_counts=result.noisy_counts,
                popularity_blend=np.asarray(result.popularity_blend),
            )
            what = f"{len(result.head_items)} head items × {result.item_factors.shape[1]} factors"
        else:
            np.savez(
                out,
                weights=result.weights,
                head_items=result.head_items,
                item_popularity=result.item_popularity,
                popularity_blend=np.asarray(result.popularity_blend),
            )
            what = f"EASE weights over {len(result.head_items)} items"
        out.with_suffix(".json").write_text(result.guarantee.to_json())
        console.print(
            f"released {out} ({what}); "
            f"user-level ε = {result.guarantee.epsilon:.4g} at δ = {config.delta:g} "
            "(RDP accountant)"
        )
        console.print("per-release seconds: " + ", ".join(f"{s:.2f}" for s in result.round_seconds))
