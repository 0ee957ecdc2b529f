"""Private recommenders on short-history data: do they beat DPPopularity at ε ≥ 1?

Usage::

    python benchmarks/bench_short_history.py           # full run (about 12 min on 2 cores)
    python benchmarks/bench_short_history.py --quick   # one seed, ε = 1, a small synthetic set
    python benchmarks/bench_short_history.py --validation   # rule checks on validation splits

Issue 15 item 6: with only a handful of items per user, a factor model has little to learn
from and the noise easily drowns it, so DP popularity is the bar to clear. Models, all with
their defaults (no tuning): Popularity (non-private), DPPopularity, DPALS (``method=
"adaptive"``), DPEASE and FederatedMF, at user-level ε ∈ {1, 5}, δ = 1e-5 (as in
``privacy_utility.py``), Recall@20 and NDCG@20, mean ± sd over :data:`SEEDS` noise draws
(seeded noise is reproducible and NOT private — fine for a benchmark).

Data sets, both with the short-history protocol of ``privacy_utility.py`` (users with ≥ 3
positives, a per-user random 20% test holdout with seed 0, training items excluded):

* ``movietweetings-100k`` from the shared data (ratings ≥ 7 as positives);
* ``synthetic-median5``: :func:`privrec.data.synthetic.synthetic` with
  :data:`SYNTHETIC` — after the ≥ 3 filter the median history is 5 items (4 before it).

FederatedMF runs with ``aggregation="central"`` by default (a trusted server adds Gaussian
noise of the calibrated multiplier, PLD accounting). The distributed-DP default is NOT the same
model up to rounding: both apply the learnable-head rule (``head_snr``; distributed DP keeps the
planned 1000-row payload, zeros past the learnable head), but its noise is ≈ 1.26× the central
one (RDP instead of PLD ×1.08, noise sized for 80% honest survivors and 5% corrupt devices
×1.16), and at ε = 1 on short histories that is enough to fall below DPPopularity (validation:
``docs/federated.md``). It also takes ~9 min per fit on movietweetings on this machine against
~30 s. ``--distributed`` runs the true default (with ``--validation`` too; ``--seeds`` and
``--epsilons`` narrow a validation run).

Results: ``benchmarks/results/short_history.{json,md}`` (``short_history-quick`` in quick mode).

``--validation`` scores the defaults' rules where they are chosen: on VALIDATION splits only
(short-history sets: a further 20% of each training user's items, seed 1, as
``privacy_utility.py`` does for movietweetings; ml-100k, ml-1m-implicit-r3 and gowalla-lightgcn:
``privacy_utility.py``'s selection splits), DPPopularity against DPEASE with and without its
low-signal popularity fallback (``popularity_fallback``), DPALS and FederatedMF with and without
its learnable head (``head_snr``) and with uniform instead of per-length count weights
(``count_weighting``), at ε ∈ {1, 5}; ``--models`` (and ``--labels``, single rows) re-runs a
subset and keeps the other rows. Results:
``benchmarks/results/short_history-validation.{json,md}``; with ``--distributed``,
``short_history-validation-distributed.{json,md}``.
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

from setting import DATA, DELTA, HERE, K, machine_info, machine_markdown

EPSILONS = (1.0, 5.0)
SEEDS = (0, 1, 2)
PRIVATE = ("dppopularity", "dpals", "dpease", "federatedmf")
MOVIETWEETINGS = "movietweetings-100k"
SYNTHETIC_NAME = "synthetic-median5"
#: Generator settings: log-normal lengths of mean 5.5 and log-sd 0.8 -> median 4 raw, 5 after
#: keeping users with >= 3 items (movietweetings: 6).
SYNTHETIC: dict[str, Any] = {
    "n_users": 10000,
    "n_items": 2000,
    "interactions_per_user": 5.5,
    "activity_sigma": 0.8,
    "seed": 0,
}
SYNTHETIC_QUICK: dict[str, Any] = {**SYNTHETIC, "n_users": 4000, "n_items": 1000}


def _split(dataset: str, quick: bool) -> Any:
    from privrec.data import load
    from privrec.data.synthetic import synthetic
    from privrec.evaluation import random_holdout

    if dataset == MOVIETWEETINGS:
        data = load(DATA / dataset / "ratings.dat", format="movietweetings", binarize=7.0)
    else:
        data = synthetic(**(SYNTHETIC_QUICK if quick else SYNTHETIC))
    data = data.filter(min_user_interactions=3, min_item_interactions=1)
    return random_holdout(data, 0.2, seed=0)


#: Long-history sets of ``--validation`` (gowalla with ``--datasets``: DPEASE's Gram is large there).
LONG_VALIDATION = ("ml-100k", "ml-1m-implicit-r3")
#: (label, model, extra keyword arguments) of ``--validation``.
VALIDATION_MODELS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("dppopularity", "dppopularity", {}),
    ("dpease (no fallback)", "dpease", {"popularity_fallback": False}),
    ("dpease", "dpease", {}),
    ("dpals", "dpals", {}),
    ("federatedmf (no head rule)", "federatedmf", {"head_snr": None}),
    ("federatedmf (uniform counts)", "federatedmf", {"count_weighting": "uniform"}),
    ("federatedmf", "federatedmf", {}),
)


def _validation_split(dataset: str) -> tuple[Any, str]:
    """The selection split of ``dataset`` and the set to score (never the test users/items)."""
    from privrec.evaluation import random_holdout

    if dataset == SYNTHETIC_NAME:
        return random_holdout(_split(dataset, False).train, 0.2, seed=1), "test"
    from privacy_utility import _splits

    select, _, on, _ = _splits(dataset)
    return select, on


def run_validation(
    datasets: list[str],
    models: list[str],
    aggregation: str = "central",
    seeds: tuple[int, ...] = SEEDS,
    epsilons: tuple[float, ...] = EPSILONS,
    labels: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    from privrec.evaluation import evaluate

    rows: list[dict[str, Any]] = []
    for ds in datasets:
        split, on = _validation_split(ds)
        lengths = np.diff(split.train.matrix.tocsr().indptr)
        print(f"[{ds}] train {split.train}, median train history {np.median(lengths)}", flush=True)
        for eps in epsilons:
            for label, model, extra in VALIDATION_MODELS:
                if model not in models or (labels is not None and label not in labels):
                    continue
                recalls, info = [], {}
                for seed in seeds:
                    m = _make(model, eps, seed, aggregation)
                    m.set_params(**extra)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        m.fit(split.train)
                    res = evaluate(m, split, k=(K,), on=on, metrics=("recall",))  # type: ignore[arg-type]
                    recalls.append(res.metric("recall", K))
                    if model == "dpease":
                        info = {
                            "signal_fraction": float(m.signal_fraction_),
                            "popularity_blend": float(m.popularity_blend_),
                            "head": len(m.head_items_),
                        }
                    elif model == "federatedmf":
                        info = {"head": len(m.head_items_)}
                row = {
                    "dataset": ds,
                    "model": label,
                    "epsilon": eps,
                    "recall": float(np.mean(recalls)),
                    "recall_std": float(np.std(recalls)),
                    "recalls": [float(r) for r in recalls],
                    "median_train_history": float(np.median(lengths)),
                    "aggregation": aggregation,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    **info,
                }
                rows.append(row)
                print(
                    f"  {label:22s} eps={eps} recall={row['recall']:.4f}±{row['recall_std']:.4f} "
                    + " ".join(f"{k}={v:.3g}" for k, v in info.items()),
                    flush=True,
                )
    return rows


def _ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by data set (first appearance), then ε, then :data:`VALIDATION_MODELS`."""
    sets = list(dict.fromkeys(r["dataset"] for r in rows))
    labels = [label for label, _, _ in VALIDATION_MODELS]
    return sorted(
        rows,
        key=lambda r: (
            sets.index(r["dataset"]),
            r["epsilon"],
            labels.index(r["model"]) if r["model"] in labels else len(labels),
        ),
    )


