"""The ``privrec`` command line.

Errors the library detects (bad data, bad config, unknown users) print one
clear line and exit with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from privrec.errors import ConfigError, PrivrecError

app = typer.Typer(
    name="privrec",
    help="Privacy-preserving recommender systems: train, evaluate and serve recommenders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect interaction data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
privacy_app = typer.Typer(
    help="Inspect the privacy guarantee of a saved model.", no_args_is_help=True
)
app.add_typer(privacy_app, name="privacy")

console = Console()
err_console = Console(stderr=True)
_STATE: dict[str, bool] = {"debug": False}


class Protocol(StrEnum):
    holdout = "holdout"
    leave_last_out = "leave-last-out"
    strong = "strong"
    files = "files"


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _STATE["debug"] = debug


@contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into one red line and exit status 1 (unless --debug)."""
    try:
        yield
    except (PrivrecError, FileNotFoundError, KeyError, IndexError, ValueError) as exc:
        if _STATE["debug"]:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        err_console.print(
            f"[bold red]error:[/] {type(exc).__name__}: {msg}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def _load_data(path: Path, fmt: str | None, binarize: float | None = None) -> Any:
    from privrec.data import load

    data = load(path, format=fmt)
    if binarize is not None:
        data = data.binarize(binarize)
    return data


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as TOML scalars (numbers, booleans, strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--param expects key=value, found {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def _privacy_params(epsilon: float | None, delta: float | None, unit: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if epsilon is not None:
        out["epsilon"] = epsilon
    if delta is not None:
        out["delta"] = delta
    if unit is not None:
        out["unit"] = unit
    return out


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def _build_model(name: str, params: dict[str, Any]) -> Any:
    import privrec.models.all  # noqa: F401  (registers every model)
    from privrec.models import MODEL_REGISTRY
    from privrec.models.private import PrivateRecommender

    if name not in MODEL_REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_REGISTRY))}"
        )
    cls = MODEL_REGISTRY[name]
    given = [p for p in ("epsilon", "delta", "unit") if p in params]
    if issubclass(cls, PrivateRecommender):
        missing = [p for p in ("epsilon", "delta", "unit") if p not in params]
        if missing:
            raise ConfigError(
                f"{name} is a private model: give --epsilon, --delta and --unit "
                f"(missing: {', '.join(missing)})"
            )
    elif given:
        raise ConfigError(f"{name} is not a private model: --{given[0]} does not apply to it")
    return cls.from_config(params)


def _fit(model: Any, data: Any) -> Any:
    iterations = model.get_params().get("iterations")
    if iterations is None:
        with err_console.status(f"fitting {model.name}…"):
            return model.fit(data)
    with _progress() as bar:
        task = bar.add_task(f"fitting {model.name}", total=int(iterations))

        def step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return model.fit(data, progress=step)


# --------------------------------------------------------------------- data
@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="Interaction file.")],
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="File format (inferred when omitted).")
    ] = None,
) -> None:
    """Print users, items, interactions, density and activity quantiles of a file."""
    with _errors():
        data = _load_data(path, fmt)
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


# -------------------------------------------------------------------- train
@app.command()
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
) -> None:
    """Fit a model on a whole interaction file and save it.

    A TOML config may hold ``model = "als"``, a ``[params]`` table and a
    ``[data]`` table (``path``, ``format``, ``binarize``); command-line
    options override it.
    """
    with _errors():
        cfg = _read_config(config)
        data_cfg = cfg.get("data", {})
        name = model_name or cfg.get("model")
        if name is None:
            raise ConfigError("no model given: pass --model or set model = ... in the config")
        path = data_path or (Path(data_cfg["path"]) if "path" in data_cfg else None)
        if path is None:
            raise ConfigError("no data given: pass --data or set [data] path = ... in the config")
        params = {
            **cfg.get("params", {}),
            **_parse_params(param),
            **_privacy_params(epsilon, delta, unit),
        }
        model = _build_model(name, params)
        data = _load_data(
            path,
            fmt or data_cfg.get("format"),
            binarize if binarize is not None else data_cfg.get("binarize"),
        )
        t0 = time.perf_counter()
        _fit(model, data)
        saved = model.save(output, include_user_data=True if include_user_data else None)
        console.print(
            f"fitted [bold]{model.name}[/] on {data.n_users:,} users × {data.n_items:,} items "
            f"({data.nnz:,} interactions) in {time.perf_counter() - t0:.1f} s → {saved}"
        )
        guarantee = getattr(model, "guarantee_", None)
        if guarantee is not None:
            console.print(
                f"privacy: ({guarantee.epsilon:.3g}, {guarantee.delta:.1e})-DP per {guarantee.unit.value}; "
                f"`privrec privacy explain {saved}` says what that means"
            )


