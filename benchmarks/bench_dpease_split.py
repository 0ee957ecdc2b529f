"""DPEASE's budget split on validation splits: a fixed count share against the n·ε rule.

Usage::

    python benchmarks/bench_dpease_split.py            # 8 sets, ε ∈ {0.5, 1, 2, 5}, 3 seeds (~12 min)
    python benchmarks/bench_dpease_split.py --quick    # ml-latest-small, ε = 1, 1 seed
    python benchmarks/bench_dpease_split.py --datasets ml-100k --epsilons 1 5

Why: DPEASE spends Σ 1/z² on three Gaussian releases — the history-length histogram, the
head-selection item counts and the item Gram matrix. With a fixed split (10% to the counts)
it scored at or below half of DPPopularity at ε = 1 on the sets with the fewest users × ε
(``results/unseen_sets.md``): there the Gram's pair statistics cannot rise above the noise and
the counts — which pick the head and, through the prior, carry the ranking — were starved.
The split is now chosen after the histogram from its noisy user count n̂
(:func:`privrec.models.dp_rules.count_share`: ``0.1 × 8000 / (n̂·ε)`` within [0.1, 0.75] of the
pair's rate; :class:`privrec.models.dp_ease.EaseBudget` states why the guarantee is unchanged),
and from half of the rate on the counts also join the Gram diagonal in the popularity prior
(:func:`privrec.models.dp_ease.popularity_prior`, inverse-variance weights).

Variants (DPEASE defaults otherwise, user-level, δ = 1e-5): ``fixed`` — the old default
(``count_budget_fraction=0.1``, ``count_prior=False``); ``rule`` — the n·ε share, prior from
the Gram diagonal only; ``default`` — the rule with the count prior from share 0.5 (today's
default). DPPopularity is the bar. Splits: VALIDATION only — ``privacy_utility.py``'s selection
splits, ``bench_short_history``'s synthetic-median5, and for ml-latest-small, lastfm-2k and
book-crossing (``bench_unseen_sets.py``) a second 20% holdout (seed 1) of their training part;
their test holdouts are never scored here. Mean ± sd over :data:`SEEDS` seeded noise draws
(reproducible and NOT private — fine for a benchmark).

Results: ``benchmarks/results/dpease_split.{json,md}`` (``-quick`` in quick mode).
"""

from __future__ import annotations

import time
from typing import Any

import validation_table
from setting import DELTA, K
from validation_table import (
    DATASETS,
    cell_result,
    closing,
    complete_cells,
    fit_and_score,
    mean_sd,
    run_cells,
)

EPSILONS = (0.5, 1.0, 2.0, 5.0)
SEEDS = (0, 1, 2)
UNSEEN = ("ml-latest-small", "lastfm-2k", "book-crossing")
#: gowalla's share is 0.1 at every ε ≥ 1 (n·ε ≥ 30,000), so fixed = rule there: ε = 0.5 is left
#: out (its Gram of up to 5,000 items makes it the slowest cell)
ALL_SETS = (*UNSEEN, *DATASETS)
VARIANTS: dict[str, dict[str, Any]] = {
    "dppopularity": {},
    "fixed": {"count_budget_fraction": 0.1, "count_prior": False},
    "rule": {"count_prior": False},
    "default": {},
}
NOTES: tuple[str, ...] = (
    "How the rule was read (2026-12-07, same splits and seeds): fixed shares 0.1 / 0.25 / 0.5 / "
    "0.75 of the pair's rate, each with and without the count prior, on the seven smaller sets "
    "at ε ∈ {0.5, 1, 2, 5}. The best share fell with n·ε: 0.75 at n·ε ≤ 1,000 (ml-latest-small "
    "ε ≤ 1, ml-100k ε ≤ 1, lastfm-2k ε = 0.5), 0.5 near 1,200–3,000, 0.25 near 3,000–6,000 "
    "(ml-1m ε = 0.5, movietweetings ε = 0.5, synthetic ε = 0.5, lastfm ε = 2) and 0.1 from "
    "about 10,000 on (ml-1m ε ≥ 2, synthetic ε ≥ 1, gowalla) — a share ∝ 1/(n·ε), which the rule "
    "is. The count prior lifted ml-100k by 0.026 / 0.042 at ε = 0.5 / 1 and lastfm-2k by 0.014 "
    "at ε = 0.5 with the counts at share 0.75, but cost up to 0.004 where the counts had "
    "0.1–0.3 (book-crossing ε = 1, lastfm ε = 2, gowalla −0.0008 at ε = 1 / 2): selected from "
    "the same noisy counts, the head's counts are biased upward (winner's curse), which "
    "matters when they are noisy — so it joins from share 0.5.",
    "Result (this table): the default is at or above the fixed split in 29 of 30 cells (the "
    "exception: synthetic-median5 ε = 1, −0.0019 at share 0.11) — every cell with n·ε ≤ 3,000 "
    "gains (ml-latest-small ε = 1: 0.032 → 0.072, lastfm-2k ε = 0.5: 0.013 → 0.082, ml-100k "
    "ε = 1: 0.156 → 0.204) and cells from n·ε ≈ 8,000 on are unchanged (share 0.1). DPEASE "
    "still trails DPPopularity at n·ε ≲ 3,000 on ml-latest-small, lastfm-2k (ε = 0.5), ml-100k "
    "(ε ≤ 2, within noise at ε = 1) and on book-crossing at every ε (its flat popularity over "
    "17k books), so its UtilityWarning below users × ε = 4,000 stays.",
)