def validation_markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        "# Short-history rules on validation splits"
        + (" (FederatedMF: distributed DP)" if result.get("aggregation") == "distributed" else ""),
        "",
        f"Run {result['date']} (rows of models not re-run keep their earlier numbers; each "
        f"JSON row records its own run date from 2026-12-06 on). User-level ε, δ = {DELTA:g}; Recall@20 on VALIDATION splits only "
        f"(mean ± sd of {len(result['seeds'])} seeded noise draws): short-history sets hold out "
        "a further 20% of each training user's items (seed 1); ml-100k, ml-1m-implicit-r3 and "
        "gowalla-lightgcn use `privacy_utility.py`'s selection splits. `dpease (no fallback)` is "
        "DPEASE with `popularity_fallback=False` (the model before the rule); ρ is the fraction "
        "of DPEASE's head whose noisy count clears its SNR threshold, β its resolved blend. "
        f"`federatedmf (no head rule)` is FederatedMF (aggregation "
        f"`{result.get('aggregation', 'central')}`) with `head_snr=None` "
        "(the model before the learnable-head rule), `federatedmf (uniform counts)` with "
        '`count_weighting="uniform"` (the counting round before the per-length item weights); '
        "head: trained items (last seed).",
        "",
        "| data set | ε | model | Recall@20 | vs DPPopularity | ρ | β | head |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pop = next(
            p
            for p in rows
            if p["dataset"] == r["dataset"]
            and p["epsilon"] == r["epsilon"]
            and p["model"] == "dppopularity"
        )
        diff = "" if r is pop else f"{r['recall'] - pop['recall']:+.4f}"
        rho = f"{r['signal_fraction']:.2f}" if "signal_fraction" in r else ""
        beta = f"{r['popularity_blend']:.2f}" if "popularity_blend" in r else ""
        head = str(r["head"]) if "head" in r else ""
        lines.append(
            f"| {r['dataset']} | {r['epsilon']:g} | {r['model']} | "
            f"{r['recall']:.4f} ± {r['recall_std']:.4f} | {diff} | {rho} | {beta} | {head} |"
        )
    lines += ["", "## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def _make(model: str, eps: float | None, seed: int, aggregation: str) -> Any:
    from privrec.federated.model import FederatedMF
    from privrec.models.dp_als import DPALS
    from privrec.models.dp_ease import DPEASE
    from privrec.models.dp_popularity import DPPopularity
    from privrec.models.popularity import Popularity

    priv: dict[str, Any] = {"epsilon": eps, "delta": DELTA, "unit": "user", "seed": seed}
    if model == "popularity":
        return Popularity()
    if model == "dppopularity":
        return DPPopularity(**priv)
    if model == "dpals":
        return DPALS(**priv, method="adaptive")
    if model == "dpease":
        return DPEASE(**priv)
    if model == "federatedmf":
        return FederatedMF(**priv, aggregation=aggregation)  # type: ignore[arg-type]
    raise ValueError(model)


def _score(
    model: str,
    eps: float | None,
    split: Any,
    seeds: tuple[int, ...],
    aggregation: str,
    make: Any = None,
) -> dict[str, Any]:
    """Recall@20 / NDCG@20 (mean ± sd over ``seeds``) and the median fit time on ``split``'s test
    set; ``make(model, eps, seed, aggregation)`` builds the model (default :func:`_make`)."""
    from privrec.evaluation import evaluate

    recalls, ndcgs, fits = [], [], []
    for seed in seeds:
        m = (make or _make)(model, eps, seed, aggregation)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(split.train)
        fits.append(time.perf_counter() - t0)
        res = evaluate(m, split, k=(K,), on="test", metrics=("recall", "ndcg"))
        recalls.append(res.metric("recall", K))
        ndcgs.append(res.metric("ndcg", K))
    return {
        "recall": float(np.mean(recalls)),
        "recall_std": float(np.std(recalls)),
        "ndcg": float(np.mean(ndcgs)),
        "ndcg_std": float(np.std(ndcgs)),
        "recalls": [float(r) for r in recalls],
        "fit_seconds": round(float(np.median(fits)), 2),
    }


def run(quick: bool, aggregation: str, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Every (data set, model, ε) row; ``only``: just those models' rows (the rest kept by
    the caller from the last run)."""
    datasets = [SYNTHETIC_NAME] if not DATA.exists() else [MOVIETWEETINGS, SYNTHETIC_NAME]
    if not DATA.exists():
        print(f"shared data not found at {DATA}; skipping {MOVIETWEETINGS}", flush=True)
    epsilons = (1.0,) if quick else EPSILONS
    seeds = SEEDS[:1] if quick else SEEDS
    rows: list[dict[str, Any]] = []
    for ds in datasets:
        split = _split(ds, quick)
        lengths = np.diff(split.train.matrix.tocsr().indptr)
        print(f"[{ds}] train {split.train}, median train history {np.median(lengths)}", flush=True)
        cells: list[tuple[str, float | None]] = [("popularity", None)]
        cells += [(m, e) for e in epsilons for m in PRIVATE]
        if only is not None:
            cells = [(m, e) for m, e in cells if m in only]
        for model, eps in cells:
            res = _score(model, eps, split, seeds if eps is not None else (0,), aggregation)
            row = {"dataset": ds, "model": model, "epsilon": eps, **res}
            row["median_train_history"] = float(np.median(lengths))
            rows.append(row)
            print(
                f"  {model:13s} eps={eps} recall={res['recall']:.4f}±{res['recall_std']:.4f} "
                f"ndcg={res['ndcg']:.4f} ({res['fit_seconds']}s)",
                flush=True,
            )
    return rows


def _row(rows: list[dict[str, Any]], ds: str, model: str, eps: float | None) -> dict[str, Any]:
    return next(
        r for r in rows if r["dataset"] == ds and r["model"] == model and r["epsilon"] == eps
    )


def verdict(r: dict[str, Any], pop: dict[str, Any], n_seeds: int) -> str:
    """``"yes"`` / ``"tie"`` / ``"no"``: the mean Recall@20 against DPPopularity's at that ε.

    A difference within two standard errors of the difference of the means (the seeds' sd,
    √((s₁² + s₂²)/n)) is a tie, not a win: with 3 noise draws a 0.0001 lead says nothing.
    """
    diff = r["recall"] - pop["recall"]
    se = math.sqrt((r["recall_std"] ** 2 + pop["recall_std"] ** 2) / max(n_seeds, 1))
    if abs(diff) <= 2.0 * se:
        return "tie"
    return "yes" if diff > 0 else "no"


def verdicts(rows: list[dict[str, Any]], n_seeds: int) -> list[dict[str, Any]]:
    """Per (data set, ε, model): :func:`verdict` against DPPopularity at that ε."""
    out = []
    for r in rows:
        if r["epsilon"] is None or r["model"] == "dppopularity":
            continue
        pop = _row(rows, r["dataset"], "dppopularity", r["epsilon"])
        v = verdict(r, pop, n_seeds)
        out.append(
            {
                "dataset": r["dataset"],
                "epsilon": r["epsilon"],
                "model": r["model"],
                "recall": r["recall"],
                "dppopularity": pop["recall"],
                "verdict": v,
                "beats_dppopularity": v == "yes",
            }
        )
    return out


_VERDICT = {"yes": "✓ yes", "tie": "tie (within 2 s.e.)", "no": "**✗ no**"}


def row_labels(rows: list[dict[str, Any]], r: dict[str, Any], n_seeds: int) -> tuple[str, str]:
    """A table row's ε (``∞`` for a non-private model) and its verdict against DPPopularity."""
    eps = "∞" if r["epsilon"] is None else f"{r['epsilon']:g}"
    if r["epsilon"] is None or r["model"] == "dppopularity":
        return eps, ""
    pop = _row(rows, r["dataset"], "dppopularity", r["epsilon"])
    return eps, _VERDICT[verdict(r, pop, n_seeds)]


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    n_seeds = len(result["seeds"])
    kept = sorted({(r["model"], r["run"]) for r in rows if "run" in r})
    kept_text = (
        " Rows kept from an earlier run: " + ", ".join(f"{m} ({d})" for m, d in kept) + "."
        if kept
        else ""
    )
    lines = [
        "# Short-history data: private recommenders against DPPopularity",
        "",
        f"Run {result['date']} ({'quick' if result['quick'] else 'full'} mode).{kept_text} "
        f"User-level ε, δ = {DELTA:g}; defaults, no tuning; mean ± sd of {n_seeds} seeded "
        "noise draws (Popularity: deterministic). Users with ≥ 3 positives, per-user random "
        "20% test holdout (seed 0), training items excluded. FederatedMF aggregation: "
        f"`{result['aggregation']}`"
        + (
            " (trusted server adds the Gaussian noise of the calibrated multiplier and trains "
            "only the learnable head, `head_snr`). The distributed-DP default trains the same "
            "learnable head but with ≈ 1.26× the noise (RDP accounting, noise sized for the "
            "fewest honest survivors) and takes ~18× longer to simulate; it is not in this "
            "table (validation: `short_history-validation-distributed.md`; "
            "`docs/federated.md`, short histories)."
            if result["aggregation"] == "central"
            else "."
        ),
        "",
        f"Synthetic set: `synthetic({', '.join(f'{k}={v}' for k, v in result['synthetic'].items())})`.",
        "",
    ]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        med = next(r for r in rows if r["dataset"] == ds)["median_train_history"]
        lines += [
            f"## {ds} (median training history {med:g} items)",
            "",
            "| model | ε | Recall@20 | NDCG@20 | fit s | beats DPPopularity |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in (r for r in rows if r["dataset"] == ds):
            eps, cell = row_labels(rows, r, n_seeds)
            lines.append(
                f"| {r['model']} | {eps} | {r['recall']:.4f} ± {r['recall_std']:.4f} | "
                f"{r['ndcg']:.4f} ± {r['ndcg_std']:.4f} | {r['fit_seconds']} | {cell} |"
            )
        lines.append("")
    lines += ["## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument(
        "--distributed", action="store_true", help="FederatedMF with distributed DP (slow)"
    )
    ap.add_argument(
        "--validation", action="store_true", help="score the rules on validation splits only"
    )
    ap.add_argument(
        "--datasets",
        nargs="+",
        default=[MOVIETWEETINGS, SYNTHETIC_NAME, *LONG_VALIDATION],
        help="data sets of --validation",
    )
    ap.add_argument(
        "--models",
        nargs="+",
        default=sorted({m for _, m, _ in VALIDATION_MODELS}),
        help="models of --validation (DPPopularity is always scored: the bar)",
    )
    ap.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=list(SEEDS),
        help="noise seeds of --validation (default: all of SEEDS)",
    )
    ap.add_argument(
        "--epsilons",
        nargs="+",
        type=float,
        default=list(EPSILONS),
        help="privacy budgets of --validation (default: EPSILONS)",
    )
    ap.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="only these rows of VALIDATION_MODELS (e.g. 'federatedmf'; DPPopularity always)",
    )
    ap.add_argument(
        "--render", action="store_true", help="run nothing: re-render the last full run's table"
    )
    ap.add_argument(
        "--rerun",
        nargs="+",
        default=None,
        help="full mode: re-run only these models' rows, keep the others of the last run",
    )
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.render:
        path = Path(args.out) / "short_history.json"
        last = json.loads(path.read_text())
        last["verdicts"] = verdicts(last["rows"], len(last["seeds"]))
        path.write_text(json.dumps(last, indent=2) + "\n")
        (Path(args.out) / "short_history.md").write_text(markdown(last))
        return
    aggregation = "distributed" if args.distributed else "central"
    if args.validation:
        val: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine_info(),
            "delta": DELTA,
            "k": K,
            "seeds": list(args.seeds),
            "synthetic": SYNTHETIC,
            "aggregation": aggregation,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        # distributed rows go to their own file (the same labels, another aggregation)
        stem = "short_history-validation" + ("-distributed" if args.distributed else "")
        path = out / f"{stem}.json"
        # rows not re-run (other data sets, other models) are kept (gowalla is run on its own)
        labels = {
            label
            for label, m, _ in VALIDATION_MODELS
            if m in {"dppopularity", *args.models}
            and (args.labels is None or label in {"dppopularity", *args.labels})
        }
        kept = [
            r
            for r in (json.loads(path.read_text())["rows"] if path.exists() else [])
            if r["dataset"] not in args.datasets or r["model"] not in labels
        ]
        fresh = run_validation(
            args.datasets,
            ["dppopularity", *args.models],
            aggregation,
            tuple(args.seeds),
            tuple(args.epsilons),
            None if args.labels is None else ("dppopularity", *args.labels),
        )
        val["rows"] = _ordered(kept + fresh)
        path.write_text(json.dumps(val, indent=2) + "\n")
        (out / f"{stem}.md").write_text(validation_markdown(val))
        print(validation_markdown(val))
        return
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine_info(),
        "delta": DELTA,
        "k": K,
        "seeds": list(SEEDS[:1] if args.quick else SEEDS),
        "aggregation": aggregation,
        "synthetic": SYNTHETIC_QUICK if args.quick else SYNTHETIC,
    }
    only = set(args.rerun) if args.rerun else None
    rows = run(args.quick, aggregation, only)
    if only is not None:  # the other rows from the last full run, in their order
        last = json.loads((Path(args.out) / "short_history.json").read_text())
        redone = {(r["dataset"], r["model"], r["epsilon"]): r for r in rows}
        for r in last["rows"]:
            if r["model"] not in only:
                r.setdefault("run", last["date"])
        rows = [redone.get((r["dataset"], r["model"], r["epsilon"]), r) for r in last["rows"]]
        result["seeds"] = last["seeds"]
    result["rows"] = rows
    result["verdicts"] = verdicts(result["rows"], len(result["seeds"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "short_history-quick" if args.quick else "short_history"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
