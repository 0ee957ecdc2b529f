"""``privrec silo …``: cross-silo DPALS / DPEASE over two non-colluding aggregation servers.

``split`` turns one dataset into silo files plus the public item catalogue, ``config`` writes the
public run configuration every party checks, ``keys`` the roster and key files; then ``serve``
(×2), ``join`` (per silo) and ``train`` run the session (docs/cross_silo.md).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from privrec.cli.common import (
    SignKeyOpt,
    console,
    err_console,
    existing_data,
    handle_errors,
    load_data,
    signing_key,
)
from privrec.errors import ConfigError, PrivacyWarning

silo_app = typer.Typer(
    help="Cross-silo DPALS or DPEASE over two non-colluding aggregation servers (docs/cross_silo.md).",
    no_args_is_help=True,
)
_RosterOpt = Annotated[Path, typer.Option("--roster", help="roster.json from `privrec silo keys`.")]
_KeyOpt = Annotated[Path, typer.Option("--key", help="This party's <name>.key (secret).")]
_TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for any peer.")]
_ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config", help="The run's public configuration (run.json from `privrec silo config`)."
    ),
]
_ReleaseLogOpt = Annotated[
    Path | None,
    typer.Option(
        "--release-log",
        help="File counting the releases this party answered per run, kept across sessions "
        "(without it a driver restarting the session is answered afresh: a PrivacyWarning).",
    ),
]


def _unlogged(release_log: Path | None, who: str) -> None:
    if release_log is None:
        warnings.warn(
            f"{who} without --release-log counts the releases it answers for this session only: "
            "a driver that aborts and restarts the session is answered afresh and could average "
            "the noise of repeated releases away — give every session of the run the same file",
            PrivacyWarning,
            stacklevel=2,
        )


def _check_timeout(timeout: float) -> None:
    if not (timeout > 0 and np.isfinite(timeout)):
        raise ConfigError(f"--timeout must be a positive number of seconds, found {timeout}")


def _read_config(path: Path) -> Any:
    from privrec.secure.silo import load_config

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration {str(path)!r}: {exc}") from None
    return load_config(text)


def _writable(path: Path, what: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{what}: folder {str(parent)!r} does not exist")
    if path.exists() and path.is_dir():
        raise ConfigError(f"{what}: {str(path)!r} is a folder")


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
    """Create static X25519 keys (mode 0600) and the public roster for driver, 2 servers, K silos."""
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


@silo_app.command("split")
def silo_split(
    data: Annotated[
        Path,
        typer.Argument(
            help="Interaction file, LightGCN split folder (its train.txt is split), or shared "
            "dataset name (e.g. ml-1m-implicit-r3)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for silo<i>.txt and items.txt.")],
    silos: Annotated[int, typer.Option("--silos", min=1, help="Number of silos K.")] = 3,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random assignment of users.")] = 0,
) -> None:
    """Split one dataset's users at random over K silos (a demo or test of a real federation).

    Writes ``silo<i>.txt`` (``user item item …`` lines, items as catalogue indices, users as
    silo-local row numbers) and ``items.txt`` (the shared catalogue: external item ids in index
    order, assumed public), and prints the catalogue size the configuration needs.
    """
    with handle_errors():
        path = existing_data(data)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out: cannot create {str(out)!r}: {exc.strerror}") from None
        if path.is_dir() and (path / "train.txt").exists():
            from privrec.evaluation import load_split

            interactions = load_split(path, merge_valid_into_train=False).train
        else:
            interactions = load_data(path, fmt)
        x = interactions.matrix.tocsr()
        x.sort_indices()
        rng = np.random.default_rng(seed)
        owner = rng.integers(0, silos, size=x.shape[0])
        counts = []
        for i in range(silos):
            rows = np.flatnonzero(owner == i)
            lines = []
            for local, u in enumerate(rows.tolist()):
                items = x.indices[x.indptr[u] : x.indptr[u + 1]]
                if items.size:
                    lines.append(" ".join(str(v) for v in [local, *items.tolist()]))
            (out / f"silo{i + 1}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            counts.append(len(lines))
        item_ids = np.asarray(interactions.item_ids)
        (out / "items.txt").write_text(
            "\n".join(str(v) for v in item_ids.tolist()) + "\n", encoding="utf-8"
        )
        console.print(
            f"wrote {silos} silo files ({', '.join(str(c) for c in counts)} users) and "
            f"{out / 'items.txt'}: catalogue of {len(item_ids)} items",
            highlight=False,
        )


@silo_app.command("config")
def silo_config(
    out: Annotated[Path, typer.Option("--out", help="The public run configuration to write.")],
    epsilon: Annotated[float, typer.Option("--epsilon", help="User-level ε over the union.")],
    items: Annotated[
        Path | None,
        typer.Option("--items", help="The shared catalogue (items.txt of `silo split`)."),
    ] = None,
    n_items: Annotated[
        int | None, typer.Option("--n-items", min=1, help="Catalogue size, without --items.")
    ] = None,
    delta: Annotated[float, typer.Option("--delta")] = 1e-6,
    model: Annotated[
        str,
        typer.Option(
            "--model", help="dpals (item factors) or dpease (EASE weights from a noisy Gram)."
        ),
    ] = "dpals",
    factors: Annotated[int, typer.Option("--factors", help="DPALS embedding size.")] = 32,
    iterations: Annotated[int | None, typer.Option("--iterations", help="DPALS steps.")] = None,
    retries: Annotated[
        int,
        typer.Option(
            "--retries",
            min=0,
            help="Releases of each kind the parties may answer beyond the plan (a resumed run "
            "redoing a step); the noise pays for them.",
        ),
    ] = 0,
) -> None:
    """Write the run's public configuration (run.json): give the same file to both servers and
    the driver. Each run gets its own random run id (release logs count per run)."""
    import secrets

    import pydantic

    from privrec.secure.silo import SiloConfig, SiloEASEConfig
    from privrec.secure.silo_model import read_catalogue

    with handle_errors():
        if (items is None) == (n_items is None):
            raise ConfigError("give the catalogue as --items FILE or its size as --n-items")
        size = len(read_catalogue(items)) if items is not None else int(n_items or 0)
        _writable(out, "--out")
        if model not in ("dpals", "dpease"):
            raise ConfigError(f"--model must be dpals or dpease, got {model!r}")
        cfg: Any
        try:
            run = {"retries": retries, "run_id": secrets.token_hex(8)}
            if model == "dpease":
                cfg = SiloEASEConfig(epsilon=epsilon, delta=delta, n_items=size, **run)
            else:
                cfg = SiloConfig(
                    epsilon=epsilon,
                    delta=delta,
                    n_items=size,
                    factors=factors,
                    iterations=iterations,
                    **run,
                )
        except pydantic.ValidationError as exc:  # out-of-range settings
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"invalid configuration {where}: {err['msg']}") from None
        out.write_text(cfg.model_dump_json(indent=1), encoding="utf-8")
        console.print(
            f"wrote {out}: {model}, ε = {epsilon:g}, δ = {delta:g}, {size} items, run "
            f"{cfg.run_id}" + (f", {retries} retries paid for" if retries else "")
        )


@silo_app.command("serve")
def silo_serve(
    roster: _RosterOpt,
    key: _KeyOpt,
    config: _ConfigOpt,
    timeout: _TimeoutOpt = 60.0,
    release_log: _ReleaseLogOpt = None,
) -> None:
    """Run an aggregation server for one training session.

    The server checks every step's noise plan against its own copy of the configuration and
    refuses one with less noise than it requires, or a release beyond the plan (counted
    across sessions with --release-log).
    """
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import AggregationServer

    with handle_errors():
        _check_timeout(timeout)
        cfg = _read_config(config)
        server = AggregationServer(
            Identity.load(key),
            Roster.load(roster),
            timeout=timeout,
            config=cfg,
            release_log=release_log,
        )
        _unlogged(release_log, "an aggregation server")
        server.run()


@silo_app.command("join")
def silo_join(
    roster: _RosterOpt,
    key: _KeyOpt,
    data: Annotated[Path, typer.Option("--data", help="This silo's `user item item …` file.")],
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            help="The run's public configuration (run.json, required): the silo checks every job "
            "against it (encoding, bounds, number of releases), so a lying driver cannot lower "
            "the noise.",
        ),
    ],
    n_items: Annotated[
        int | None,
        typer.Option(
            "--n-items",
            min=1,
            help="Shared catalogue size, to check the file before joining (default: the size "
            "the driver announces; a mismatch is reported to every party at once).",
        ),
    ] = None,
    timeout: _TimeoutOpt = 60.0,
    release_log: _ReleaseLogOpt = None,
) -> None:
    """Join a training session as a silo with its own users' data (item ids < catalogue size)."""
    import scipy.sparse as sp

    from privrec.data.loaders import read_user_item_lists
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import Silo

    with handle_errors():
        _check_timeout(timeout)
        cfg = _read_config(config)
        if n_items is None:
            n_items = cfg.n_items  # the file is checked against the configured catalogue
        users, items, all_users = read_user_item_lists(data)
        if items.size and int(items.min()) < 0:
            raise ConfigError(f"{data}: item ids must be catalogue indices ≥ 0")
        width = int(items.max()) + 1 if items.size else 0
        if n_items is not None and width > n_items:
            raise ConfigError(f"{data}: item id {width - 1} ≥ --n-items {n_items}")
        rows = np.searchsorted(all_users, users)
        x = sp.csr_matrix(
            (np.ones(len(rows)), (rows, items)),
            shape=(len(all_users), n_items or width),
            dtype=np.float64,
        )
        silo = Silo(
            Identity.load(key),
            Roster.load(roster),
            x,
            timeout=timeout,
            config=cfg,
            release_log=release_log,
        )
        _unlogged(release_log, "a silo")
        silo.run()


