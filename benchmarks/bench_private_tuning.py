"""Private hyper-parameter selection (charged) against the usual uncharged validation choice.

Usage::

    python benchmarks/bench_private_tuning.py                     # ml-1m, gowalla, movietweetings
    python benchmarks/bench_private_tuning.py --datasets gowalla-lightgcn --part gowalla
    python benchmarks/bench_private_tuning.py --merge ml1m gowalla mt

Setting
    DPALS, user-level ε ∈ {1, 5}, δ = 1e-5, over the grid of ``privacy_utility.py``
    (defaults, 8 factors, no per-user shrinkage, B at the 60th percentile, B₀ = 100).

    * ``defaults``: no tuning, fit at ε on the whole training data;
    * ``uncharged choice``: every candidate fit at ε on the training part and scored exactly
      on the validation part (valid.txt; movietweetings: a 20% per-user holdout of the
      training part, seed 1), the best refitted at ε on the whole training data — the
      usual practice, whose selection no guarantee counts;
    * ``private selection``: :func:`privrec.tuning.private_tune` at total ε (selection and
      model), geometric number of trials with mean 2 × 5, on the whole training data (its
      own 20% per-user holdout); the chosen trial's model is used as it is.

    Scored on the test split (protocol of ``privacy_utility.py``), mean of :data:`SEEDS`
    seeds (noise, and for the private selection the trial count and candidate draws; seeded:
    NOT private, fine for a benchmark); the uncharged selection uses one noise draw per
    candidate.

Results: ``benchmarks/results/private_tuning.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from privacy_utility import GRIDS
from setting import DATA, DELTA, HERE, K, machine_info, machine_markdown, merge_parts, run_dates

EPSILONS = (1.0, 5.0)
SEEDS = (0, 1)
GRID = GRIDS["dpals-adaptive"]
DATASETS = ("ml-1m-implicit-r3", "gowalla-lightgcn", "movietweetings-100k")


def _splits(dataset: str) -> tuple[Any, Any]:
    """(selection split: train part → validation, report split: all training data → test)."""
    from privrec.data import load
    from privrec.evaluation import load_split, random_holdout

    if dataset == "movietweetings-100k":
        data = load(DATA / dataset / "ratings.dat", format="movietweetings", binarize=7.0)
        report = random_holdout(data.filter(min_user_interactions=3), 0.2, seed=0)
        select = random_holdout(report.train, 0.2, seed=1)
        return select, report
    sel = load_split(DATA / dataset, merge_valid_into_train=False)
    sel = type(sel)(sel.train, None, sel.valid, sel.protocol, sel.seed)  # validation as "test"
    return sel, load_split(DATA / dataset, merge_valid_into_train=True)


def _recall(model: Any, split: Any) -> float:
    from privrec.evaluation import evaluate

    return evaluate(model, split, k=(K,), on="test", groups=None, metrics=("recall",)).metric(
        "recall", K
    )


def _dpals(eps: float, seed: int, params: dict[str, Any]) -> Any:
    from privrec.models import DPALS

    return DPALS(epsilon=eps, delta=DELTA, unit="user", seed=seed, **params)


def run(dataset: str) -> list[dict[str, Any]]:
    from privrec.models import DPALS
    from privrec.tuning import private_tune

    select, report = _splits(dataset)
    rows = []
    for eps in EPSILONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            defaults = [_recall(_dpals(eps, s, {}).fit(report.train), report) for s in SEEDS]
            scores = [_recall(_dpals(eps, 0, p).fit(select.train), select) for p in GRID]
            chosen = GRID[int(np.argmax(scores))]
            uncharged = [_recall(_dpals(eps, s, chosen).fit(report.train), report) for s in SEEDS]
            private, picks = [], []
            for s in SEEDS:
                res = private_tune(
                    DPALS, GRID, report.train, epsilon=eps, delta=DELTA, seed=100 + s
                )
                assert res.model.privacy_guarantee.epsilon <= eps
                private.append(_recall(res.model, report))
                picks.append({"params": res.params, "trial_eps": res.trial_epsilon})
        row = {
            "dataset": dataset,
            "epsilon": eps,
            "defaults": float(np.mean(defaults)),
            "uncharged": float(np.mean(uncharged)),
            "uncharged_params": chosen,
            "validation_scores": scores,
            "private": float(np.mean(private)),
            "private_std": float(np.std(private)),
            "private_picks": picks,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Private hyper-parameter selection vs the uncharged validation choice (DPALS)",
        "",
        f"Run {result['date']}{run_dates(result['rows'], result['date'])}. User-level ε, δ = 1e-5; Recall@20 on the test split, mean of "
        f"seeds {list(SEEDS)}. Grid: {len(GRID)} candidates ({GRID}). *Uncharged*: picked "
        "on validation with exact scores, the selection not counted in ε (the usual practice). "
        "*Private*: `privrec.tuning.private_tune` — best of a geometric number of trials (mean "
        f"{2 * len(GRID)}), each a DPALS fit and a noisy validation score, the whole selection "
        "(ε, δ)-DP by Papernot & Steinke's bound under dp-accounting's RDP accountant. The "
        "machine was shared with other engineers' jobs.",
        "",
        "| dataset | ε | defaults (no tuning) | uncharged choice | private selection (charged) "
        "| each trial's model ε | picks (one per seed) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        # never the number of trials: the selection's bound holds only while K stays hidden
        picks = "; ".join(f"{p['params'] or 'defaults'}" for p in r["private_picks"])
        lines.append(
            f"| {r['dataset']} | {r['epsilon']:g} | {r['defaults']:.4f} | {r['uncharged']:.4f} "
            f"({r['uncharged_params'] or 'defaults'}) | {r['private']:.4f} ± {r['private_std']:.4f}"
            f" | {r['private_picks'][0]['trial_eps']:.2f} | {picks} |"
        )
    lines += ["", "## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets")
    ap.add_argument("--part")
    ap.add_argument("--merge", nargs="+", metavar="PART")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "seeds": list(SEEDS),
        "grid": GRID,
        "rows": [],
    }
    if args.merge:
        parts = [
            json.loads((out / f"private_tuning-part-{p}.json").read_text()) for p in args.merge
        ]
        result["date"] = max(p["date"] for p in parts)
        # a later part's row replaces an earlier one (re-run a data set and merge it last)
        result["rows"] = merge_parts(parts, lambda r: (r["dataset"], r["epsilon"]))
    else:
        for ds in args.datasets.split(",") if args.datasets else DATASETS:
            result["rows"] += run(ds)
        if args.part:
            path = out / f"private_tuning-part-{args.part}.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {path}")
            return
    (out / "private_tuning.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "private_tuning.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