def _split(ds: str) -> tuple[Any, str]:
    if ds in UNSEEN:
        from bench_unseen_sets import split_of
        from privrec.evaluation import random_holdout

        return random_holdout(split_of(ds).train, 0.2, seed=1), "test"
    from bench_short_history import _validation_split

    return _validation_split(ds)


def _cell(split: Any, on: str, eps: float, variant: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    from privrec.models.dp_ease import DPEASE
    from privrec.models.dp_popularity import DPPopularity

    started, recalls, shares = time.perf_counter(), [], []
    for seed in seeds:
        priv = {"epsilon": eps, "delta": DELTA, "unit": "user", "seed": seed}
        if variant == "dppopularity":
            m: Any = DPPopularity(**priv)
        else:
            m = DPEASE(**priv, **VARIANTS[variant])
        recalls.append(fit_and_score(m, split, on))
        shares.append(float(getattr(m, "count_budget_fraction_", 0.0)))
    return cell_result(recalls, started, {"share": float(sum(shares) / len(shares))})


def run(datasets: list[str], epsilons: list[float], seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    return run_cells(
        datasets,
        epsilons,
        list(VARIANTS),
        seeds,
        _cell,
        lambda row: f"share {row['share']:.2f}",
        split_of=_split,
        skip=lambda ds, eps: ds == "gowalla-lightgcn" and eps < 1,
    )


def report(rows: list[dict[str, Any]], seeds: tuple[int, ...], date: str) -> str:
    lines = [
        "# DPEASE's budget split: fixed count share vs the n·ε rule (validation splits)",
        "",
        f"Run {date}. Recall@{K}, user-level ε, δ = {DELTA:g}, mean ± sd of {len(seeds)} seeded "
        "noise draws (seeds " + ", ".join(map(str, seeds)) + "). *share*: the counts' share of "
        "the counts-and-Gram rate under the rule (mean over seeds). *fixed*: share 0.1, prior "
        "from the Gram diagonal (the old default); *rule*: the n·ε share; *default*: the rule "
        "and the count prior from share 0.5. `benchmarks/bench_dpease_split.py`.",
        "",
        "| data set | users | ε | n·ε | share | DPPopularity | fixed | rule | default | Δ default − fixed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ds, eps, (pop, fixed, rule, default) in complete_cells(rows, list(VARIANTS)):
        lines.append(
            f"| {ds} | {default['users']:,} | {eps:g} | {default['users'] * eps:,.0f} | "
            f"{default['share']:.2f} | "
            + " | ".join(map(mean_sd, (pop, fixed, rule, default)))
            + f" | {default['recall'] - fixed['recall']:+.4f} |"
        )
    return closing(lines, NOTES)


if __name__ == "__main__":
    validation_table.main(
        __doc__ or "",
        "dpease_split",
        datasets=ALL_SETS,
        epsilons=EPSILONS,
        seeds=SEEDS,
        quick=(("ml-latest-small",), (1.0,)),
        run=run,
        report=report,
    )