@silo_app.command("train")
def silo_train(
    roster: _RosterOpt,
    key: _KeyOpt,
    config_file: _ConfigOpt,
    items: Annotated[
        Path | None,
        typer.Option(
            "--items",
            help="The shared catalogue (items.txt): the model then speaks external item ids.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Directory written after every step.")
    ] = Path("silo-checkpoint"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint.")] = False,
    out: Annotated[
        Path, typer.Option("--out", help="The released model (a privrec model file).")
    ] = Path("silo-model.npz"),
    timeout: _TimeoutOpt = 60.0,
    ledger: Annotated[
        str | None,
        typer.Option(help="Charge the ledger at this URL (default $PRIVREC_DB or privrec.db)."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Ledger dataset standing for the union of the silos' users (registered by its "
            "owner with the policy every silo applies): the whole run's charge is reserved on "
            "its budget before the first noisy release."
        ),
    ] = None,
    purpose: Annotated[str | None, typer.Option(help="Ledger: purpose of this charge.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="PRIVREC_API_KEY", help="Ledger: your API key."),
    ] = None,
    sign_key: SignKeyOpt = None,
) -> None:
    """Drive cross-silo DPALS or DPEASE training (the driver holds no data); save the model
    (signed, with --sign-key).

    The result is a normal privrec model file (DPALS or DPEASE, with its guarantee and no
    users): `privrec privacy explain` reads it and `privrec recommend --history` scores a
    user from their own items. With --dataset the run is charged to a ledger dataset
    (docs/cross_silo.md, "Through the privacy ledger").
    """
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import SiloResult, make_driver
    from privrec.secure.silo_model import read_catalogue, to_model

    with handle_errors():
        signer = signing_key(sign_key)
        led: Any = None
        if dataset is not None or ledger is not None:
            if dataset is None:
                raise ConfigError("--ledger needs --dataset NAME (the ledger dataset to charge)")
            from privrec.errors import PolicyViolation
            from privrec.governance.ledger import Ledger

            led = Ledger.connect(ledger, api_key)
            unit = led.dataset(dataset).unit
            if unit != "user":
                raise PolicyViolation(
                    f"dataset {dataset!r} is governed at the {unit} level; cross-silo training "
                    "protects users"
                )
        _check_timeout(timeout)
        config = _read_config(config_file)
        catalogue = None if items is None else read_catalogue(items)
        if catalogue is not None and len(catalogue) != config.n_items:
            raise ConfigError(
                f"--items lists {len(catalogue)} items, the configuration {config.n_items}"
            )
        _writable(out, "--out")
        driver = make_driver(
            Identity.load(key),
            Roster.load(roster),
            config,
            checkpoint=checkpoint,
            resume=resume,
            timeout=timeout,
        )
        session: Any = None
        journalled = 0  # releases of earlier sessions (a resumed run), not this charge's
        claim: Any = None
        if led is not None:
            from privrec.governance.composition import RDP_ONLY
            from privrec.governance.training import (
                ChargeSession,
                refuse_recorded_output,
                silo_events,
            )

            claim = refuse_recorded_output(led, Path(out))  # before any charge or party contacted
            driver.prepare()  # a resumed run: only the releases not yet journalled
            planned = silo_events(driver)
            if planned:
                session = ChargeSession(
                    led,
                    str(dataset),
                    kind="cross-silo",
                    purpose=purpose,
                    description=f"cross-silo {config.model} (ε={config.epsilon:g}, "
                    f"δ={config.delta:g}), {len(planned)} releases",
                )
                charge = session.reserve(planned, accountant=RDP_ONLY)
                opened, journalled = session, len(driver.spent)

                def cover_and_release(release: Any) -> None:
                    # a release of this session already went to the silos: from then on the
                    # charge (and any top-up) can no longer be aborted; before that (a run
                    # failing at its first release) it still can
                    if len(driver.spent) > journalled:
                        opened.released()
                    opened.cover(release)

                driver.ledger_hook = cover_and_release
                err_console.print(
                    f"ledger: charge {charge.id} reserved on {dataset!r} before the first "
                    f"release (ε = {charge.epsilon:.4g})",
                    highlight=False,
                )
        with session if session is not None else contextlib.nullcontext():
            try:
                result = driver.train()
            except BaseException:
                if session is not None and len(driver.spent) > journalled:
                    session.released()  # releases went out before the failure: not abortable
                raise
            model = to_model(result, config, catalogue)
            if session is not None:
                from privrec.governance.training import release_model

                path, committed = release_model(
                    session,
                    model,
                    out,
                    config=config.model_dump(mode="json"),
                    dataset_hash="",  # the driver never sees the silos' data
                    signing_key=signer,
                    claim=claim,
                )
            else:
                path = model.save(out, signing_key=signer)
        what = (
            f"{len(result.head_items)} head items × {result.item_factors.shape[1]} factors"
            if isinstance(result, SiloResult)
            else f"EASE weights over {len(result.head_items)} items"
        )
        g = result.guarantee
        console.print(
            f"released {path} ({type(model).__name__}, {what}); user-level ε = {g.epsilon:.4g} "
            f"at δ = {config.delta:g} (RDP accountant)",
            highlight=False,
        )
        err_console.print(
            "per-release seconds: " + ", ".join(f"{s:.2f}" for s in result.round_seconds),
            highlight=False,
        )
        if session is not None:
            (status,) = [s for s in led.status(dataset) if s.scope == "dataset"]
            console.print(
                f"ledger: charge {committed.id} committed, artifact {committed.artifact_id}; "
                f"{dataset!r} spent ε = {status.composed_epsilon:.4g} composed of "
                f"{status.epsilon:g}, remaining {status.remaining:.4g}",
                highlight=False,
            )
