"""``privrec train | evaluate | demo``: fit and compare models.

Registered as top-level commands by :mod:`privrec.cli.main`; ``recommend`` lives in
:mod:`privrec.cli.recommend` and ``report`` in :mod:`privrec.cli.report`. ``train --engine ray``
trains on a Ray cluster (:mod:`privrec.engine`, imported only then).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from privrec.cli.common import (
    ApiKeyOpt,
    DatasetOpt,
    LedgerOpt,
    OptionalDataOpt,
    Protocol,
    PurposeOpt,
    SignKeyOpt,
    build_model,
    check_delta_for_data,
    check_output,
    console,
    fit_with_progress,
    handle_errors,
    is_private,
    items_count,
    load_data,
    make_split,
    note,
    number_check,
    parse_params,
    privacy_params,
    privacy_summary,
    read_config,
    rounded,
    signed_note,
    signing_key,
    stderr_is_tty,
)
from privrec.errors import ConfigError
from privrec.models.persistence import atomic_output

DEMO_EPSILONS = (1.0, 4.0)

#: shared option types (parse-time checks: NaN, ±inf and out-of-range numbers are refused)
Epsilon = Annotated[
    float | None,
    typer.Option(help="Privacy budget ε (private models).", callback=number_check(gt=0)),
]
Delta = Annotated[
    float | None,
    typer.Option(
        help="Privacy budget δ (private models); must be below 1/number of users.",
        callback=number_check(gt=0, lt=1),
    ),
]
Binarize = Annotated[
    float | None,
    typer.Option(help="Keep values >= threshold as 1.", callback=number_check()),
]
ForceWeakDelta = Annotated[
    bool,
    typer.Option(
        "--force-weak-delta",
        help="Train even when δ is not below 1/number of users (weak: warns).",
    ),
]


# -------------------------------------------------------------------- train
def train(
    data_path: OptionalDataOpt = None,
    model_name: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name, e.g. als, ease.")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the model (.npz).")
    ] = Path("model.npz"),
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Hyper-parameter key=value.")
    ] = None,
    binarize: Binarize = None,
    epsilon: Epsilon = None,
    delta: Delta = None,
    unit: Annotated[
        str | None, typer.Option(help="Privacy unit: user or interaction (private models).")
    ] = None,
    items: Annotated[
        Path | None,
        typer.Option(
            "--items",
            help="Item catalogue file (one id per line). Private models then learn nothing "
            "about the catalogue from the data; without it, the catalogue is assumed public.",
        ),
    ] = None,
    tuning: Annotated[
        str | None,
        typer.Option(
            help="How the hyper-parameters were chosen (private models; written into the "
            "guarantee): defaults, public (other data) or private (this data; not charged).",
        ),
    ] = None,
    force_weak_delta: ForceWeakDelta = False,
    include_user_data: Annotated[
        bool,
        typer.Option(
            help="Private models: also store the training users and interactions in the file "
            "(NOT covered by the guarantee)."
        ),
    ] = False,
    ledger: LedgerOpt = None,
    dataset: DatasetOpt = None,
    purpose: PurposeOpt = None,
    key: ApiKeyOpt = None,
    engine: Annotated[
        str,
        typer.Option(
            help="local (one process) or ray (--data is a user-sharded Parquet directory; "
            "dpals, dppopularity, dpease).",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (e.g. auto); default: start a local cluster."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Ray: user partitions (actors).", min=1)] = 2,
    threads: Annotated[int, typer.Option(help="Ray: CPUs per worker.", min=1)] = 1,
    sign_key: SignKeyOpt = None,
) -> None:
    """Fit a model on a whole interaction file and save it (signed, with --sign-key).

    A TOML config may hold ``model = "als"``, a \\[params] table and a \\[data] table
    (``path``, ``format``, ``binarize``); command-line options override it. With
    ``--engine ray`` the data is a directory written by ``privrec data shard`` and the model
    is trained on a Ray cluster (docs/scale.md).
    """
    with handle_errors():
        check_output(output)
        signer = signing_key(sign_key)  # a missing or readable key fails before training
        cfg = read_config(config)
        data_cfg = cfg.get("data", {})
        name = model_name or cfg.get("model")
        if name is None:
            raise ConfigError("no model given: pass --model or set model = ... in the config")
        path = data_path or (Path(data_cfg["path"]) if "path" in data_cfg else None)
        if path is None:
            raise ConfigError("no data given: pass --data or set [data] path = ... in the config")
        params = {
            **cfg.get("params", {}),
            **parse_params(param),
            **privacy_params(epsilon, delta, unit),
        }
        model = build_model(name, params)
        private = is_private(name)
        if tuning is not None:
            if not private:
                raise ConfigError(f"{name} is not a private model: --tuning does not apply to it")
            model.declare_tuning(tuning)
        from privrec.data.loaders import read_item_catalogue

        catalogue = read_item_catalogue(items) if items is not None else None
        if engine not in ("local", "ray"):
            raise ConfigError(f"unknown engine {engine!r}; choose local or ray")
        if engine == "ray":
            if include_user_data:
                raise ConfigError("--include-user-data: a Ray training keeps no user data")
            _train_distributed(
                model, path, output=output, address=address, workers=workers, threads=threads,
                catalogue=catalogue, binarize=binarize if binarize is not None
                else data_cfg.get("binarize"), ledger=ledger, dataset=dataset, purpose=purpose,
                key=key, force_weak_delta=force_weak_delta, signer=signer,
            )  # fmt: skip
            return
        data = load_data(
            path,
            fmt or data_cfg.get("format"),
            binarize if binarize is not None else data_cfg.get("binarize"),
        )
        if private:
            check_delta_for_data(model.get_params(), data, force_weak_delta)
        if catalogue is not None:
            model.with_catalogue(catalogue)
        t0 = time.perf_counter()
        if dataset is not None or ledger is not None:  # privacy ledger (privrec.governance)
            if dataset is None:
                raise ConfigError("--ledger needs --dataset NAME (the ledger dataset to charge)")
            from privrec.governance.training import train_from_cli

            rec, spent = train_from_cli(
                model, data, url=ledger, api_key=key, dataset=dataset, purpose=purpose,
                output=output, include_user_data=include_user_data or None, fit=fit_with_progress,
                signing_key=signer,
            )  # fmt: skip
            saved, seen = rec.path, rec.model.user_items_  # the policy-filtered matrix
            console.print(
                f"ledger: charge {rec.charge.id} committed, artifact {rec.artifact.id}; {dataset!r} "
                f"spent ε = {spent.composed_epsilon:.4g} composed (naive sum {spent.naive_epsilon:.4g}) "
                f"of {spent.epsilon:g}, remaining {spent.remaining:.4g}"
            )
        else:
            fit_with_progress(model, data)
            saved = model.save(
                output, include_user_data=True if include_user_data else None, signing_key=signer
            )
            seen = data.matrix
        users = rounded(seen.shape[0]) if private else f"{seen.shape[0]:,}"
        inter = rounded(seen.nnz) if private else f"{seen.nnz:,}"
        n_items = items_count(
            len(model.item_ids_) if catalogue is not None else seen.shape[1],
            public=catalogue is not None or not private,
        )
        console.print(
            f"fitted [bold]{model.name}[/] on {users} users × {n_items} items "
            f"({inter} interactions) in {time.perf_counter() - t0:.1f} s → {saved}",
            highlight=False,
        )
        guarantee = getattr(model, "guarantee_", None)
        if guarantee is not None:
            console.print(privacy_summary(guarantee, saved), highlight=False, markup=False)
        signed_note(signer, saved)


# ------------------------------------------------------- train --engine ray
def _train_distributed(
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
    signer: Any = None,
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
            f"ray: {workers} workers hold {rounded(n_users)} users "
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
                item_ids=catalogue, progress=progress, on_loaded=loaded, signing_key=signer,
            )  # fmt: skip
            console.print(f"ledger: charge {charge.id} committed on {dataset!r}", highlight=False)
        else:
            engine.fit(model, source, item_ids=catalogue, progress=progress, on_loaded=loaded)
            saved = model.save(output, signing_key=signer)
        moved = engine.last_group.bytes_reduced if engine.last_group is not None else 0
    console.print(
        f"fitted [bold]{model.name}[/] on ray ({workers} workers) on {rounded(sizes['users'])} users × "
        f"{items_count(len(model.item_ids_), public=catalogue is not None)} items "
        f"({rounded(sizes['nnz'])} interactions) in "
        f"{time.perf_counter() - t0:.1f} s, {moved / 1e6:.1f} MB reduced → {saved}",
        highlight=False,
    )
    g = model.guarantee_
    console.print(privacy_summary(g, saved), highlight=False, markup=False)
    signed_note(signer, saved)


class _Sizes:
    """What ``check_delta_for_data`` reads of the data: its numbers of users and interactions."""

    def __init__(self, n_users: int, nnz: int) -> None:
        self.n_users, self.nnz = n_users, nnz


# ----------------------------------------------------------------- evaluate
def evaluate(
    data_path: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Interaction file, or a folder of train/valid/test files."
        ),
    ],
    model_name: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model name (repeat to compare; baselines and private models mix).",
        ),
    ] = None,
    model_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--model-file",
            help="A saved model to evaluate without training (repeatable): a cross-silo or "
            "federated result or any privrec model file. The split's test users are scored "
            "from their own histories; items are matched by external id.",
        ),
    ] = None,
    protocol: Annotated[Protocol, typer.Option(help="Split protocol.")] = Protocol.holdout,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="Hyper-parameter key=value for every model, or model.key=value for one.",
        ),
    ] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Cut-offs (repeatable).")] = None,
    binarize: Binarize = None,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    test_fraction: Annotated[
        float,
        typer.Option(help="Holdout fraction per user.", callback=number_check(gt=0, lt=1)),
    ] = 0.2,
    groups: Annotated[
        bool, typer.Option(help="Also print the per-activity-group breakdown.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    epsilon: Epsilon = None,
    delta: Delta = None,
    unit: Annotated[str | None, typer.Option(help="Privacy unit (private models).")] = None,
    force_weak_delta: ForceWeakDelta = False,
) -> None:
    """Split the data, fit each model on the training part, and report ranking metrics.

    Baselines and private models can be compared in one run: --epsilon, --delta and --unit
    apply to the private ones. A saved model (--model-file) is evaluated as it is, without
    training: each test user is scored from their own history, as the model serves users.
    Held-out evaluation is not differentially private, so the table and --json round user
    counts to two significant figures and label activity groups by rounded quantile edges.
    """
    import dataclasses

    from privrec.evaluation import evaluate as run_eval
    from privrec.evaluation import on_split
    from privrec.models import load_model
    from privrec.report.compare import scoped_params

    with handle_errors():
        check_output(json_out)
        names, files = list(model_name or []), list(model_file or [])
        if not names and not files:
            raise ConfigError("nothing to evaluate: give --model NAME or --model-file FILE")
        ks = tuple(k or (10, 20, 50))
        if any(v < 1 for v in ks):
            raise ConfigError(f"--k must be >= 1, got {min(ks)}")
        privacy = privacy_params(epsilon, delta, unit)
        if privacy and not any(is_private(n) for n in names):
            raise ConfigError(
                f"--{next(iter(privacy))} applies to private models to train, and none was given"
            )
        params = parse_params(param)
        models = [build_model(n, scoped_params(params, n), privacy) for n in names]
        saved = [(f, load_model(f)) for f in files]  # verified (a private model's guarantee)
        split = make_split(protocol, data_path, fmt, binarize, seed, test_fraction)
        for model in models:
            if getattr(model, "mechanism_name", None) is not None:
                check_delta_for_data(model.get_params(), split.train, force_weak_delta)
        results = []

        def show(res: Any) -> None:
            results.append(res)
            console.print(res.format(groups=groups), highlight=False, markup=False)

        for path, loaded in saved:
            label = f"{loaded.name} ({path.name})"
            if not stderr_is_tty():
                note(f"evaluating {label}…")
            res = run_eval(on_split(loaded, split, label), split, k=ks)
            show(dataclasses.replace(res, model=label))
            g = getattr(loaded, "guarantee_", None)
            if g is not None:
                console.print(
                    f"{label}: ({g.epsilon:.3g}, {g.delta:.1e})-DP per {g.unit.value} "
                    "(guarantee verified on load)",
                    highlight=False,
                )
        for model in models:
            fit_with_progress(model, split.train)
            if not stderr_is_tty():
                note(f"evaluating {model.name}…")
            show(run_eval(model, split, k=ks))
        if json_out is not None:
            with atomic_output(json_out) as tmp:
                tmp.write_text(json.dumps([r.to_dict() for r in results], indent=2))


def demo(
    users: Annotated[int, typer.Option(help="Synthetic users.", min=10)] = 20_000,
    items: Annotated[int, typer.Option(help="Synthetic items.", min=10)] = 1000,
    seed: Annotated[
        int, typer.Option(help="Data and split seed (the privacy noise is never seeded).")
    ] = 0,
    report: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path(
        "report.html"
    ),
    private: Annotated[bool, typer.Option(help="Also train the private models.")] = True,
) -> None:
    """Synthetic data → non-private baselines and private models (ε = 1, 4): Recall/NDCG@20 + report.

    The same comparison as ``privrec report`` (one noise draw), on synthetic data.
    """
    from privrec.data import synthetic
    from privrec.evaluation import random_holdout
    from privrec.report import ModelSpec, run_comparison, write_html_report

    with handle_errors():
        check_output(report)
        t_start = time.perf_counter()
        data = synthetic(n_users=users, n_items=items, seed=seed)
        split = random_holdout(data, test_fraction=0.2, seed=seed)
        delta = 1e-6
        console.print(
            f"synthetic data: {data.n_users:,} users × {data.n_items:,} items, {data.nnz:,} interactions "
            f"(seed {seed}); 20% of each user's items held out"
        )
        specs = [ModelSpec(n) for n in ("popularity", "itemknn", "ease", "als")]
        if private:
            specs += [ModelSpec("dppopularity"), ModelSpec("dpals")]
        table = Table(
            title="privrec demo: ranking quality on held-out items",
            caption="ε = ∞: not private. Private models: user-level (ε, δ)-DP.",
        )
        for col in ("model", "ε (user level)", "Recall@20", "NDCG@20", "Coverage@20", "fit s"):
            table.add_column(col, justify="right" if col != "model" else "left")
        timings: dict[str, float] = {}

        def fit(label: str, model: Any, train: Any) -> Any:
            t0 = time.perf_counter()
            out = fit_with_progress(model, train, label)
            timings[label] = time.perf_counter() - t0
            return out

        rows = run_comparison(
            split, specs, epsilons=DEMO_EPSILONS, delta=delta, draws=1, k=20, fit=fit
        )
        for r in rows:
            table.add_row(
                r.model,
                f"{r.epsilon:g}" if r.private else "∞",
                f"{r.metrics['Recall@20']:.4f}",
                f"{r.metrics['NDCG@20']:.4f}",
                f"{r.metrics['Coverage@20']:.3f}",
                f"{timings.get(r.model, float('nan')):.1f}",
            )
        console.print(table)
        if private:
            out = write_html_report(
                report,
                rows,
                title="privrec demo: privacy-utility report",
                dataset=f"synthetic ({rounded(data.n_users)} users × {rounded(data.n_items)} items, seed {seed})",
                metric_names=["Recall@20", "NDCG@20", "Coverage@20"],
                plot_metric="Recall@20",
                notes=[
                    "one noise draw per private model; `privrec report --seeds N` adds error bars"
                ],
            )
            console.print(f"report: {out} (plot: {out.with_suffix('.png')}); δ = {delta:g}")
        console.print(f"total {time.perf_counter() - t_start:.1f} s")
