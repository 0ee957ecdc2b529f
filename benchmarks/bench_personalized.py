"""Personalised budgets: protection tiers against giving everyone the strictest tier's ε.

Usage::

    python benchmarks/bench_personalized.py                       # ml-1m, gowalla, movietweetings
    python benchmarks/bench_personalized.py --datasets ml-1m-implicit-r3 --part ml1m
    python benchmarks/bench_personalized.py --merge ml1m gowalla mt

Setting
    Tiers ε ∈ {0.5, 1, 3} (δ = 1e-5, user level); every training user is assigned one at
    random (a third each, seed 0) — in production the tier is the user's own choice. Models
    are the defaults of DPPopularity and DPALS. Three fits per model and noise draw:

    * ``tiers``: ε = 3 with ``tiers=(0.5, 1)`` — each user contributes with their tier's weight
      (:mod:`privrec.privacy.personalized`) and gets exactly their tier's ε;
    * ``all at 0.5``: what one can promise everyone without tiers — the strictest tier's ε;
    * ``all at 3`` (reference only): the loosest ε for everyone, which breaks the promise
      made to the stricter tiers.

    Protocol as ``privacy_utility.py`` (train on train+valid, score test.txt; movietweetings:
    ratings ≥ 7, users with ≥ 3, per-user random 20% holdout, seed 0). Recall@20 overall and
    by the user's tier, mean of :data:`SEEDS` seeded noise draws (seeded: NOT private, fine
    for a benchmark). No hyper-parameter is tuned.

Results: ``benchmarks/results/personalized.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from setting import DATA, DELTA, HERE, K, machine_info, machine_markdown, merge_parts, run_dates

TIERS = (0.5, 1.0, 3.0)
SEEDS = (0, 1)
DATASETS = ("ml-1m-implicit-r3", "gowalla-lightgcn", "movietweetings-100k")
CONDITIONS = ("tiers", "all at 0.5", "all at 3")


def _split(dataset: str) -> Any:
    from privrec.data import load
    from privrec.evaluation import load_split, random_holdout

    if dataset == "movietweetings-100k":
        data = load(DATA / dataset / "ratings.dat", format="movietweetings", binarize=7.0)
        return random_holdout(data.filter(min_user_interactions=3), 0.2, seed=0)
    return load_split(DATA / dataset, merge_valid_into_train=True)


def _fit(model: str, condition: str, train: Any, asks: np.ndarray, seed: int) -> Any:
    from privrec.models import DPALS, DPPopularity

    cls = DPALS if model == "dpals" else DPPopularity
    kw: dict[str, Any] = {"delta": DELTA, "unit": "user", "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if condition == "tiers":
            return cls(epsilon=max(TIERS), tiers=TIERS[:-1], **kw).fit(train, user_epsilons=asks)
        eps = min(TIERS) if condition == "all at 0.5" else max(TIERS)
        return cls(epsilon=eps, **kw).fit(train)


def run(dataset: str) -> list[dict[str, Any]]:
    from privrec.evaluation import evaluate

    split = _split(dataset)
    n_users = split.train.n_users
    asks = np.random.default_rng(0).choice(TIERS, size=n_users)
    tier_of = dict(zip(np.asarray(split.train.user_ids).tolist(), asks.tolist(), strict=True))
    rows = []
    for model in ("dppopularity", "dpals"):
        for condition in CONDITIONS:
            recalls, by_tier, fits = [], [], []
            for seed in SEEDS:
                t0 = time.perf_counter()
                m = _fit(model, condition, split.train, asks, seed)
                fits.append(time.perf_counter() - t0)
                res = evaluate(m, split, k=(K,), on="test", groups=None, metrics=("recall",))
                pu = res.per_user
                tiers = pu["user_id"].map(tier_of)
                recalls.append(float(pu[f"recall@{K}"].mean()))
                by_tier.append([float(pu[f"recall@{K}"][tiers == t].mean()) for t in TIERS])
                weights = [t["weight"] for t in m.privacy_guarantee.tiers] or None
            row = {
                "dataset": dataset,
                "model": model,
                "condition": condition,
                "recall": float(np.mean(recalls)),
                "recall_std": float(np.std(recalls)),
                "by_tier": [float(v) for v in np.mean(by_tier, axis=0)],
                "tier_weights": weights,
                "fit_seconds": round(float(np.mean(fits)), 2),
            }
            rows.append(row)
            print(
                f"{dataset:20s} {model:12s} {condition:10s} recall={row['recall']:.4f} "
                f"by tier={[round(v, 4) for v in row['by_tier']]} weights={weights}",
                flush=True,
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Personalised budgets: protection tiers vs the strictest tier for everyone",
        "",
        f"Run {result['date']}{run_dates(result['rows'], result['date'])}. User-level tiers ε ∈ {{0.5, 1, 3}}, δ = 1e-5, a third of the "
        "training users in each (random, seed 0). Recall@20 on the test split, mean of "
        f"{len(SEEDS)} seeded noise draws (seeds {list(SEEDS)}); defaults, nothing tuned. "
        "*tiers*: the model at ε = 3, each user contributing with their tier's weight and "
        "getting exactly their tier's ε (stated per tier in the guarantee); *all at 0.5*: the "
        "only promise possible without tiers; *all at 3*: reference that breaks the stricter "
        "tiers' promise. The machine was shared with other engineers' jobs.",
        "",
        "| dataset | model | condition | Recall@20 | ε = 0.5 users | ε = 1 users | ε = 3 users |"
        " tier weights |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        w = "" if not r["tier_weights"] else ", ".join(f"{v:.3g}" for v in r["tier_weights"])
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['condition']} | {r['recall']:.4f} | "
            + " | ".join(f"{v:.4f}" for v in r["by_tier"])
            + f" | {w} |"
        )
    gains = []
    for ds in dict.fromkeys(r["dataset"] for r in result["rows"]):
        for model in ("dppopularity", "dpals"):
            get = {
                r["condition"]: r["recall"]
                for r in result["rows"]
                if r["dataset"] == ds and r["model"] == model
            }
            if "tiers" in get and "all at 0.5" in get and get["all at 0.5"] > 0:
                gains.append(
                    f"{ds} {model}: {get['tiers']:.4f} vs {get['all at 0.5']:.4f} "
                    f"({100 * (get['tiers'] / get['all at 0.5'] - 1):+.0f}%)"
                )
    lines += ["", "Tiers against everyone at the strictest tier: " + "; ".join(gains) + "."]
    lines += ["", "## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", help="comma-separated subset")
    ap.add_argument("--part", help="write only results/personalized-part-PART.json")
    ap.add_argument("--merge", nargs="+", metavar="PART")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "tiers": TIERS,
        "seeds": list(SEEDS),
        "rows": [],
    }
    if args.merge:
        parts = [json.loads((out / f"personalized-part-{p}.json").read_text()) for p in args.merge]
        result["date"] = max(p["date"] for p in parts)
        # a later part's row replaces an earlier one (re-run a data set and merge it last)
        result["rows"] = merge_parts(parts, lambda r: (r["dataset"], r["model"], r["condition"]))
    else:
        for ds in args.datasets.split(",") if args.datasets else DATASETS:
            result["rows"] += run(ds)
        if args.part:
            path = out / f"personalized-part-{args.part}.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {path}")
            return
    (out / "personalized.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "personalized.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
