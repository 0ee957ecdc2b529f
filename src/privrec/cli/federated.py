"""``privrec federated ...``: simulate FederatedMF training from the command line.

Registered on the main app by :mod:`privrec.cli.main`; heavy imports happen inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from privrec.cli.common import console, err_console, handle_errors, parse_params

federated_app = typer.Typer(
    help="Federated training (FederatedMF) simulated on one machine.", no_args_is_help=True
)


def _data(path: Path, fmt: str | None, seed: int) -> tuple[Any, Any, str]:
    """(training matrix, (history, targets) for validation, description)."""
    import scipy.sparse as sp

    from privrec.data import load
    from privrec.data.shared import shared_dataset
    from privrec.errors import DataError
    from privrec.evaluation import load_split, random_holdout

    if not path.exists():
        found = shared_dataset(str(path))
        if found is None:
            raise DataError("no such file, folder or shared dataset", file=path)
        path = found
    if path.is_dir() and (path / "train.txt").exists():
        split = load_split(path, merge_valid_into_train=False)
        label = f"{path.name}: train.txt, Recall@20 on valid.txt"
    else:
        split = random_holdout(load(path, format=fmt), test_fraction=0.2, seed=seed)
        label = f"{path.name}: 80/20 random holdout per user, Recall@20 on the held-out part"
    es = split.valid if split.valid is not None else split.test
    x = split.train.matrix
    assert es.users is not None
    return x, (sp.csr_matrix(x[es.users]), es.targets), label


@federated_app.command("simulate")
def simulate(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            "-d",
            help="Interaction file, LightGCN split folder, or shared dataset name "
            "(e.g. ml-1m-implicit-r3).",
        ),
    ],
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Target user-level ε (calibrates z).")
    ] = None,
    delta: Annotated[float, typer.Option(help="δ of the guarantee.")] = 1e-5,
    noise_multiplier: Annotated[
        float | None, typer.Option(help="Per-round noise multiplier z instead of ε.")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Training rounds.")] = 30,
    clients_per_round: Annotated[int, typer.Option(help="Expected (Poisson) cohort size.")] = 1000,
    head_items: Annotated[
        int, typer.Option(help="Most popular items trained (noisy counts).")
    ] = 1000,
    factors: Annotated[int, typer.Option(help="Embedding size.")] = 16,
    server_lr: Annotated[float, typer.Option(help="Server (Adam) learning rate.")] = 0.05,
    aggregation: Annotated[
        str,
        typer.Option(help="distributed (SecAgg+ and client noise) or central (trusted server)."),
    ] = "distributed",
    secure: Annotated[
        str, typer.Option(help="full SecAgg+ protocol, or fast path (same sums, no cryptography).")
    ] = "fast",
    threat_model: Annotated[
        str,
        typer.Option(
            "--threat-model",
            help="Server SecAgg+ is secured against: honest-but-curious, or malicious (Bell et "
            "al.'s threshold, signed keys and survivor sets; a PKI in deployment).",
        ),
    ] = "honest-but-curious",
    dropout: Annotated[float, typer.Option(help="Probability a sampled client crashes.")] = 0.0,
    straggler: Annotated[float, typer.Option(help="Probability a client is slow.")] = 0.0,
    timeout: Annotated[float, typer.Option(help="Round timeout (s) for slow clients.")] = 60.0,
    garbage: Annotated[float, typer.Option(help="Probability a client sends garbage.")] = 0.0,
    fault_seed: Annotated[int, typer.Option(help="Seed of the simulated faults.")] = 0,
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint after each round (and resume from it).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Resume from --checkpoint-dir with the run's own settings (training "
            "configuration, --secure, fault flags); --rounds may stop it early or extend a "
            "fixed-noise run."
        ),
    ] = False,
    eval_every: Annotated[int, typer.Option(help="Evaluate Recall@20 every N rounds.")] = 5,
    seed: Annotated[
        int | None, typer.Option(help="Seed sampling and noise (NOT private; experiments only).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Other FederatedMF setting key=value.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write round reports as JSON.")
    ] = None,
) -> None:
    """Simulate FederatedMF training: per-round ε, clip norm, survivors, bytes and Recall@20."""
    import click
    from rich.table import Table

    from privrec.errors import ConfigError
    from privrec.federated.mf import FederatedMFConfig
    from privrec.federated.training import FaultModel, FederatedSimulation

    def given(*names: str) -> list[str]:
        """The options among ``names`` typed on the command line (not left at their default)."""
        ctx = click.get_current_context()
        return [
            n
            for n in names
            if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE
        ]

    with handle_errors():
        if secure not in ("fast", "full"):
            raise ConfigError(f"--secure must be 'fast' or 'full', found {secure!r}")
        if threat_model not in ("honest-but-curious", "malicious"):
            raise ConfigError(
                f"--threat-model must be honest-but-curious or malicious, found {threat_model!r}"
            )
        for name, value in (("dropout", dropout), ("straggler", straggler), ("garbage", garbage)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name} must be a probability in [0, 1], found {value}")
        if json_out is not None and json_out.parent and not json_out.parent.is_dir():
            raise ConfigError(f"--json: folder {str(json_out.parent)!r} does not exist")
        x, val, label = _data(data, fmt, 0)
        fault_flags = ("dropout", "straggler", "timeout", "garbage", "fault_seed")
        faults = FaultModel(
            dropout=dropout,
            straggler=straggler,
            round_timeout=timeout,
            garbage=garbage,
            seed=fault_seed,
        )
        if resume:
            if checkpoint_dir is None:
                raise ConfigError("--resume needs --checkpoint-dir")
            training_flags = given(
                "epsilon",
                "delta",
                "noise_multiplier",
                "clients_per_round",
                "head_items",
                "factors",
                "server_lr",
                "aggregation",
                "threat_model",
                "seed",
                "param",
            )
            if training_flags:
                flags = ", ".join("--" + f.replace("_", "-") for f in training_flags)
                raise ConfigError(
                    f"{flags}: a resumed run keeps the training configuration of its "
                    "checkpoint; leave these out (or start a new run in another folder)"
                )
            sim = FederatedSimulation.resume(
                checkpoint_dir,
                x,
                secure=secure if given("secure") else None,  # type: ignore[arg-type]
                faults=faults if given(*fault_flags) else None,
                rounds=rounds if given("rounds") else None,
                validation=val,
                **({"eval_every": eval_every} if given("eval_every") else {}),
            )
        else:
            settings: dict[str, Any] = {
                "epsilon": epsilon,
                "delta": delta,
                "noise_multiplier": noise_multiplier,
                "rounds": rounds,
                "clients_per_round": clients_per_round,
                "head_items": head_items,
                "factors": factors,
                "server_lr": server_lr,
                "aggregation": aggregation,
                "threat_model": threat_model,
                "seed": seed,
            }
            settings.update(parse_params(param))
            if settings["epsilon"] is None and settings["noise_multiplier"] is None:
                raise ConfigError("give --epsilon (calibrated) or --noise-multiplier")
            cfg = FederatedMFConfig.create(**settings)
            sim = FederatedSimulation(
                cfg,
                x,
                secure=secure,  # type: ignore[arg-type]
                faults=faults,
                validation=val,
                eval_every=eval_every,
                checkpoint_dir=checkpoint_dir,
            )
        srv = sim.server
        c = srv.config
        if c.epsilon is not None:
            budget = (
                f"ε asked {c.epsilon:g} at δ = {c.delta:g}; expected spend ≈ "
                f"{srv.expected_epsilon():.3g} if every sampled client survives (the noise is "
                + (
                    f"sized for the worst completed round: {srv.noise_shares} honest survivors "
                    "of the largest cohort; fewer survivors spend more, up to the asked ε)"
                    if c.aggregation == "distributed"
                    else "calibrated to the asked ε)"
                )
            )
        else:
            budget = f"noise multiplier z = {c.noise_multiplier:g} (no ε target; see the end)"
        err_console.print(budget, highlight=False)
        err_console.print(
            f"{label}; {x.shape[0]:,} clients, {x.shape[1]:,} items; "
            f"q = {srv.q:.4g} (≈{srv.expected_clients:.0f} clients/round); "
            f"z = {srv.noise_multiplier:.4g}; aggregation {c.aggregation}"
            + (
                f", secure sum: {sim._mode_label()}, {c.threat_model} server"
                if c.aggregation == "distributed"
                else ""
            )
            + (
                f"; resuming after round {srv.round} of {c.rounds} "
                f"(secure={sim.secure}, faults from the checkpoint)"
                if resume
                else ""
            ),
            highlight=False,
        )

        def line(r: Any) -> None:  # one line per round when stderr is a log, not a terminal
            if r.aborted:
                text = f"round {r.round} attempt {r.attempt}: aborted ({r.aborted})"
            else:
                text = (
                    f"round {r.round}/{c.rounds}: ε so far {r.epsilon:.4g}, "
                    f"survivors {r.survivors}/{r.sampled}, clip {r.clip_norm:.4g}"
                    + (f", Recall@20 {r.recall:.4f}" if r.recall is not None else "")
                    + f", {r.seconds:.2f} s"
                )
            err_console.print(text, highlight=False, soft_wrap=True)

        interactive = err_console.is_terminal
        reports = sim.run(progress=interactive, on_round=None if interactive else line)
        table = Table(title="FederatedMF rounds")
        for col in (
            "round",
            "survivors/sampled",
            "clip norm",
            "ε so far",
            "Recall@20",
            "bytes up",
            "s",
        ):
            table.add_column(col, justify="right")
        for r in reports:
            if r["aborted"]:
                table.add_row(str(r["round"]), "aborted", r["aborted"], "", "", "", "")
                continue
            table.add_row(
                str(r["round"]),
                f"{r['survivors']}/{r['sampled']}",
                f"{r['clip_norm']:.4g}",
                f"{r['epsilon']:.4g}",
                "" if r["recall"] is None else f"{r['recall']:.4f}",
                f"{r['bytes_up']:,}",
                f"{r['seconds']:.2f}",
            )
        console.print(table)
        g = srv.guarantee()
        console.print(
            f"ε spent {g.epsilon:.4g}"
            + (f" of {c.epsilon:g} asked" if c.epsilon is not None else "")
            + f" at δ = {g.delta:g} (user level, {g.accountant.value} accountant)",
            highlight=False,
        )
        console.print(g.explain(), highlight=False)
        if json_out is not None:
            json_out.write_text(
                json.dumps(
                    {"config": srv.config.model_dump(mode="json"), "rounds": reports}, indent=1
                )
            )
