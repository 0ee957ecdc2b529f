"""The scaffolding of a before/after table on validation splits (``bench_dpals_*`` scripts).

A script names its variants and scores one cell (data set, ε, variant); this module runs every
cell on :func:`bench_short_history._validation_split`'s splits — validation only, never test —
prints each as it finishes, parses the common options and writes ``results/NAME.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from setting import DELTA, HERE, machine_info, machine_markdown

#: the validation sets and budgets every before/after table covers (two seeded draws each)
DATASETS = (
    "gowalla-lightgcn",
    "ml-1m-implicit-r3",
    "ml-100k",
    "movietweetings-100k",
    "synthetic-median5",
)
EPSILONS = (1.0, 2.0, 5.0, 10.0, 20.0)
SEEDS = (0, 1)

Cell = Callable[[Any, str, float, str, tuple[int, ...]], dict[str, Any]]
Report = Callable[[list[dict[str, Any]], tuple[int, ...], str], str]


def cell_result(recalls: list[float], started: float, info: dict[str, Any]) -> dict[str, Any]:
    """One cell's row: mean and sd of the seeds' Recall@K, each seed's, the seconds it took."""
    import numpy as np

    return {
        "recall": float(np.mean(recalls)),
        "recall_std": float(np.std(recalls)),
        "recalls": recalls,
        "seconds": round(time.perf_counter() - started, 1),
        **info,
    }


def fit_and_score(model: Any, split: Any, on: str) -> float:
    """Fit ``model`` on ``split.train`` (warnings silenced) and return its Recall@K on ``on``."""
    import warnings

    from privrec.evaluation import evaluate
    from setting import K

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(split.train)
    return float(evaluate(model, split, k=(K,), on=on, metrics=("recall",)).metric("recall", K))


def run_cells(
    datasets: Sequence[str],
    epsilons: Sequence[float],
    variants: Sequence[str],
    seeds: tuple[int, ...],
    cell: Cell,
    describe: Callable[[dict[str, Any]], str],
    *,
    split_of: Callable[[str], tuple[Any, str]] | None = None,
    skip: Callable[[str, float], bool] | None = None,
) -> list[dict[str, Any]]:
    """Every (data set, ε, variant) cell, in that order; ``describe`` adds to the progress line.

    ``split_of(ds)`` gives ``(split, set to score)`` (default: ``_validation_split``); cells
    with ``skip(ds, ε)`` are left out. Each row records the training users.
    """
    from bench_short_history import _validation_split

    rows: list[dict[str, Any]] = []
    for ds in datasets:
        split, on = (split_of or _validation_split)(ds)
        for eps in epsilons:
            if skip is not None and skip(ds, eps):
                continue
            for variant in variants:
                row = {"dataset": ds, "users": int(split.train.n_users), "epsilon": eps}
                row |= {"variant": variant} | cell(split, on, eps, variant, seeds)
                print(
                    f"{ds} ε={eps:g} {variant}: {row['recall']:.4f} ± {row['recall_std']:.4f} "
                    f"({describe(row)}, {row['seconds']} s)",
                    flush=True,
                )
                rows.append(row)
    return rows


def complete_cells(
    rows: list[dict[str, Any]], variants: Sequence[str]
) -> Iterator[tuple[str, float, list[dict[str, Any]]]]:
    """``(data set, ε, [row of each variant])`` for every (data set, ε) holding all ``variants``,
    in the order the rows were run."""
    cells = {(r["dataset"], r["epsilon"], r["variant"]): r for r in rows}
    for ds, eps in dict.fromkeys((r["dataset"], r["epsilon"]) for r in rows):
        got = [cells.get((ds, eps, v)) for v in variants]
        if all(g is not None for g in got):
            yield ds, eps, [g for g in got if g is not None]


def mean_sd(row: dict[str, Any]) -> str:
    """A cell's Recall@K as ``mean ± sd``."""
    return f"{row['recall']:.4f} ± {row['recall_std']:.4f}"


def before_after_rows(
    rows: list[dict[str, Any]], middle: Callable[[dict[str, Any]], str]
) -> list[str]:
    """One Markdown row per (data set, ε) holding both variants: ``| ds | ε | middle | before |
    after | Δ |``, ``middle(after_row)`` the script's own columns; Δ = after − before."""
    cells = {(r["dataset"], r["epsilon"], r["variant"]): r for r in rows}
    lines = []
    for ds, eps in dict.fromkeys((r["dataset"], r["epsilon"]) for r in rows):
        b, a = cells.get((ds, eps, "before")), cells.get((ds, eps, "after"))
        if b is None or a is None:
            continue
        lines.append(
            f"| {ds} | {eps:g} | {middle(a)} | {b['recall']:.4f} ± {b['recall_std']:.4f} | "
            f"{a['recall']:.4f} ± {a['recall_std']:.4f} | {a['recall'] - b['recall']:+.4f} |"
        )
    return lines


def closing(lines: list[str], notes: Sequence[str]) -> str:
    """The table, the notes as a list and the machine section: the whole Markdown."""
    listed = "\n".join(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n\n" + listed + "\n\n" + machine_markdown(machine_info()) + "\n"


def main(
    description: str,
    name: str,
    *,
    datasets: Sequence[str],
    epsilons: Sequence[float],
    seeds: tuple[int, ...],
    quick: tuple[Sequence[str], Sequence[float]],
    run: Callable[[list[str], list[float], tuple[int, ...]], list[dict[str, Any]]],
    report: Report,
) -> None:
    """Parse ``--quick / --datasets / --epsilons / --seeds``, run, write the JSON and Markdown."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--epsilons", nargs="+", type=float, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument(
        "--render", action="store_true", help="re-write the Markdown from the stored JSON (notes)"
    )
    args = ap.parse_args()
    out = Path(HERE) / "results"
    if args.render:
        stem = f"{name}-quick" if args.quick else name
        stored = json.loads((out / f"{stem}.json").read_text())
        text = report(stored["rows"], tuple(stored["seeds"]), stored["date"])
        md = out / f"{stem}.md"
        if md.exists() and "\n- CPU:" in md.read_text():  # the machine of the run, not today's
            text = text.split("\n- CPU:")[0] + "\n- CPU:" + md.read_text().split("\n- CPU:", 1)[1]
        md.write_text(text)
        print(f"wrote {out / stem}.md")
        return
    chosen_ds = args.datasets or list(quick[0] if args.quick else datasets)
    chosen_eps = args.epsilons or list(quick[1] if args.quick else epsilons)
    chosen_seeds = tuple(args.seeds) if args.seeds else ((0,) if args.quick else seeds)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = run(chosen_ds, chosen_eps, chosen_seeds)
    stem = f"{name}-quick" if args.quick else name
    payload = {"date": date, "seeds": list(chosen_seeds), "delta": DELTA, "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{stem}.md").write_text(report(rows, chosen_seeds, date))
    print(f"wrote {out / stem}.md")
