"""DPALS's left-hand-side variants side by side: utility of ``lhs="none"`` / ``"diagonal"`` / ``"full"``.

Usage::

    python benchmarks/bench_dpals_lhs.py                       # ml-1m, gowalla, movietweetings
    python benchmarks/bench_dpals_lhs.py --datasets ml-1m-implicit-r3
    python benchmarks/bench_dpals_lhs.py --datasets gowalla-lightgcn --update   # keep the other rows
    python benchmarks/bench_dpals_lhs.py --datasets gowalla-lightgcn --epsilons 1 --seeds 0,1,2,3,4,5 --update

Issue 15 asks for a cheaper left-hand side with no loss of utility on ml-1m and gowalla beyond
one seed's standard deviation. Each variant runs with every other parameter at DPALS's
defaults (``method="adaptive"``, data-adaptive bounds) at user-level ε ∈ {1, 5}, δ = 1e-5, on
the splits of ``privacy_utility.py``: the selection split (validation, what the default was
chosen on) and the report split (test). Cells: mean ± std of :data:`SEEDS` seeded noise draws
(seeded: reproducible, NOT private — fine for a benchmark); ``--seeds`` takes more draws for the
cells re-run (each row records its seeds), where two are too few to tell a 2% gap from noise.

Results: ``benchmarks/results/dpals_lhs.{json,md}``.
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
from privacy_utility import DELTA, K, _evaluate, _splits  # noqa: E402

VARIANTS = ("none", "diagonal", "full")
EPSILONS = (1.0, 5.0)
SEEDS = (0, 1)
DATASETS = ("ml-1m-implicit-r3", "gowalla-lightgcn", "movietweetings-100k")


def _run(
    split: Any, on: str, lhs: str, eps: float, seeds: tuple[int, ...] = SEEDS
) -> dict[str, Any]:
    from privrec.models import DPALS

    recalls, fits = [], []
    for seed in seeds:
        m = DPALS(epsilon=eps, delta=DELTA, unit="user", method="adaptive", lhs=lhs, seed=seed)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(split.train)
        fits.append(time.perf_counter() - t0)
        recalls.append(_evaluate(m, split, on).metric("recall", K))
    return {
        "recall": float(np.mean(recalls)),
        "recall_std": float(np.std(recalls)),
        "recalls": [float(r) for r in recalls],
        "fit_seconds": round(float(np.mean(fits)), 2),
    }


def quality(
    datasets: tuple[str, ...],
    epsilons: tuple[float, ...] = EPSILONS,
    seeds: tuple[int, ...] = SEEDS,
) -> list[dict[str, Any]]:
    rows = []
    for ds in datasets:
        sel, rep, on_sel, on_rep = _splits(ds)
        for eps in epsilons:
            for lhs in VARIANTS:
                row = {
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "dataset": ds,
                    "epsilon": eps,
                    "lhs": lhs,
                    "seeds": list(seeds),
                    "valid": _run(sel, on_sel, lhs, eps, seeds),
                    "test": _run(rep, on_rep, lhs, eps, seeds),
                }
                rows.append(row)
                print(
                    f"{ds} eps={eps} lhs={lhs}: valid {row['valid']['recall']:.4f} "
                    f"test {row['test']['recall']:.4f}",
                    flush=True,
                )
    return rows


def _dates(result: dict[str, Any]) -> str:
    """Each data set's run dates, per ε where they differ (rows may come from ``--update`` runs)."""
    per: dict[str, dict[float, str]] = {}
    for r in result["quality"]:
        per.setdefault(r["dataset"], {}).setdefault(r["epsilon"], r.get("date", result["date"]))
    parts = []
    for ds, by_eps in per.items():
        if len(set(by_eps.values())) == 1:
            parts.append(f"{ds} {next(iter(by_eps.values()))}")
        else:
            cells = ", ".join(f"ε = {e:g} {d}" for e, d in sorted(by_eps.items()))
            parts.append(f"{ds} ({cells})")
    return "; ".join(parts)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# DPALS left-hand-side variants: utility",
        "",
        f"Run {_dates(result)}. User-level ε, δ = {DELTA:g}, DPALS defaults otherwise "
        '(`method="adaptive"`, data-adaptive bounds); Recall@20, mean ± std of seeds '
        f"{list(SEEDS)} (other seeds where the row says so); *valid* = the selection split the default was chosen on, *test* = the "
        "report split of `privacy_utility.md`. `none`: items share the noisy Gramian (default); "
        "`diagonal`: + noisy per-item diagonals; `full`: Chien et al.'s per-item k×k left-hand "
        "sides. *none vs full (test)*: met when `none` ≥ `full` − one seed's std of `full`. "
        "The machine (2 cores) was shared with other engineers' jobs.",
        "",
        "| dataset | ε | seeds | valid none / diagonal / full | test none / diagonal / full "
        "| none vs full (test) |",
        "|---|---:|---|---|---|---|",
    ]
    rows = result["quality"]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for eps in sorted({r["epsilon"] for r in rows if r["dataset"] == ds}):
            by = {r["lhs"]: r for r in rows if r["dataset"] == ds and r["epsilon"] == eps}
            if set(by) != set(VARIANTS):
                continue

            def cell(part: str, by: dict[str, Any] = by) -> str:
                return " / ".join(
                    f"{by[v][part]['recall']:.4f} ± {by[v][part]['recall_std']:.4f}"
                    for v in VARIANTS
                )

            none, full = by["none"]["test"], by["full"]["test"]
            ok = none["recall"] >= full["recall"] - full["recall_std"]
            diff = (none["recall"] - full["recall"]) / max(full["recall"], 1e-12)
            seeds = by["none"].get("seeds", list(SEEDS))
            lines.append(
                f"| {ds} | {eps:g} | {len(seeds)} | {cell('valid')} | {cell('test')} | "
                f"{diff:+.1%} ({'met' if ok else '**NOT met**'}) |"
            )
    lines += ["", "## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", help="comma-separated subset")
    ap.add_argument(
        "--update", action="store_true", help="keep the other data sets' rows of the last run"
    )
    ap.add_argument("--epsilons", help="comma-separated subset of ε (default 1,5)")
    ap.add_argument("--seeds", help="comma-separated noise seeds (default 0,1)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    datasets = tuple(args.datasets.split(",")) if args.datasets else DATASETS
    epsilons = tuple(float(e) for e in args.epsilons.split(",")) if args.epsilons else EPSILONS
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else SEEDS
    out = Path(args.out)
    rows = quality(datasets, epsilons, seeds)
    if args.update and (out / "dpals_lhs.json").exists():
        old = json.loads((out / "dpals_lhs.json").read_text())
        kept = [
            r
            for r in old["quality"]
            if r["dataset"] not in datasets or r["epsilon"] not in epsilons
        ]
        for r in kept:
            r.setdefault("date", old["date"])
        rows = kept + rows
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "seeds": list(SEEDS),
        "quality": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpals_lhs.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "dpals_lhs.md").write_text(markdown(result))
    print(f"wrote {out / 'dpals_lhs.md'}")


if __name__ == "__main__":
    main()