# ----------------------------------------------------------------- evaluate
def _make_split(
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
    data = _load_data(data_path, fmt, binarize)
    if protocol is Protocol.holdout:
        return ev.random_holdout(data, test_fraction=test_fraction, seed=seed)
    if protocol is Protocol.leave_last_out:
        return ev.leave_last_out(data)
    n = max(1, round(0.1 * data.n_users))
    return ev.strong_generalization(data, n_heldout_users=n, seed=seed)


@app.command()
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

    with _errors():
        ks = tuple(k or (10, 20, 50))
        split = _make_split(protocol, data_path, fmt, binarize, seed, test_fraction)
        results = []
        for name in model_name:
            model = _build_model(
                name, {**_parse_params(param), **_privacy_params(epsilon, delta, unit)}
            )
            _fit(model, split.train)
            res = run_eval(model, split, k=ks)
            results.append(res)
            console.print(str(res))
            if groups:
                console.print(res.per_group.to_string())
        if json_out is not None:
            json_out.write_text(json.dumps([r.to_dict() for r in results], indent=2, default=float))


# ---------------------------------------------------------------- recommend
@app.command()
def recommend(
    model_path: Annotated[Path, typer.Argument(help="A model saved by `privrec train`.")],
    user: Annotated[list[str], typer.Option("--user", "-u", help="External user id (repeatable).")],
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
    include_seen: Annotated[bool, typer.Option(help="Allow items the user already has.")] = False,
) -> None:
    """Print the top-k items for users of a saved model."""
    from privrec.models import load_model

    with _errors():
        model = load_model(model_path)
        ids = _coerce_ids(user, model.user_ids_)
        items, scores = model.recommend_ids(ids, k=k, exclude_seen=not include_seen)
        table = Table("user", "rank", "item", "score")
        for u, row_items, row_scores in zip(user, items, scores, strict=True):
            for rank, (item, score) in enumerate(zip(row_items, row_scores, strict=True), start=1):
                if item is not None:
                    table.add_row(str(u), str(rank), str(item), f"{score:.4f}")
        console.print(table)


def _coerce_ids(raw: list[str], known: np.ndarray) -> np.ndarray:
    """Command-line ids are strings; match the dtype of the model's ids."""
    if np.issubdtype(known.dtype, np.integer):
        try:
            return np.array([int(r) for r in raw], dtype=known.dtype)
        except ValueError:
            pass
    return np.array(raw, dtype=object if known.dtype == object else known.dtype)


# ------------------------------------------------------------------ privacy
@privacy_app.command("explain")
def privacy_explain(
    model_path: Annotated[Path, typer.Argument(help="A private model saved by `privrec train`.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the guarantee as JSON instead.")
    ] = False,
) -> None:
    """Print what a saved private model promises, in numbers and in plain words."""
    from privrec.models import load_model

    with _errors():
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


# --------------------------------------------------------------------- demo
DEMO_EPSILONS = (1.0, 4.0)


@app.command()
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

    with _errors():
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
            model = _build_model(name, params)
            t0 = time.perf_counter()
            _fit(model, split.train)
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


# ------------------------------------------------------- he: private scoring
he_app = typer.Typer(
    help="Homomorphic private scoring (needs the \\[he] extra).", no_args_is_help=True
)
app.add_typer(he_app, name="he")


@he_app.command("score")
def he_score(
    model_path: Annotated[Path, typer.Argument(help="A factor model saved by `privrec train`.")],
    user: Annotated[
        str, typer.Option("--user", "-u", help="External user id (history read from the file).")
    ],
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
    packing: Annotated[
        str, typer.Option(help="compact (smallest upload) or replicated (no rotation keys).")
    ] = "compact",
    noise_epsilon: Annotated[
        float | None, typer.Option(help="Add Gaussian noise to the scores: per-query ε.")
    ] = None,
    noise_delta: Annotated[float, typer.Option(help="Per-query δ of the score noise.")] = 1e-6,
    item_clip: Annotated[float, typer.Option(help="Clip norm of released item rows.")] = 1.0,
    user_clip: Annotated[float, typer.Option(help="Clip norm of the user vector.")] = 1.0,
) -> None:
    """Score one user privately: client and server in one process, CKKS in between.

    The client folds the user in from their history, encrypts the factors and
    keeps the secret key; the server sees only ciphertexts and the public
    context. Prints the top-k, the bytes each way and where the time went.
    """
    from privrec.errors import MissingUserDataError
    from privrec.models import load_model
    from privrec.secure.he import (
        HE_STANDARD_MAX_BITS,
        PrivateScoringClient,
        PrivateScoringServer,
        ScoreNoise,
    )

    with _errors():
        model = load_model(model_path)
        if getattr(model, "_released_only", False):
            raise MissingUserDataError(
                f"{model_path} holds only released parameters: no history for user {user!r}"
            )
        idx = model.user_index(_coerce_ids([user], model.user_ids_))
        history = model.user_items_[idx]
        noise = (
            ScoreNoise(noise_epsilon, noise_delta, item_clip, user_clip)
            if noise_epsilon is not None
            else None
        )
        client = PrivateScoringClient(
            packing=packing, user_clip_norm=user_clip if noise is not None else None
        )
        server = PrivateScoringServer.from_model(model, params=client.params, noise=noise)
        prep_s = server.prepare(client.packing)
        request = client.encrypt_query(client.fold_in(model, history)).to_bytes()
        encrypt_s = client.last_timings["encrypt"]
        t0 = time.perf_counter()
        response = server.score(request).to_bytes()
        server_s = time.perf_counter() - t0
        seen = history.indices
        head = getattr(model, "head_items_", None)
        if head is not None:  # items a private model did not release are never recommended
            seen = np.union1d(seen, np.setdiff1d(np.arange(model.n_items_), head))
        items, scores = client.recommend(response, k=k, seen=seen)
        table = Table("rank", "item", "score", title=f"private top-{k} for user {user}")
        for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
            if item >= 0:
                table.add_row(str(rank), str(model.item_ids_[item]), f"{score:.4f}")
        console.print(table)
        p = client.params
        console.print(
            f"CKKS degree {p.poly_modulus_degree}, modulus {list(p.coeff_mod_bit_sizes)} "
            f"({p.total_bits} bits ≤ {HE_STANDARD_MAX_BITS[p.poly_modulus_degree]}, "
            "the 128-bit bound), "
            f"scale 2^{p.scale_bits}, packing {client.packing.value}"
        )
        console.print(
            f"bytes up {len(request):,} (public context {len(client.public_context):,}), "
            f"bytes down {len(response):,}"
        )
        console.print(
            f"timings: keygen {client.keygen_seconds:.3f} s, "
            f"encrypt {encrypt_s:.3f} s, server {server_s:.3f} s "
            f"(compute {server.last_timings.get('compute', 0.0):.3f} s; "
            f"one-off encoding {prep_s:.3f} s), "
            f"decrypt {client.last_timings.get('decrypt', 0.0):.3f} s"
        )
        if noise is not None:
            console.print(
                f"score noise: σ = {noise.sigma:.4g} per score, ({noise.epsilon:g}, "
                f"{noise.delta:g})-DP per query for one item row (clip {item_clip:g} × {user_clip:g})"
            )


# ------------------------------------------------------- silo: cross-silo DPALS
silo_app = typer.Typer(
    help="Cross-silo DPALS or DPEASE over two non-colluding aggregation servers (docs/cross_silo.md).",
    no_args_is_help=True,
)
app.add_typer(silo_app, name="silo")
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
    from privrec.secure.silo import setup_keys

    with _errors():
        port_list = [int(p) for p in ports.split(",")]
        if len(port_list) != 3:
            raise ConfigError("--ports needs three ports: driver,server0,server1")
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

    with _errors():
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

    with _errors():
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

    with _errors():
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


# ------------------------------------------------------- mpc: secure top-k (MPyC)
mpc_app = typer.Typer(
    help="Secure top-k with three MPyC parties (needs the \\[mpc] extra; see docs/secure_scoring.md).",
    no_args_is_help=True,
)
app.add_typer(mpc_app, name="mpc")
_UserBoundOpt = Annotated[
    float, typer.Option("--user-norm-bound", help="Public bound on the user vector's L2 norm.")
]


@mpc_app.command("topk")
def mpc_topk(
    model_path: Annotated[Path, typer.Argument(help="A factor model saved by `privrec train`.")],
    user: Annotated[
        str, typer.Option("--user", "-u", help="External user id (history read from the file).")
    ],
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
    public_items: Annotated[
        bool,
        typer.Option(
            "--public-items/--secret-items",
            help="Item factors known to all parties (released model) or input by party 1 only.",
        ),
    ] = True,
    user_norm_bound: _UserBoundOpt = 4.0,
    item_norm_bound: Annotated[
        float | None,
        typer.Option(help="Public bound on item-row norms (default: from the model's factors)."),
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="Mutually authenticated TLS between the parties.")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for the whole run.")] = 300.0,
) -> None:
    """Top-k for one user by three local MPyC processes on 127.0.0.1.

    Party 0 (the client) folds the user in and inputs u and its seen items, party 1 the
    item factors; only party 0 learns the top-k ids (no scores).
    """
    from privrec.errors import MissingUserDataError
    from privrec.models import load_model
    from privrec.secure.mpc import MPCParams, secure_recommend

    with _errors():
        model = load_model(model_path)
        if getattr(model, "_released_only", False):
            raise MissingUserDataError(
                f"{model_path} holds only released parameters: no history for user {user!r}"
            )
        if not hasattr(model, "item_factors_"):
            raise ConfigError(f"{type(model).__name__} is not a factor model (no item factors)")
        idx = model.user_index(_coerce_ids([user], model.user_ids_))
        history = model.user_items_[idx].toarray()[0]
        if item_norm_bound is None:
            item_norm_bound = float(np.linalg.norm(model.item_factors_, axis=1).max()) * 1.01
        params = MPCParams(user_norm_bound=user_norm_bound, item_norm_bound=item_norm_bound)
        res = secure_recommend(
            model, history, k=k, public_items=public_items, params=params, tls=tls, timeout=timeout
        )
        console.print(f"secure top-{k} for user {user} (ids only, no scores):")
        table = Table("rank", "item")
        for rank, item in enumerate(res.items, start=1):
            if item >= 0:
                table.add_row(str(rank), str(model.item_ids_[item]))
        console.print(table)
        console.print(
            f"3 parties (MPyC, threshold 1), item factors {'public' if public_items else 'secret'}; "
            f"bytes sent {res.total_bytes:,} ({', '.join(f'{b:,}' for b in res.bytes_sent)}); "
            f"protocol {res.seconds:.2f} s, wall {res.wall_seconds:.2f} s"
        )


@mpc_app.command("keys")
def mpc_keys(
    out: Annotated[Path, typer.Argument(help="Folder for ca.pem and party-<i>.pem/.key.")],
) -> None:
    """Create a CA and TLS certificates for the three parties of `privrec mpc party`."""
    from privrec.secure.mpc import make_tls_material

    with _errors():
        make_tls_material(out)
        console.print(
            f"wrote {out}/ca.pem and party-0/1/2.pem/.key: give each party ca.pem and its own "
            "pair; keep ca.key offline"
        )


@mpc_app.command("party")
def mpc_party(
    party_id: Annotated[int, typer.Option("--id", help="0 client, 1 model holder, 2 helper.")],
    parties: Annotated[
        list[str], typer.Option("--party", help="host:port of parties 0, 1, 2 (repeat 3 times).")
    ],
    n_items: Annotated[int, typer.Option("--n-items", help="Catalogue size (public).")],
    factors: Annotated[int, typer.Option("--factors", help="Factors per item (public).")],
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
    user_vector: Annotated[
        Path | None, typer.Option("--user-vector", help="Party 0: the user's factors (.npy).")
    ] = None,
    exclude: Annotated[
        Path | None, typer.Option("--exclude", help="Party 0: item indices to leave out (.npy).")
    ] = None,
    item_factors: Annotated[
        Path | None,
        typer.Option("--item-factors", help="Party 1 (or all with --public-items): Y (.npy)."),
    ] = None,
    public_items: Annotated[
        bool, typer.Option("--public-items", help="Every party holds the same public Y.")
    ] = False,
    user_norm_bound: _UserBoundOpt = 4.0,
    item_norm_bound: Annotated[float, typer.Option(help="Public bound on item-row norms.")] = 4.0,
    bind: Annotated[
        str | None, typer.Option("--bind", help="Interface to listen on (default: own host).")
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            "--tls-dir",
            help="Folder with ca.pem and this party's party-<id>.pem/.key (`privrec mpc keys`).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout")] = 300.0,
) -> None:
    """Run one party of secure top-k; every party must get the same public options."""
    from privrec.secure.mpc import MPCParams, TLSFiles, run_party

    with _errors():
        addrs = []
        for item in parties:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--party must be host:port, found {item!r}")
            addrs.append((host, int(port)))
        res = run_party(
            party_id,
            addrs,
            n_items=n_items,
            n_factors=factors,
            k=k,
            user_vector=None if user_vector is None else np.load(user_vector),
            exclude=None if exclude is None else np.load(exclude),
            item_factors=None if item_factors is None else np.load(item_factors),
            public_items=public_items,
            params=MPCParams(user_norm_bound=user_norm_bound, item_norm_bound=item_norm_bound),
            bind_host=bind,
            tls=None if tls_dir is None else TLSFiles.in_dir(tls_dir, party_id),
            timeout=timeout,
        )
        if res.items is not None:
            console.print("top-k items: " + " ".join(str(i) for i in res.items))
        else:
            console.print(f"party {party_id} done (receives no output)")
        console.print(f"bytes sent {res.bytes_sent:,}; protocol {res.seconds:.2f} s")


from privrec.federated.cli import federated_app  # noqa: E402  (after app, commands import lazily)

app.add_typer(federated_app, name="federated")


def run() -> None:  # pragma: no cover - console entry point helper
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
