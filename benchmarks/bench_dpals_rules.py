"""DPALS's data-adaptive rules on validation splits: the head capacity and floor, before and after.

Usage::

    python benchmarks/bench_dpals_rules.py            # 4 data sets, ε ∈ {1, 2, 5, 10, 20}, 2 seeds
    python benchmarks/bench_dpals_rules.py --quick    # gowalla only, ε ∈ {10, 20}, 1 seed
    python benchmarks/bench_dpals_rules.py --datasets gowalla-lightgcn --epsilons 10 20

Why: on gowalla-lightgcn DPALS's Recall@20 at ε = 20 was below ε = 10. The head rule kept every
item whose noisy count clears ``head_snr`` × the noise std; that threshold falls with σ, so the
head grew from ~6,400 items at ε = 10 to ~14,000 at ε = 20 — rare items whose factors are mostly
noise, which every user holding one then solves from. :func:`privrec.models.dp_rules.head_capacity`
caps the head at Σ_j ñ_j / k (one observation per factor parameter); and at small ε the
opposite held on gowalla — the threshold left a head too small to hold the interactions —
so :func:`privrec.models.dp_rules.head_floor` keeps at least the items holding a quarter of the
noisy count mass. This script scores DPALS (``method="adaptive"``, defaults) without either rule
(``before``, the previous default), with the cap only (``cap``) and with both (``after``, the
default) on VALIDATION splits only — the selection splits of ``privacy_utility.py`` (ml-100k
validation users, valid.txt of ml-1m-implicit-r3 and gowalla-lightgcn on 8000 users, a holdout
of movietweetings-100k's training part), never test — as mean ± sd over :data:`SEEDS` seeded
noise draws (seeded noise is reproducible and NOT private — fine for a benchmark), with the
resolved head size and k. :data:`NOTES` records the explorations behind the rules.

Results: ``benchmarks/results/dpals_rules.{json,md}`` (``-quick`` in quick mode).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from setting import DELTA, HERE, K, machine_info, machine_markdown

DATASETS = ("gowalla-lightgcn", "ml-1m-implicit-r3", "ml-100k", "movietweetings-100k")
EPSILONS = (1.0, 2.0, 5.0, 10.0, 20.0)
SEEDS = (0, 1)
VARIANTS = ("before", "cap", "after")
#: other validation measurements behind the rules (explorations, same splits; see the report)
NOTES: tuple[str, ...] = (
    "Why ε = 20 fell below ε = 10 on gowalla (2 seeds, before the rules): between the two only σ "
    "and what follows it change (B = 27, k = 64, T = 3, β = 0.1 alike); the head grew from 6,347 "
    "to 13,991 items and λ fell from 189 to 109. At ε = 20, the head fixed at 6,366 items: 0.1214 "
    "± 0.0000; λ fixed at 189: 0.1098 ± 0.0005; both: 0.1243 ± 0.0008 (default 0.0959 ± 0.0002). "
    "Training on the 13,991 items but ranking only the top 6,366: 0.0955 ± 0.0005 — the loss is "
    "in training (users solve from noise-dominated rare items), not in the ranking.",
    "head_snr at ε = 20 (gowalla): 7 → 0.0959 (13,991 items), 10 → 0.1202 (7,470), 14 → 0.1182 "
    "(4,119), 20 → 0.1053 (2,214), 28 → 0.0898 (1,246); at ε = 10: 7 → 0.1044 (6,347), 10 → "
    "0.1080 (3,083), 14 → 0.0941; at ε = 5: 7 → 0.0933 (2,545), 10 → 0.0817; at ε = 2: 7 → "
    "0.0621 (724), 10 → 0.0499 (300). A larger SNR helps at large ε and hurts at small ε, so no "
    "constant threshold fixes it; the cap Σ ñ / k does: ×0.5 → 0.1107, ×1 → 0.1202, ×2 → 0.1062 "
    "at ε = 20. k = 32 (cap 11,512 items) instead: 0.0945 at ε = 20, 0.0965 at ε = 10.",
    "movietweetings-100k ε = 5 with 6 seeds: cap 0.2709 ± 0.0011, before 0.2715 ± 0.0016.",
    "Caveat — the short-history synthetic set of `bench_short_history.py --validation` "
    "(synthetic-median5, 2 seeds): before → after ε = 1 0.1942 → 0.1942 (406 items), ε = 5 "
    "0.2122 ± 0.0019 → 0.2104 ± 0.0018 (867 → 647), ε = 10 0.2206 ± 0.0021 → 0.2094 ± 0.0007 "
    "(1,109 → 323), ε = 20 0.2206 ± 0.0032 → 0.2098 ± 0.0007 (1,332 → 324): there the cap "
    "binds hard and costs 5% at ε ≥ 10. Its heads are even more over-parameterised than "
    "gowalla's (1,332·64 vs Σ ñ ≈ 20,700) yet learn, so one observation per parameter is not "
    "the whole mechanism; the share of head count mass below σ_eff·√k (0.23 there at ε = 20, "
    "0.57 on gowalla, but 0.66 on gowalla at ε = 5 where the head is fine) does not separate "
    "them either. Open.",
    "The harm is noise-driven: gowalla at ε = 1000 (1 seed) scores 0.1413 with the full head "
    "(40,473 items) and 0.1264 capped (5,765); at ε = 50 (1 seed) before 0.0800 (28,170 items), "
    "after 0.1297 (5,770). The best head on gowalla grows more slowly than "
    "the noise threshold (∝ σ) lets it: its count threshold is about 40 / 25 / 20 / 12 at ε = 1 "
    "/ 5 / 10 / 20 (σ_eff 33.8 / 9.3 / 5.2 / 3.0), roughly ∝ √σ_eff — a next rule to try.",
    "Coverage floor: a fixed head_min helps gowalla (ε = 1: 600 → 0.0473, 1,200 → 0.0484, 2,400 "
    "→ 0.0452 vs 0.0415; ε = 2: 1,200 → 0.0672, 2,400 → 0.0673 vs 0.0621) but hurts ml-1m (ε = "
    "1: 600 → 0.1583, 1,200 → 0.1408 vs 0.1708; ε = 2: 0.2004 / 0.1783 vs 0.2016) and ml-100k "
    "(ε = 1: 0.1949 / 0.0766 vs 0.2224; ε = 2: 0.2037 / 0.0659 vs 0.2616); movietweetings ε = 1: "
    "0.2713 / 0.2701 vs 0.2714, ε = 2: 0.2711 / 0.2754 vs 0.2728. A quarter of the noisy count "
    "mass is in 883 items on gowalla at ε = 1 but in 95 (ml-1m), 34 (ml-100k), 19 "
    "(movietweetings), so the share-based floor binds on gowalla only.",
    "Tried at ε = 5, not kept (gowalla-lightgcn / ml-1m-implicit-r3; defaults 0.0933 / 0.2331): "
    "head_snr 5: 0.0819 / 0.2269, 4: 0.0832 / 0.2233, 3: 0.0832 / 0.2221, 9: 0.0856 / 0.2313; "
    "λ ×0.5: 0.0896 / 0.2284, λ ×2: 0.0947 / 0.2317; k = 64: 0.0933 / 0.2221, k = 16: 0.0782 / "
    "0.2290; T = 4: 0.0904 / 0.2305, T = 2: 0.0878 / 0.2274; β = 0.1 without shrinkage: 0.0950 "
    "/ 0.2326. Gowalla ε = 1: k = 16 0.0410, β = 0.5 0.0412, bound_quantile 0.6 0.0485 (its "
    "head: 708 items).",
)


@contextmanager
def _rule(variant: str) -> Iterator[None]:
    """``before``: neither head rule (the previous default); ``cap``: the capacity only;
    ``after``: the defaults (capacity and coverage floor)."""
    import privrec.models.dp_als as dp_als

    saved = dp_als.head_capacity, dp_als.head_floor
    if variant == "before":
        dp_als.head_capacity = lambda noisy_counts, factors: None  # type: ignore[assignment,return-value]
    if variant in ("before", "cap"):
        dp_als.head_floor = lambda noisy_counts, minimum: minimum  # type: ignore[assignment]
    try:
        yield
    finally:
        dp_als.head_capacity, dp_als.head_floor = saved


def _cell(split: Any, on: str, eps: float, variant: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    from privrec.evaluation import evaluate
    from privrec.models.dp_als import DPALS

    recalls: list[float] = []
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        m = DPALS(epsilon=eps, delta=DELTA, unit="user", seed=seed)
        with _rule(variant), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(split.train)
        res = evaluate(m, split, k=(K,), on=on, groups=None, metrics=("recall",))  # type: ignore[arg-type]
        recalls.append(float(res.metric("recall", K)))
        info = {
            "head": len(m.head_items_),
            "k": int(m.factors_),
            "regularization": round(float(m.regularization_), 2),
            "bound": int(m.max_per_user_),
        }
    return {
        "recall": float(np.mean(recalls)),
        "recall_std": float(np.std(recalls)),
        "recalls": recalls,
        "seconds": round(time.perf_counter() - t0, 1),
        **info,
    }


def run(datasets: list[str], epsilons: list[float], seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    from privacy_utility import _splits

    rows: list[dict[str, Any]] = []
    for ds in datasets:
        split, _, on, _ = _splits(ds)
        for eps in epsilons:
            for variant in VARIANTS:
                row = {"dataset": ds, "epsilon": eps, "variant": variant}
                row |= _cell(split, on, eps, variant, seeds)
                print(
                    f"{ds} ε={eps:g} {variant}: {row['recall']:.4f} ± {row['recall_std']:.4f} "
                    f"(head {row['head']}, k {row['k']}, {row['seconds']} s)",
                    flush=True,
                )
                rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], seeds: tuple[int, ...], date: str) -> str:
    lines = [
        "# DPALS head rules on validation splits: capacity and coverage floor (before / after)",
        "",
        f'Run {date}. DPALS (`method="adaptive"`, defaults), user-level ε, δ = {DELTA:g}; '
        f"Recall@{K} on VALIDATION splits only (`privacy_utility.py`'s selection splits), mean ± sd "
        f"of {len(seeds)} seeded noise draws, with the head size. `before`: the previous head rule "
        "(every item above the noise threshold, at least `head_min`); `cap`: at most Σ ñ_j / k "
        "items (`head_capacity`); `after` (the defaults): the cap and at least the items holding a "
        "quarter of the noisy count mass (`head_floor`). Δ = after − before. "
        "`bench_dpals_rules.py`.",
        "",
        "| data set | ε | k | before | head | cap | head | after | head | Δ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = {(r["dataset"], r["epsilon"], r["variant"]): r for r in rows}
    for ds, eps in dict.fromkeys((r["dataset"], r["epsilon"]) for r in rows):
        got = [cells.get((ds, eps, v)) for v in VARIANTS]
        if any(g is None for g in got):
            continue
        b, c, a = (g for g in got if g is not None)
        lines.append(
            f"| {ds} | {eps:g} | {a['k']} | "
            + " | ".join(
                f"{g['recall']:.4f} ± {g['recall_std']:.4f} | {g['head']}" for g in (b, c, a)
            )
            + f" | {a['recall'] - b['recall']:+.4f} |"
        )
    notes = "\n".join(f"- {n}" for n in NOTES)
    return "\n".join(lines) + "\n\n" + notes + "\n\n" + machine_markdown(machine_info()) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--epsilons", nargs="+", type=float, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    args = ap.parse_args()
    datasets = args.datasets or (["gowalla-lightgcn"] if args.quick else list(DATASETS))
    epsilons = args.epsilons or ([10.0, 20.0] if args.quick else list(EPSILONS))
    seeds = tuple(args.seeds) if args.seeds else ((0,) if args.quick else SEEDS)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = run(datasets, epsilons, seeds)
    name = "dpals_rules-quick" if args.quick else "dpals_rules"
    out = Path(HERE) / "results"
    payload = {"date": date, "seeds": list(seeds), "delta": DELTA, "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{name}.md").write_text(report(rows, seeds, date))
    print(f"wrote {out / name}.md")


if __name__ == "__main__":
    main()
