"""Privacy-utility trade-off of privrec's private recommenders, against the anchors.

Usage::

    python benchmarks/privacy_utility.py           # full run (about 30-40 min on 2 cores)
    python benchmarks/privacy_utility.py --quick   # ml-100k + ml-1m, ε ∈ {1, ∞}
    # or one data set per process, then merge the parts into the report:
    python benchmarks/privacy_utility.py --datasets gowalla-lightgcn --part gowalla
    python benchmarks/privacy_utility.py --merge ml100k ml1m gowalla

Quality
    Recall@20 and NDCG@20, overall and per user-activity quartile, for DPALS
    (``method="adaptive"`` picked on validation, ``"adaptive"`` with its
    defaults untouched — ``dpals-default``, what travels to unseen data — and
    ``"tail"`` with its defaults), DPEASE and DPPopularity (defaults) at user-level
    ε ∈ {0.5, 1, 2, 5, 10, 20}, δ = 1e-5, with their non-private counterparts
    (ImplicitALS, EASE, Popularity) as the ε = ∞ column.

    * ``ml-1m-implicit-r3`` and ``gowalla-lightgcn`` (LightGCN splits): hyper-
      parameters are picked on valid.txt (train on train.txt), then the model is
      refitted on train.txt + valid.txt and scored on test.txt (training items
      excluded), the anchors' protocol.
    * ``ml-100k`` (``u.data``, ratings ≥ 4 as positives): strong generalisation,
      held-out validation users for the selection and held-out test users for
      the report.
    * ``movietweetings-100k`` (short histories, the anchors' protocol): ratings ≥ 7
      as positives, users with ≥ 3, per-user random 20% test holdout (seed 0);
      selection on a further 20% holdout of the training part (seed 1).

    Private cells are the mean of :data:`SEEDS` seeded noise draws (seeded for
    reproducibility — seeded noise is NOT private, fine for a benchmark). The
    selection grids are small (see :data:`GRIDS`), one noise draw per candidate,
    and NOT charged to ε (as in the reference; ``bench_private_tuning.py``
    measures the charged alternative): DPALS's candidates are its defaults (the
    data-adaptive bounds), 8 factors, no per-user shrinkage of the blend, B at
    the 60th percentile, and the nominal bound B₀ = 100; DPEASE's are its
    defaults, C = 10 and a larger ridge. Selection scores at most
    :data:`SELECT_USERS` validation users (a fixed random subset; only gowalla has
    more). ImplicitALS runs its defaults (the lead's grid in ``bench_als.py``),
    EASE picks its ridge.

The DPALS-vs-ImplicitALS epoch time is measured by ``bench_dpals_speed.py``
(``results/dpals_speed.md``).

Results: ``benchmarks/results/privacy_utility.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from setting import DATA, DELTA, HERE, K, machine_info, machine_markdown

EPSILONS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
SEEDS = (0, 1)
THREADS = 2
PRIVATE = ("dpals-adaptive", "dpals-default", "dpals-tail", "dpease", "dppopularity")
COUNTERPART = {
    "dpals-adaptive": "implicitals",
    "dpals-default": "implicitals",
    "dpals-tail": "implicitals",
    "dpease": "ease",
    "dppopularity": "popularity",
}
# Hyper-parameters are selected on at most this many validation users (a fixed random subset;
# gowalla has ~30k, and the selection fits and scores every candidate at every ε).
SELECT_USERS = 8000
# DPEASE / EASE run on at most this many head items on gowalla (the dense Gram is n_items²).
EASE_MAX_ITEMS = {"gowalla-lightgcn": 3000}
GRIDS: dict[str, list[dict[str, Any]]] = {
    "dpals-adaptive": [
        {},
        {"factors": 8},
        {"popularity_shrinkage": 0.0},
        {"bound_quantile": 0.6},
        {"nominal_bound": 100},
    ],
    "dpease": [{}, {"max_contribution": 10.0}, {"reg_scale": 10.0}],
}
# Short-history data (anchors.md protocol): ratings >= 7 are positives, users with >= 3 of them,
# a per-user random 20% test holdout (seed 0); selection holds out 20% of the training part (seed 1).
MOVIETWEETINGS = "movietweetings-100k"
# Reference DP-ALS (anchors.md): ε -> (adaptive, tail) Recall@20 on test.
ANCHORS: dict[str, dict[float, tuple[float, float]]] = {
    "ml-1m-implicit-r3": {1.0: (0.216, 0.181), 5.0: (0.294, 0.260), 10.0: (0.313, 0.276)},
    "gowalla-lightgcn": {1.0: (0.060, 0.025), 5.0: (0.084, 0.059), 10.0: (0.096, 0.068)},
}
ANCHOR_POPULARITY = {"ml-1m-implicit-r3": 0.183, "gowalla-lightgcn": 0.043}


# ----------------------------------------------------------------- models
class _HeadEASE:
    """Non-private EASE on the most popular items only (exact counts; gowalla's catalogue is too big)."""

    def __init__(self, regularization: float, max_items: int) -> None:
        self.regularization, self.max_items = regularization, max_items

    def fit(self, data: Any) -> _HeadEASE:
        from privrec.models.ease import ease_from_gram, item_gram

        m = sp.csr_matrix(data.matrix)
        counts = np.bincount(m.indices, minlength=m.shape[1])
        self.head = np.sort(np.argsort(-counts, kind="stable")[: self.max_items])
        self.train = m
        x = sp.csr_matrix(m[:, self.head])
        x.data[:] = 1.0
        self.weights = ease_from_gram(item_gram(x), self.regularization)
        return self

    def _scores(self, hist: sp.csr_matrix) -> np.ndarray:
        out = np.full(hist.shape, -np.inf, dtype=np.float32)
        sub = sp.csr_matrix(hist[:, self.head])
        sub.data[:] = 1.0
        out[:, self.head] = np.asarray(sub @ self.weights, dtype=np.float32)
        return out

    def recommend(
        self, user_ids: Any, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        from privrec.models.ranking import mask_seen, top_k

        hist = sp.csr_matrix(self.train[np.atleast_1d(np.asarray(user_ids))])
        scores = self._scores(hist)
        if exclude_seen:
            mask_seen(scores, hist)
        return top_k(scores, k)

    def recommend_history(
        self, user_items: Any, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        from privrec.models.ranking import mask_seen, top_k

        hist = sp.csr_matrix(user_items)
        scores = self._scores(hist)
        if exclude_seen:
            mask_seen(scores, hist)
        return top_k(scores, k)


def _make(model: str, dataset: str, eps: float | None, params: dict[str, Any], seed: int) -> Any:
    from privrec.models.als import ImplicitALS
    from privrec.models.dp_als import DPALS
    from privrec.models.dp_ease import DPEASE
    from privrec.models.dp_popularity import DPPopularity
    from privrec.models.ease import EASE
    from privrec.models.popularity import Popularity

    priv: dict[str, Any] = {"epsilon": eps, "delta": DELTA, "unit": "user", "seed": seed}
    if model in ("dpals-adaptive", "dpals-default"):
        return DPALS(**priv, method="adaptive", **params)
    if model == "dpals-tail":
        return DPALS(**priv, method="tail", **params)
    if model == "dpease":
        return DPEASE(**priv, max_items=EASE_MAX_ITEMS.get(dataset, 5000), **params)
    if model == "dppopularity":
        return DPPopularity(**priv, **params)
    if model == "implicitals":
        return ImplicitALS(num_threads=THREADS, **params)
    if model == "ease":
        if dataset in EASE_MAX_ITEMS:
            return _HeadEASE(params.get("regularization", 300.0), EASE_MAX_ITEMS[dataset])
        return EASE(**params)
    if model == "popularity":
        return Popularity(**params)
    raise ValueError(model)


def _evaluate(model: Any, split: Any, on: str) -> Any:
    from privrec.evaluation import evaluate

    return evaluate(model, split, k=(K,), on=on, groups=4, metrics=("recall", "ndcg"))  # type: ignore[arg-type]


# ----------------------------------------------------------------- splits
def _splits(dataset: str) -> tuple[Any, Any, str, str]:
    """(selection split, report split, selection set, report set)."""
    from privrec.data import load
    from privrec.evaluation import load_split, strong_generalization

    if dataset == "ml-100k":
        data = load(DATA / "ml-100k" / "u.data", format="ml-100k", binarize=4.0)
        data = data.filter(min_user_interactions=1, min_item_interactions=1)
        split = strong_generalization(data, 0.15, 0.8, seed=0, valid=True)
        return split, split, "valid", "test"
    if dataset == MOVIETWEETINGS:
        from privrec.evaluation import random_holdout

        data = load(DATA / dataset / "ratings.dat", format="movietweetings", binarize=7.0)
        data = data.filter(min_user_interactions=3, min_item_interactions=1)
        report = random_holdout(data, 0.2, seed=0)
        select = random_holdout(report.train, 0.2, seed=1)
        return select, report, "test", "test"
    sel = load_split(DATA / dataset, merge_valid_into_train=False)
    rep = load_split(DATA / dataset, merge_valid_into_train=True)
    return _subsample_valid(sel, SELECT_USERS), rep, "valid", "test"


def _subsample_valid(split: Any, n: int) -> Any:
    """The split with at most ``n`` validation users (a fixed random subset), to keep selection cheap."""
    import dataclasses

    es = split.valid
    if es is None or es.targets.shape[0] <= n:
        return split
    rows = np.sort(np.random.default_rng(123).choice(es.targets.shape[0], size=n, replace=False))
    users = None if es.users is None else es.users[rows]
    fold_in = None if es.fold_in is None else es.fold_in[rows]
    sub = dataclasses.replace(
        es, targets=es.targets[rows], user_ids=es.user_ids[rows], users=users, fold_in=fold_in
    )
    return dataclasses.replace(split, valid=sub)


def _score(
    model: str, dataset: str, eps: float | None, params: dict[str, Any], split: Any, on: str,
    seeds: tuple[int, ...],
) -> dict[str, Any]:  # fmt: skip
    recalls, ndcgs, groups, fits = [], [], [], []
    for seed in seeds:
        m = _make(model, dataset, eps, params, seed)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(split.train)
        fits.append(time.perf_counter() - t0)
        res = _evaluate(m, split, on)
        recalls.append(res.metric("recall", K))
        ndcgs.append(res.metric("ndcg", K))
        groups.append(res.per_group)
    pg = sum(g[[f"recall@{K}", f"ndcg@{K}"]] for g in groups) / len(groups)
    return {
        "recall": float(np.mean(recalls)),
        "recall_std": float(np.std(recalls)),
        "ndcg": float(np.mean(ndcgs)),
        "per_group": [
            {"group": str(i), "recall": float(r[f"recall@{K}"]), "ndcg": float(r[f"ndcg@{K}"])}
            for i, r in pg.iterrows()
        ],
        "fit_seconds": round(float(np.mean(fits)), 2),
    }


ALL_MODELS = (*PRIVATE, "implicitals", "ease", "popularity")


def quality(
    datasets: tuple[str, ...], epsilons: tuple[float, ...], models: tuple[str, ...] = ALL_MODELS
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        sel, rep, on_sel, on_rep = _splits(dataset)
        print(f"[quality] {dataset}: {rep.train}", flush=True)
        for model in models:
            private = model in PRIVATE
            for eps in epsilons if private else (None,):
                grid = GRIDS.get(model, [{}])
                if model == "ease":
                    grid = [{"regularization": r} for r in (100.0, 300.0, 1000.0)]
                chosen, valid_scores = grid[0], []
                if len(grid) > 1:
                    for params in grid:
                        s = _score(model, dataset, eps, params, sel, on_sel, SEEDS[:1])
                        valid_scores.append({"params": params, "recall": s["recall"]})
                    chosen = max(valid_scores, key=lambda v: v["recall"])["params"]
                res = _score(model, dataset, eps, chosen, rep, on_rep, SEEDS if private else (0,))
                row = {
                    "dataset": dataset, "model": model,
                    "epsilon": eps if eps is not None else math.inf,
                    "params": chosen, "selection": valid_scores, **res,
                }  # fmt: skip
                rows.append(row)
                print(
                    f"  {model:15s} eps={row['epsilon']:<5} recall={res['recall']:.4f} "
                    f"ndcg={res['ndcg']:.4f} {chosen} ({res['fit_seconds']}s)",
                    flush=True,
                )
    return rows


# ----------------------------------------------------------------- report
def _fmt_eps(e: float) -> str:
    return "∞" if math.isinf(e) else f"{e:g}"


def _anchor_note(row: dict[str, Any]) -> str:
    ds, eps, model = row["dataset"], row["epsilon"], row["model"]
    if not model.startswith("dpals") or ds not in ANCHORS or eps not in ANCHORS[ds]:
        return ""
    ref = ANCHORS[ds][eps][0 if model == "dpals-adaptive" else 1]
    d = row["recall"] - ref
    return f" ({'beats' if d >= 0 else 'misses'} {ref:.3f} by {abs(d):.3f})"


def _run_dates(result: dict[str, Any]) -> str:
    """When the rows ran: one date, or per data set (and per model where a model was re-run)."""
    rows = [r for r in result["quality"] if "run" in r]
    if len({r["run"] for r in rows}) <= 1:
        return str(result["date"])
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == ds]
        dates = [r["run"] for r in mine]
        main = max(set(dates), key=dates.count)
        later = {r["model"]: r["run"] for r in mine if r["run"] != main}
        extra = ", ".join(f"{m} {d}" for m, d in later.items())
        out.append(f"{ds} {main}" + (f" ({extra})" if extra else ""))
    return "; ".join(out)


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Privacy-utility trade-off (user-level ε, δ = 1e-5)", ""]
    when = _run_dates(result)
    lines += [f"Run {when} ({'quick' if result['quick'] else 'full'} mode). "]
    lines += [
        "Recall@20 on the report set (ml-1m / gowalla: train+valid → test, training items "
        "excluded; ml-100k: strong generalisation, held-out test users). Private cells: mean of "
        f"{len(SEEDS)} seeded noise draws; hyper-parameters picked on the validation set. "
        "ε = ∞ is the non-private counterpart (ImplicitALS for DPALS, EASE for DPEASE, "
        "Popularity for DPPopularity). DPALS cells at ε ∈ {1, 5, 10} are compared with the "
        "reference DP-ALS of `anchors.md` (adaptive rows against its adaptive-weights figures, "
        "tail rows against its tail figures); note privrec pays ε for choosing its head items. "
        "The machine (2 cores) was shared with other engineers' jobs; the run was niced.",
        "",
    ]
    rows = result["quality"]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        eps_all = sorted(
            {r["epsilon"] for r in rows if r["dataset"] == ds and r["model"] in PRIVATE}
        )
        lines += [
            f"## {ds}",
            "",
            "| model | " + " | ".join(f"ε={_fmt_eps(e)}" for e in eps_all) + " | ε=∞ |",
        ]
        lines += ["|---|" + "---:|" * (len(eps_all) + 1)]
        for model in PRIVATE:
            cells = []
            for e in eps_all:
                r = next(
                    (
                        r
                        for r in rows
                        if r["dataset"] == ds and r["model"] == model and r["epsilon"] == e
                    ),
                    None,
                )
                cells.append("" if r is None else f"{r['recall']:.4f}{_anchor_note(r)}")
            np_row = next(
                (r for r in rows if r["dataset"] == ds and r["model"] == COUNTERPART[model]), None
            )
            cells.append("" if np_row is None else f"{np_row['recall']:.4f} ({COUNTERPART[model]})")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        if ds in ANCHOR_POPULARITY:
            lines += ["", f"Anchor non-private popularity: {ANCHOR_POPULARITY[ds]:.3f}."]
        lines += [
            "",
            "NDCG@20:",
            "",
            "| model | " + " | ".join(f"ε={_fmt_eps(e)}" for e in eps_all) + " |",
        ]
        lines += ["|---|" + "---:|" * len(eps_all)]
        for model in PRIVATE:
            cells = []
            for e in eps_all:
                r = next(
                    (
                        r
                        for r in rows
                        if r["dataset"] == ds and r["model"] == model and r["epsilon"] == e
                    ),
                    None,
                )
                cells.append("" if r is None else f"{r['ndcg']:.4f}")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines += ["", "Recall@20 by user-activity quartile (training history length):", ""]
        sample = next(r for r in rows if r["dataset"] == ds)
        groups = [g["group"] for g in sample["per_group"]]
        lines += ["| model | ε | " + " | ".join(groups) + " |", "|---|---|" + "---:|" * len(groups)]
        for r in rows:
            if r["dataset"] == ds and (r["epsilon"] in (1.0, 5.0) or math.isinf(r["epsilon"])):
                lines.append(
                    f"| {r['model']} | {_fmt_eps(r['epsilon'])} | "
                    + " | ".join(f"{g['recall']:.4f}" for g in r["per_group"])
                    + " |"
                )
        lines.append("")
    lines += _targets(rows)
    lines += [
        "DPALS-vs-ImplicitALS epoch time: see `dpals_speed.md` (`benchmarks/bench_dpals_speed.py`).",
        "",
    ]
    lines += ["## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


# issue 15's utility targets: (dataset, model, ε, at least)
_LEVELS = (
    ("gowalla-lightgcn", "dpals-adaptive", 1.0, 0.066),
    ("gowalla-lightgcn", "dpals-adaptive", 5.0, 0.11),
    ("ml-1m-implicit-r3", "dpals-adaptive", 5.0, 0.34),
)


def _row(rows: list[dict[str, Any]], ds: str, model: str, eps: float) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r["dataset"] == ds and r["model"] == model and r["epsilon"] == eps),
        None,
    )


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    """Where the issue's utility targets stand, read off the rows above (met / NOT met)."""
    out = ["## Targets", "", "| target | measured | |", "|---|---|---|"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**NOT met**"

    for ds, model, eps, level in _LEVELS:
        r = _row(rows, ds, model, eps)
        if r is not None:
            out.append(
                f"| {ds} {model} ε={_fmt_eps(eps)} ≥ {level} | {r['recall']:.4f} ± "
                f"{r.get('recall_std', 0.0):.4f} | {verdict(r['recall'] >= level)} |"
            )
    out += [
        "",
        "Against DPPopularity (✓ = above it; lightest quartile: DPALS's Recall@20 of the "
        "quarter of users with the shortest training histories, ✓ = not below DPPopularity's):",
        "",
        "| dataset | ε | dppopularity | dpals-default | dpals-adaptive | dpease "
        "| lightest quartile: dppopularity / dpals-default / dpals-adaptive |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    mark = {True: "✓", False: "✗"}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for eps in sorted({r["epsilon"] for r in rows if r["dataset"] == ds}):
            pop = _row(rows, ds, "dppopularity", eps)
            if math.isinf(eps) or pop is None or (eps < 1.0 and ds != "ml-100k"):
                continue
            cells, quart = [], [f"{pop['per_group'][0]['recall']:.4f}"]
            for model in ("dpals-default", "dpals-adaptive", "dpease"):
                r = _row(rows, ds, model, eps)
                if r is None:
                    cells.append("")
                    continue
                cells.append(f"{r['recall']:.4f} {mark[r['recall'] > pop['recall']]}")
                if model != "dpease":
                    q, p = r["per_group"][0]["recall"], pop["per_group"][0]["recall"]
                    quart.append(f"{q:.4f} {mark[q >= p]}")
            out.append(
                f"| {ds} | {_fmt_eps(eps)} | {pop['recall']:.4f} | "
                + " | ".join(cells)
                + f" | {' / '.join(quart)} |"
            )
    return [*out, ""]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["quality"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for model in PRIVATE:
            pts = sorted(
                (r["epsilon"], r["recall"])
                for r in rows
                if r["dataset"] == ds and r["model"] == model
            )
            if pts:
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
                np_row = next(
                    (r for r in rows if r["dataset"] == ds and r["model"] == COUNTERPART[model]),
                    None,
                )
                if np_row is not None and model != "dpals-tail":
                    ax.axhline(np_row["recall"], color=line.get_color(), ls=":", lw=1)
        if ds in ANCHORS:
            e = sorted(ANCHORS[ds])
            ax.plot(
                e,
                [ANCHORS[ds][x][0] for x in e],
                "k--",
                marker="x",
                label="reference DP-ALS (adaptive)",
            )
        ax.set_xscale("log")
        ax.set_xlabel("ε (user level, δ = 1e-5)")
        ax.set_ylabel("Recall@20")
        ax.set_title(f"{ds} (dotted: non-private)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(result: dict[str, Any], out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    if result["quality"]:
        plot(result, out / f"{stem}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--datasets", help="comma-separated subset of the data sets")
    ap.add_argument("--epsilons", help="comma-separated subset of the ε grid")
    ap.add_argument("--part", help="write only results/privacy_utility-part-PART.json")
    ap.add_argument("--models", help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="PART",
        help="merge parts into the report (a later part's row replaces an earlier part's row "
        "of the same data set, model and ε: re-run one model with --models and merge it last)",
    )
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine_info(),
        "delta": DELTA,
        "seeds": list(SEEDS),
        "grids": GRIDS,
        "quality": [],
    }
    if args.merge:
        parts = [
            json.loads((out / f"privacy_utility-part-{p}.json").read_text()) for p in args.merge
        ]
        result["date"] = max(p["date"] for p in parts)
        merged: dict[tuple[str, str, float], dict[str, Any]] = {}
        for part in parts:
            for r in part["quality"]:
                r["epsilon"] = float(r["epsilon"])
                r.setdefault("run", part["date"])  # parts may come from different days
                merged[(r["dataset"], r["model"], r["epsilon"])] = r  # dicts keep first order
        result["quality"] = list(merged.values())
        _write(result, out, "privacy_utility")
        print(markdown(result))
        return
    if not DATA.exists():
        print(f"shared data not found at {DATA}; skipping quality", flush=True)
        datasets: tuple[str, ...] = ()
    elif args.datasets:
        datasets = tuple(args.datasets.split(","))
    elif args.quick:
        datasets = ("ml-100k", "ml-1m-implicit-r3")
    else:
        datasets = ("ml-100k", MOVIETWEETINGS, "ml-1m-implicit-r3", "gowalla-lightgcn")
    epsilons: tuple[float, ...] = (1.0,) if args.quick else EPSILONS
    if args.epsilons:
        epsilons = tuple(float(e) for e in args.epsilons.split(","))
    models = ALL_MODELS
    if args.models:
        models = tuple(args.models.split(","))
        if unknown := set(models) - set(ALL_MODELS):
            ap.error(f"unknown models {sorted(unknown)}; choose from {ALL_MODELS}")
    result["quality"] = quality(datasets, epsilons, models)
    if args.part:
        path = out / f"privacy_utility-part-{args.part}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {path}")
        return
    _write(result, out, "privacy_utility-quick" if args.quick else "privacy_utility")
    print(markdown(result))


if __name__ == "__main__":
    main()
