"""``privrec federated ...``: simulate FederatedMF training from the command line.

Registered on the main app by :mod:`privrec.cli.main`; heavy imports happen inside the command.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from privrec.cli.common import (
    SignKeyOpt,
    check_output,
    console,
    err_console,
    existing_data,
    handle_errors,
    items_count,
    load_data,
    parse_params,
    rounded,
    signed_note,
    signing_key,
)

if TYPE_CHECKING:
    from privrec.privacy.guarantee import Catalogue

federated_app = typer.Typer(
    help="Federated training (FederatedMF) simulated on one machine. Federated DPALS: "
    "`privrec train -m federated_dpals`.",
    no_args_is_help=True,
)


def _data(
    path: Path,
    fmt: str | None,
    seed: int,
    govern: Callable[[Any], Any] | None = None,
    catalogue: list[str] | None = None,
) -> tuple[Any, Any, str, Any, Any]:
    """(training matrix, (history, targets) for validation, description, governed data or
    ``None``, item catalogue).

    With ``govern`` (a ledger dataset's ``load``), the interactions — a file, or a split
    folder's train.txt — pass through the dataset's policy first, and validation is a random
    holdout of what the policy kept.

    With ``catalogue`` (``--items FILE``) the columns are that catalogue's items, in its order
    (every item of the data must be in it; the others get empty columns), so the run and the
    saved model learn nothing about which items the data holds — as ``train --items`` does.
    """
    import scipy.sparse as sp

    from privrec.evaluation import load_split, random_holdout

    path = existing_data(path)
    governed = None
    folder = path.is_dir() and (path / "train.txt").exists()
    if folder and govern is None:
        split = load_split(path, merge_valid_into_train=False)
        label = f"{path.name}: train.txt, Recall@20 on valid.txt"
    else:
        data = load_split(path).train if folder else load_data(path, fmt)
        if govern is not None:
            governed = govern(data)
            data = governed.interactions
        split = random_holdout(data, test_fraction=0.2, seed=seed)
        label = (
            f"{path.name}{': train.txt' if folder else ''}"
            f"{' through the ledger policy' if governed is not None else ''}: 80/20 random "
            "holdout per user, Recall@20 on the held-out part"
        )
    es = split.valid if split.valid is not None else split.test
    assert es.users is not None
    if catalogue is None:
        x = split.train.matrix
        return x, (sp.csr_matrix(x[es.users]), es.targets), label, governed, split.train.item_ids
    import numpy as np
    import pandas as pd

    from privrec.models.base import on_catalogue

    train = on_catalogue(split.train, np.asarray(catalogue))  # refuses items not listed
    x = train.matrix
    # the targets are over the split's columns: move them to the catalogue's as well
    pos = pd.Index(train.item_ids).get_indexer(pd.Index(np.asarray(split.train.item_ids)))
    t = sp.csr_matrix(es.targets)
    targets = sp.csr_matrix(
        (t.data, pos[t.indices].astype(np.int32), t.indptr), shape=(t.shape[0], x.shape[1])
    )
    targets.sort_indices()
    return x, (sp.csr_matrix(x[es.users]), targets), label, governed, train.item_ids


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
    items: Annotated[
        Path | None,
        typer.Option(
            "--items",
            help="Item catalogue file (one id per line), as for `privrec train --items`: the "
            "run and the saved model then learn nothing about the catalogue from the data; "
            "without it, the catalogue is the data's items, assumed public.",
        ),
    ] = None,
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
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Save the trained model: a privrec FederatedMF file with its guarantee and no "
            "users (privacy explain, recommend --history, evaluate --model-file).",
        ),
    ] = None,
    ledger: Annotated[
        str | None,
        typer.Option(help="Charge the ledger at this URL (default $PRIVREC_DB or privrec.db)."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Ledger dataset: load the data through its policy and reserve the whole run's "
            "charge on its budget before round 1."
        ),
    ] = None,
    purpose: Annotated[str | None, typer.Option(help="Ledger: purpose of this charge.")] = None,
    key: Annotated[
        str | None, typer.Option(envvar="PRIVREC_API_KEY", help="Ledger: your API key.")
    ] = None,
    sign_key: SignKeyOpt = None,
) -> None:
    """Simulate FederatedMF training: per-round ε, clip norm, survivors, bytes and Recall@20.

    With --dataset the run goes through the privacy ledger: the data passes the dataset's
    policy, every round's charge is reserved before round 1 (refused in one line when a budget
    cannot take it), and the charge is committed with the saved model (--out) or the run's
    result. With --sign-key the saved model file is signed (and the ledger records the signer).
    """
    import click

    from privrec.errors import ConfigError
    from privrec.federated.mf import FederatedMFConfig
    from privrec.federated.training import FaultModel, FederatedSimulation, public_round

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
        check_output(out)
        if sign_key is not None and out is None:
            raise ConfigError("--sign-key needs --out: there is no model file to sign")
        signer = signing_key(sign_key)  # a missing or unreadable key fails before any round
        led: Any = None
        if dataset is not None or ledger is not None:  # privacy ledger (privrec.governance)
            if dataset is None:
                raise ConfigError("--ledger needs --dataset NAME (the ledger dataset to charge)")
            from privrec.governance.ledger import Ledger

            led = Ledger.connect(ledger, key)
        from privrec.data.loaders import read_item_catalogue

        catalogue = read_item_catalogue(items) if items is not None else None
        x, val, label, governed, item_ids = _data(
            data,
            fmt,
            0,
            None if led is None else lambda d: led.load(dataset, d),
            catalogue=catalogue,
        )
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
            budget = f"ε asked {c.epsilon:g} at δ = {c.delta:g}; " + (
                "each completed round is charged its worst case (the fewest honest survivors "
                "a round may complete with carry the planned noise), so a full run spends what "
                f"was asked; the true loss is ≈ {srv.expected_epsilon():.3g} when every sampled "
                "client survives"
                if c.aggregation == "distributed"
                else "the noise is calibrated to it"
            )
        else:
            budget = f"noise multiplier z = {c.noise_multiplier:g} (no ε target; see the end)"
        err_console.print(budget, highlight=False)
        err_console.print(
            f"{label}; {rounded(x.shape[0])} clients, "
            f"{items_count(x.shape[1], public=catalogue is not None)} items; "
            # q × the exact population would give the count away (q = 1: all of it)
            f"q = {srv.q:.4g} ({rounded(round(srv.expected_clients))} clients/round); "
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

        def line(report: Any) -> None:  # one line per round when stderr is a log, not a terminal
            r = public_round(report)
            if r["aborted"]:
                text = f"round {r['round']} attempt {r['attempt']}: aborted ({r['aborted']})"
            else:
                text = (
                    f"round {r['round']}/{c.rounds}: ε so far {r['epsilon']:.4g}, "
                    f"survivors {r['survivors']}/{r['sampled']}, clip {r['clip_norm']:.4g}"
                    + (f", Recall@20 {r['recall']:.4f}" if r["recall"] is not None else "")
                    + f", {r['seconds']:.2f} s"
                )
            err_console.print(text, highlight=False, soft_wrap=True)

        session: Any = None
        claim: Any = None
        if led is not None:
            from privrec.governance.training import (
                federated_events,
                federated_session,
                refuse_recorded_output,
            )

            assert dataset is not None
            if out is not None:  # before any charge: a recorded release is never overwritten
                claim = refuse_recorded_output(led, Path(out))
            if federated_events(srv, remaining=True):
                session = federated_session(
                    led, dataset, srv, data=governed, purpose=purpose, remaining=True
                )
                err_console.print(
                    f"ledger: charge {session.charge.id} reserved on {dataset!r} before round "
                    f"{srv.round + 1} (ε = {session.charge.epsilon:.4g} for the rounds to come)",
                    highlight=False,
                )
            else:
                err_console.print(
                    "ledger: no round left to run, nothing to charge", highlight=False
                )
        with session if session is not None else contextlib.nullcontext():
            _run_and_report(
                sim, json_out, out, item_ids, session, governed, dataset, led, line, signer, claim,
                catalogue="given" if catalogue is not None else "data",
            )  # fmt: skip


def _run_and_report(
    sim: Any,
    json_out: Path | None,
    out: Path | None,
    item_ids: Any,
    session: Any,
    governed: Any,
    dataset: str | None,
    led: Any,
    line: Callable[[Any], None],
    signer: Any = None,
    claim: Any = None,
    catalogue: Catalogue = "data",
) -> None:
    """Run the simulation, print its rounds and guarantee, save the model, commit the charge.

    ``catalogue`` is ``"given"`` when ``item_ids`` came from ``--items`` (the guarantee then
    says nothing about the catalogue was learnt from the data), else ``"data"``.
    """
    from rich.table import Table

    from privrec.federated.training import public_round

    srv = sim.server
    c = srv.config
    interactive = err_console.is_terminal
    # cohort sizes are exact counts of people that no guarantee covers: printed and written
    # rounded (public_round), as evaluation outputs are

    def released_line(report: Any) -> None:
        # a round's noisy sum went to the devices: no abort from here on (with the progress bar
        # too — a run failing at round r has sent rounds 1 … r − 1)
        if session is not None:
            session.released()
        if not interactive:
            line(report)

    start_round, had_counts = srv.round, srv.noisy_counts is not None
    try:
        reports = [public_round(r) for r in sim.run(progress=interactive, on_round=released_line)]
    except BaseException:
        # the counting round's noisy counts (or a round) already went out before the failure:
        # this session's charge is no longer abortable
        sent = srv.round > start_round or (not had_counts and srv.noisy_counts is not None)
        if session is not None and sent:
            session.released()
        raise
    if session is not None:  # before anything computed from the noisy rounds is shown or written
        session.released()
    table = Table(
        title="FederatedMF rounds",
        caption="counts rounded to two significant figures: cohort sizes are not covered by ε",
    )
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
        # rounds read back from a checkpoint carry no cohort sizes (sim_reports): left blank
        table.add_row(
            str(r["round"]),
            f"{r['survivors']}/{r['sampled']}" if "sampled" in r else "",
            f"{r['clip_norm']:.4g}",
            f"{r['epsilon']:.4g}",
            "" if r.get("recall") is None else f"{r['recall']:.4f}",
            f"≈ {r['bytes_up']:,}" if "bytes_up" in r else "",
            f"{r['seconds']:.2f}" if "seconds" in r else "",
        )
    console.print(table)
    g = srv.guarantee().with_disclosure(catalogue=catalogue)
    console.print(
        f"ε spent {g.epsilon:.4g}"
        + (f" of {c.epsilon:g} asked" if c.epsilon is not None else "")
        + f" at δ = {g.delta:g} (user level, {g.accountant.value} accountant)",
        highlight=False,
    )
    console.print(g.explain(), highlight=False, markup=False)  # its [..] is text, not markup
    if json_out is not None:
        json_out.write_text(
            json.dumps({"config": srv.config.model_dump(mode="json"), "rounds": reports}, indent=1)
        )
    saved = None
    if out is not None and srv.round > 0:
        from privrec.federated.model import FederatedMF

        model = FederatedMF.from_server(srv, item_ids, catalogue=catalogue)
        if session is not None:
            from privrec.governance.training import release_model

            saved, _ = release_model(
                session,
                model,
                out,
                config=c.model_dump(mode="json"),
                dataset_hash=governed.content_hash,
                signing_key=signer,
                claim=claim,
            )
        else:
            saved = model.save(out, signing_key=signer)
        console.print(f"model: {saved} (FederatedMF, no users)", highlight=False)
        signed_note(signer, saved)
    if session is not None:
        if saved is None:
            session.commit(result={"rounds": srv.round, "epsilon": g.epsilon})
        (status,) = [s for s in led.status(dataset) if s.scope == "dataset"]
        console.print(
            f"ledger: charge {session.charge.id} committed"
            + (f" (+{len(session.top_ups)} top-up)" if session.top_ups else "")
            + f"; {dataset!r} spent ε = {status.composed_epsilon:.4g} composed of "
            f"{status.epsilon:g}, remaining {status.remaining:.4g}",
            highlight=False,
        )
