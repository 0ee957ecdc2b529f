"""DPALS against DPPopularity at small ε on ml-100k: which lever closes the gap? (validation only)

Usage::

    python benchmarks/bench_dpals_small_eps.py           # 16 seeds, ε ∈ {0.5, 1} + rule check (~15 min)
    python benchmarks/bench_dpals_small_eps.py --quick   # 2 seeds, ε = 0.5, one seed per check

Issue 15 part 5: at ε = 0.5 on ml-100k (660 training users in the strong-generalisation split of
``privacy_utility.py``) DPALS's defaults fall below DPPopularity, while at ε = 1 they beat it.
This script measures, on the held-out VALIDATION users of that split only (never test), the
defaults against single-lever variants — the budget split (more budget to the counts, with
the histogram's absolute noise kept and a larger popularity blend), the head size, the weight α0
of the noisy Gramian, k, the number of private steps T and the count sample — as Recall@20 over
:data:`SEEDS` seeded noise draws (seeded noise is reproducible and NOT private — fine for a
benchmark), with each variant's paired difference to the defaults (same seeds) and its standard
error. Every variant is a public configuration of DPALS: the guarantee is the same (ε, δ).

The lever that closed the gap is the one-round rule (:func:`privrec.models.dp_rules.resolve_one_round`,
the default below a noisy n·ε of 1000): the item factors start from the released counts and every
private step sums the same user solves under fresh noise; the item factors are the mean of the steps' solves. Because a rule must
travel, :data:`CHECKS` measures the defaults against the rule switched off and forced on, and
DPPopularity, on the validation sets of other data (movietweetings-100k: a split of the training
part; ml-1m-implicit-r3: valid.txt, 8000 users) at several ε.

Results: ``benchmarks/results/dpals_small_eps.{json,md}`` (``-quick`` in quick mode).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402

DATASET = "ml-100k"
DELTA = 1e-5
K = 20
EPSILONS = (0.5, 1.0)
SEEDS = tuple(range(16))
#: name -> DPALS parameters (on top of ``method="adaptive"``, the default); "defaults" first.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "separate rounds (one_round=False, the old default)": {"one_round": False},
    # the budget split: counts r3 = 0.1 instead of 0.2 (about 60% instead of 27% of the privacy
    # rate at T = 2), the histogram's multiplier kept near its default value, a larger blend
    "counts r3=0.1, β=1": {
        "count_noise_ratio": 0.1,
        "length_noise_ratio": 0.37,
        "popularity_blend": 1.0,
    },
    "blend β=1": {"popularity_blend": 1.0},
    "head floor 150": {"head_min": 150},
    "α0 = 0.5": {"alpha0": 0.5},
    "head floor 150, α0 = 0.5": {"head_min": 150, "alpha0": 0.5},
    "k = 4": {"factors": 4},
    "T = 1": {"iterations": 1},
    "T = 3": {"iterations": 3},
    "count sample 20": {"count_sample": 20},
}


#: the rule check: (dataset, ε, seeds) — validation splits of privacy_utility.py only
CHECKS: tuple[tuple[str, float, int], ...] = (
    ("ml-100k", 0.5, 16),
    ("ml-100k", 1.0, 16),
    ("ml-100k", 5.0, 16),
    ("movietweetings-100k", 0.5, 8),
    ("movietweetings-100k", 1.0, 8),
    ("movietweetings-100k", 5.0, 8),
    ("ml-1m-implicit-r3", 0.1, 3),
    ("ml-1m-implicit-r3", 0.2, 3),
    ("ml-1m-implicit-r3", 0.5, 3),
    ("ml-1m-implicit-r3", 1.0, 3),
)
#: the rule check's DPALS settings (the defaults, the rule off, the rule forced on)
CHECK_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "one_round=False": {"one_round": False},
    "one_round=True": {"one_round": True},
}


def _recall(model: Any, split: Any, on: str = "valid") -> tuple[float, float]:
    from privrec.evaluation import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded noise warns: not for production
        model.fit(split.train)
    res = evaluate(model, split, k=(K,), on=on, groups=4, metrics=("recall",))  # type: ignore[arg-type]
    return float(res.metric("recall", K)), float(res.per_group[f"recall@{K}"].iloc[0])


def check(quick: bool) -> list[dict[str, Any]]:
    """The rule on other data: DPPopularity, the defaults, the rule off and on (paired seeds)."""
    import privacy_utility as pu
    from privrec.models.dp_als import DPALS
    from privrec.models.dp_popularity import DPPopularity

    rows: list[dict[str, Any]] = []
    splits: dict[str, Any] = {}
    for dataset, eps, n_seeds in CHECKS:
        if dataset not in splits:
            split, _, on, _ = pu._splits(dataset)  # the selection split: never test
            splits[dataset] = (split, on)
        split, on = splits[dataset]
        seeds = tuple(range(1 if quick else n_seeds))
        priv: dict[str, Any] = {"epsilon": eps, "delta": DELTA, "unit": "user"}
        res = {"dppopularity": [_recall(DPPopularity(**priv, seed=s), split, on) for s in seeds]}
        chosen = None
        for name, params in CHECK_VARIANTS.items():
            out = []
            for s in seeds:
                m = DPALS(**priv, seed=s, **params)
                out.append(_recall(m, split, on))
                if name == "defaults":
                    chosen = m.one_round_
            res[name] = out
        base = np.array([r[0] for r in res["defaults"]])
        for name, out in res.items():
            row = _row(eps, name, CHECK_VARIANTS.get(name, {}), out, base)
            row.update(dataset=dataset, seeds=len(seeds), one_round=chosen)
            rows.append(row)
            print(
                f"{dataset:20s} ε={eps:<4g} {name:16s} R@20={row['recall']:.4f} "
                f"Δ={row['diff']:+.4f}±{row['diff_se']:.4f} (one round by default: {chosen})",
                flush=True,
            )
    return rows


def run(epsilons: tuple[float, ...], seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    import privacy_utility as pu
    from privrec.models.dp_als import DPALS
    from privrec.models.dp_popularity import DPPopularity

    split, _, on, _ = pu._splits(DATASET)
    assert on == "valid"
    rows: list[dict[str, Any]] = []
    for eps in epsilons:
        priv: dict[str, Any] = {"epsilon": eps, "delta": DELTA, "unit": "user"}
        pop = [_recall(DPPopularity(**priv, seed=s), split) for s in seeds]
        base: np.ndarray | None = None
        rows.append(_row(eps, "dppopularity", {}, pop, None))
        for name, params in VARIANTS.items():
            res = [_recall(DPALS(**priv, seed=s, **params), split) for s in seeds]
            if base is None:
                base = np.array([r[0] for r in res])
            rows.append(_row(eps, name, params, res, base))
        for r in rows[-len(VARIANTS) - 1 :]:
            print(
                f"ε={eps:<4g} {r['variant']:28s} R@20={r['recall']:.4f} Q1={r['q1']:.4f} "
                f"Δ={r['diff']:+.4f}±{r['diff_se']:.4f}",
                flush=True,
            )
    return rows


def _row(
    eps: float,
    name: str,
    params: dict[str, Any],
    res: list[tuple[float, float]],
    base: np.ndarray | None,
) -> dict[str, Any]:
    r = np.array([x[0] for x in res])
    d = r - (r if base is None else base)
    return {
        "epsilon": eps,
        "variant": name,
        "params": params,
        "recall": float(r.mean()),
        "recall_std": float(r.std()),
        "q1": float(np.mean([x[1] for x in res])),
        "diff": float(d.mean()),
        "diff_se": float(d.std() / np.sqrt(len(d))),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# DPALS vs DPPopularity at small ε (ml-100k, validation users only)",
        "",
        f"Run {result['date']} ({'quick' if result['quick'] else 'full'} mode), "
        "`python benchmarks/bench_dpals_small_eps.py`. Recall@20 on the held-out validation "
        "users of `privacy_utility.py`'s ml-100k split (strong generalisation; test is never "
        f"read), user-level ε, δ = 1e-5, mean over {len(result['seeds'])} seeded noise draws "
        f"(seeds {result['seeds'][0]}–{result['seeds'][-1]}). Q1: the lightest quarter of "
        "users. Δ: the paired difference to DPALS's defaults (same seeds) ± its standard "
        "error. The machine was shared and the run niced.",
        "",
        "| ε | model / DPALS variant | Recall@20 | sd | Q1 | Δ vs DPALS defaults | vs DPPopularity |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    pop: dict[float, float] = {}
    for r in result["rows"]:
        if r["variant"] == "dppopularity":
            pop[r["epsilon"]] = r["recall"]
            diff, above = "—", "—"
        else:
            diff = f"{r['diff']:+.4f} ± {r['diff_se']:.4f}"
            above = f"{r['recall'] - pop[r['epsilon']]:+.4f}"
        lines.append(
            f"| {r['epsilon']:g} | {r['variant']} | {r['recall']:.4f} | {r['recall_std']:.4f} "
            f"| {r['q1']:.4f} | {diff} | {above} |"
        )
    lines += ["", "Best DPALS variant per ε (by mean Recall@20):", ""]
    for eps in sorted(pop):
        cands = [
            r for r in result["rows"] if r["epsilon"] == eps and r["variant"] != "dppopularity"
        ]
        best = max(cands, key=lambda r: r["recall"])
        gap = best["recall"] - pop[eps]
        lines.append(
            f"- ε = {eps:g}: {best['variant']} ({best['recall']:.4f}, Δ {best['diff']:+.4f} ± "
            f"{best['diff_se']:.4f}); {'above' if gap > 0 else 'below'} DPPopularity "
            f"({pop[eps]:.4f}) by {abs(gap):.4f}"
        )
    lines += _check_markdown(result.get("check", []))
    lines += ["", "## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def _check_markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Rule check: one round (defaults) on other data, validation only",
        "",
        "Δ: paired difference to the defaults (same seeds) ± its standard error. movietweetings-"
        "100k: ratings ≥ 7, users with ≥ 3, a 20% holdout of the training part of the report "
        'split; ml-1m-implicit-r3: train.txt → valid.txt (8000 users). "one round": whether '
        "the rule (noisy n·ε < 1000) chose it for the defaults.",
        "",
        "| data | ε | seeds | one round | setting | Recall@20 | sd | Δ vs defaults |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['epsilon']:g} | {r['seeds']} | {r['one_round']} "
            f"| {r['variant']} | {r['recall']:.4f} | {r['recall_std']:.4f} "
            f"| {r['diff']:+.4f} ± {r['diff_se']:.4f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    import privacy_utility as pu

    if not pu.DATA.exists():
        print(f"shared data not found at {pu.DATA}; skipping", flush=True)
        return
    seeds = SEEDS[:2] if args.quick else SEEDS
    epsilons = EPSILONS[:1] if args.quick else EPSILONS
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine_info(),
        "dataset": DATASET,
        "delta": DELTA,
        "seeds": list(seeds),
        "variants": VARIANTS,
        "rows": run(epsilons, seeds),
        "check": check(args.quick),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "dpals_small_eps-quick" if args.quick else "dpals_small_eps"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
