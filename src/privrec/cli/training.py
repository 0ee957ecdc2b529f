"""``privrec train | evaluate | recommend | demo``: fit, compare and use models.

Registered as top-level commands by :mod:`privrec.cli.main`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from privrec.cli.common import (
    Protocol,
    build_model,
    coerce_ids,
    console,
    fit_with_progress,
    handle_errors,
    load_data,
    parse_params,
    privacy_params,
    read_config,
)
from privrec.errors import ConfigError

DEMO_EPSILONS = (1.0, 4.0)


# -------------------------------------------------------------------- train
def train(
    data_path: Annotated[
        Path | None, typer.Option("--data", "-d", help="Interaction file.")
    ] = None,
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
    binarize: Annotated[float | None, typer.Option(help="Keep values >= threshold as 1.")] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Privacy budget ε (private models).")
    ] = None,
    delta: Annotated[float | None, typer.Option(help="Privacy budget δ (private models).")] = None,
    unit: Annotated[
        str | None, typer.Option(help="Privacy unit: user or interaction (private models).")
    ] = None,
    include_user_data: Annotated[
        bool, typer.Option(help="Private models: also store the training interactions in the file.")
    ] = False,
    ledger: Annotated[
        str | None,
        typer.Option(help="Charge the ledger at this URL (default $PRIVREC_DB or privrec.db)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Ledger dataset: apply its policy and charge its budget.")
    ] = None,
    purpose: Annotated[str | None, typer.Option(help="Ledger: purpose of this charge.")] = None,
    key: Annotated[
        str | None, typer.Option(envvar="PRIVREC_API_KEY", help="Ledger: your API key.")
    ] = None,
) -> None:
    """Fit a model on a whole interaction file and save it.

    A TOML config may hold ``model = "als"``, a ``[params]`` table and a
    ``[data]`` table (``path``, ``format``, ``binarize``); command-line
    options override it.
    """
    with handle_errors():
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
        data = load_data(
            path,
            fmt or data_cfg.get("format"),
            binarize if binarize is not None else data_cfg.get("binarize"),
        )
        t0 = time.perf_counter()
        if dataset is not None or ledger is not None:  # privacy ledger (privrec.governance)
            if dataset is None:
                raise ConfigError("--ledger needs --dataset NAME (the ledger dataset to charge)")
            from privrec.governance.training import train_from_cli

            rec, spent = train_from_cli(
                model, data, url=ledger, api_key=key, dataset=dataset, purpose=purpose,
                output=output, include_user_data=include_user_data or None, fit=fit_with_progress,
            )  # fmt: skip
            saved, seen = rec.path, rec.model.user_items_  # the policy-filtered matrix
            console.print(
                f"ledger: charge {rec.charge.id} committed, artifact {rec.artifact.id}; {dataset!r} "
                f"spent ε = {spent.composed_epsilon:.4g} composed (naive sum {spent.naive_epsilon:.4g}) "
                f"of {spent.epsilon:g}, remaining {spent.remaining:.4g}"
            )
        else:
            fit_with_progress(model, data)
            saved = model.save(output, include_user_data=True if include_user_data else None)
            seen = data.matrix
        console.print(
            f"fitted [bold]{model.name}[/] on {seen.shape[0]:,} users × {seen.shape[1]:,} items "
            f"({seen.nnz:,} interactions) in {time.perf_counter() - t0:.1f} s → {saved}"
        )
        guarantee = getattr(model, "guarantee_", None)
        if guarantee is not None:
            console.print(
                f"privacy: ({guarantee.epsilon:.3g}, {guarantee.delta:.1e})-DP per {guarantee.unit.value}; "
                f"`privrec privacy explain {saved}` says what that means"
            )


# ----------------------------------------------------------------- evaluate
def make_split(
    protocol: Protocol,
    data_path: Path,
    fmt: str | None,
    binarize: float | None,
    seed: int,
    test_fraction: float,
) -> Any:
    from privrec import evaluation as ev

    if protocol is Protocol.files:
        return ev.load_split(data_path, merge_valid_into_train=True)
    data = load_data(data_path, fmt, binarize)
    if protocol is Protocol.holdout:
        return ev.random_holdout(data, test_fraction=test_fraction, seed=seed)
    if protocol is Protocol.leave_last_out:
        return ev.leave_last_out(data)
    n = max(1, round(0.1 * data.n_users))
    return ev.strong_generalization(data, n_heldout_users=n, seed=seed)


def evaluate(
    data_path: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Interaction file, or a folder of train/valid/test files."
        ),
    ],
    model_name: Annotated[
        list[str], typer.Option("--model", "-m", help="Model name (repeat to compare).")
    ],
    protocol: Annotated[Protocol, typer.Option(help="Split protocol.")] = Protocol.holdout,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Hyper-parameter key=value (all models)."),
    ] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Cut-offs (repeatable).")] = None,
    binarize: Annotated[float | None, typer.Option(help="Keep values >= threshold as 1.")] = None,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    test_fraction: Annotated[float, typer.Option(help="Holdout fraction per user.")] = 0.2,
    groups: Annotated[
        bool, typer.Option(help="Also print the per-activity-group breakdown.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Privacy budget ε (private models).")
    ] = None,
    delta: Annotated[float | None, typer.Option(help="Privacy budget δ (private models).")] = None,
    unit: Annotated[str | None, typer.Option(help="Privacy unit (private models).")] = None,
) -> None:
    """Split the data, fit each model on the training part, and report ranking metrics."""
    from privrec.evaluation import evaluate as run_eval

    with handle_errors():
        ks = tuple(k or (10, 20, 50))
        split = make_split(protocol, data_path, fmt, binarize, seed, test_fraction)
        results = []
        for name in model_name:
            model = build_model(
                name, {**parse_params(param), **privacy_params(epsilon, delta, unit)}
            )
            fit_with_progress(model, split.train)
            res = run_eval(model, split, k=ks)
            results.append(res)
            console.print(str(res))
            if groups:
                console.print(res.per_group.to_string())
        if json_out is not None:
            json_out.write_text(json.dumps([r.to_dict() for r in results], indent=2, default=float))


# ---------------------------------------------------------------- recommend
def recommend(
    model_path: Annotated[Path, typer.Argument(help="A model saved by `privrec train`.")],
    user: Annotated[list[str], typer.Option("--user", "-u", help="External user id (repeatable).")],
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
    include_seen: Annotated[bool, typer.Option(help="Allow items the user already has.")] = False,
) -> None:
    """Print the top-k items for users of a saved model."""
    from privrec.models import load_model

    with handle_errors():
        model = load_model(model_path)
        ids = coerce_ids(user, model.user_ids_)
        items, scores = model.recommend_ids(ids, k=k, exclude_seen=not include_seen)
        table = Table("user", "rank", "item", "score")
        for u, row_items, row_scores in zip(user, items, scores, strict=True):
            for rank, (item, score) in enumerate(zip(row_items, row_scores, strict=True), start=1):
                if item is not None:
                    table.add_row(str(u), str(rank), str(item), f"{score:.4f}")
        console.print(table)


def demo(
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 20_000,
    items: Annotated[int, typer.Option(help="Synthetic items.")] = 1000,
    seed: Annotated[
        int, typer.Option(help="Data and split seed (the privacy noise is never seeded).")
    ] = 0,
    report: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path(
        "report.html"
    ),
    private: Annotated[bool, typer.Option(help="Also train the private models.")] = True,
) -> None:
    """Synthetic data → non-private baselines and private models (ε = 1, 4): Recall/NDCG@20 + report."""
    from privrec.data import synthetic
    from privrec.evaluation import evaluate as run_eval
    from privrec.evaluation import random_holdout
    from privrec.report import ReportRow, write_html_report

    with handle_errors():
        t_start = time.perf_counter()
        data = synthetic(n_users=users, n_items=items, seed=seed)
        split = random_holdout(data, test_fraction=0.2, seed=seed)
        delta = 1e-6
        console.print(
            f"synthetic data: {data.n_users:,} users × {data.n_items:,} items, {data.nnz:,} interactions "
            f"(seed {seed}); 20% of each user's items held out"
        )
        table = Table(
            title="privrec demo: ranking quality on held-out items",
            caption="ε = ∞: not private. Private models: user-level (ε, δ)-DP.",
        )
        for col in ("model", "ε (user level)", "Recall@20", "NDCG@20", "Coverage@20", "fit s"):
            table.add_column(col, justify="right" if col != "model" else "left")
        runs: list[tuple[str, str, float, dict[str, Any]]] = [
            (name, name, float("inf"), {}) for name in ("popularity", "itemknn", "ease", "als")
        ]
        if private:
            for eps in DEMO_EPSILONS:
                for name in ("dppopularity", "dpals"):
                    runs.append((name, name, eps, {"epsilon": eps, "delta": delta, "unit": "user"}))
        rows: list[ReportRow] = []
        for name, family, eps, params in runs:
            model = build_model(name, params)
            t0 = time.perf_counter()
            fit_with_progress(model, split.train)
            fit_s = time.perf_counter() - t0
            res = run_eval(model, split, k=(20,))
            metrics = {
                "Recall@20": res.metric("recall", 20),
                "NDCG@20": res.metric("ndcg", 20),
                "Coverage@20": res.metric("coverage", 20),
            }
            label = name if not params else f"{name} (ε={eps:g})"
            rows.append(ReportRow(label, family, eps, metrics, getattr(model, "guarantee_", None)))
            table.add_row(
                label,
                "∞" if not params else f"{eps:g}",
                f"{metrics['Recall@20']:.4f}",
                f"{metrics['NDCG@20']:.4f}",
                f"{metrics['Coverage@20']:.3f}",
                f"{fit_s:.1f}",
            )
        console.print(table)
        if private:
            out = write_html_report(
                report,
                rows,
                title="privrec demo: privacy-utility report",
                dataset=f"synthetic ({data.n_users:,} users × {data.n_items:,} items, seed {seed})",
                metric_names=["Recall@20", "NDCG@20", "Coverage@20"],
                plot_metric="Recall@20",
            )
            console.print(f"report: {out} (plot: {out.with_suffix('.png')}); δ = {delta:g}")
        console.print(f"total {time.perf_counter() - t_start:.1f} s")
