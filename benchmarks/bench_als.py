"""privrec ImplicitALS against implicit 0.7 ALS: quality, speed and memory, in one run.

Usage::

    python benchmarks/bench_als.py            # full run (about 15-25 min on 2 cores)
    python benchmarks/bench_als.py --quick    # ml-1m quality + 1/10-scale speed test

Quality
    Recall@20 and NDCG@20 on the LightGCN-format splits ``ml-1m-implicit-r3``
    and ``gowalla-lightgcn`` (train on train+valid, score test, training items
    excluded) through :func:`privrec.evaluation.evaluate`. privrec runs with its
    DEFAULT hyper-parameters (64 factors, 15 iterations); implicit with the
    winner of a small grid over ``regularization`` and ``alpha`` selected on
    valid.txt (recorded in :data:`IMPLICIT_GRID` / :data:`IMPLICIT_BEST`).
Speed and memory
    A synthetic MovieLens-20M-sized matrix (138k users, 20k items, ~20M
    interactions, from :func:`privrec.data.synthetic.synthetic`), 64 factors,
    at EQUAL parameters: both libraries minimise the same objective (observed
    weight 2, unobserved weight 1, plain ridge 0.01 on the binary matrix —
    privrec ``alpha0=1, alpha=1, reg_exponent=0``, implicit ``alpha=2``;
    recorded in :data:`SPEED_PARAMS`) with 3 CG steps per row. Each (library, solver) runs in its own subprocess on 2
    threads, reading the matrix from a ``.npz`` written once by the parent;
    the runs are repeated ``--repeats`` times (default 3) and interleaved
    (privrec CG, implicit CG, privrec Cholesky, implicit Cholesky, then again)
    so that background load hits both libraries alike. Within a run the FIRST
    epoch is a warm-up (it holds the one-off transpose and set-up) and is left
    out; a run's figure is the median of its other epochs, and the table
    reports the median over repeats (and the range). Ratios come from the same
    repeats. Process CPU seconds per epoch are recorded beside wall time.
    Memory: ``ru_maxrss`` is NOT usable here — Linux carries it over from the
    parent through fork + exec, so every child reported the parent's peak.
    We read the child's own high-water mark ``VmHWM`` from
    ``/proc/self/status`` (per address space, so it starts afresh at exec) and
    report (a) the absolute peak of the child and (b) the increase during
    ``fit``: ``VmHWM`` is reset to the current RSS just before ``fit`` (write
    ``5`` to ``/proc/self/clear_refs``) and the RSS at that moment, with the
    matrix loaded and the library imported, is subtracted from the peak after
    ``fit``. (b) excludes data generation and loading.

Results go to ``benchmarks/results/als.json`` and ``benchmarks/results/als.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402

DATA = Path(os.environ.get("PRIVREC_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
DATASETS = ("ml-1m-implicit-r3", "gowalla-lightgcn")
FACTORS = 64
ITERATIONS = 15
THREADS = 2
K = 20

# Grid run on train.txt -> valid.txt (64 factors, 15 iterations, 1 thread,
# random_state=0), selecting on Recall@20 over valid.txt.
IMPLICIT_GRID: dict[str, list[tuple[float, float]]] = {
    # (regularization, alpha) pairs tried; the grid was widened around the edge winners
    "ml-1m-implicit-r3": [
        *((r, a) for r in (0.01, 0.1, 1.0, 10.0, 50.0) for a in (1.0, 5.0, 20.0, 50.0)),
        *((r, a) for r in (50.0, 100.0, 200.0) for a in (5.0, 10.0, 20.0)),
    ],
    "gowalla-lightgcn": [
        *((r, a) for r in (1.0, 10.0) for a in (5.0, 10.0, 20.0, 50.0)),
        (50.0, 5.0), (1.0, 100.0), (0.1, 100.0), (1.0, 200.0),
    ],
}  # fmt: skip
# Winners (Recall@20 on valid.txt): ml-1m 0.2795, gowalla 0.1592. privrec's
# defaults on the same validation sets: 0.2839 and 0.1599.
IMPLICIT_BEST: dict[str, dict[str, float]] = {
    "ml-1m-implicit-r3": {"regularization": 100.0, "alpha": 10.0},
    "gowalla-lightgcn": {"regularization": 1.0, "alpha": 100.0},
}

# Speed runs: the same objective and work in both libraries (see the module docstring).
SPEED_PARAMS: dict[str, dict[str, Any]] = {
    "privrec": {
        "regularization": 0.01,
        "alpha": 1.0,
        "alpha0": 1.0,
        "reg_exponent": 0.0,
        "cg_steps": 3,
    },
    # implicit's confidence alpha·value is privrec's alpha0 + alpha·value: on binary data 2 = 1 + 1;
    # implicit 0.7 always takes 3 CG steps
    "implicit": {"regularization": 0.01, "alpha": 2.0},
}
EPOCHS = {"cg": 5, "cholesky": 3}  # the first is a warm-up, left out of the figures

SYNTH_FULL: dict[str, Any] = {"n_users": 138_000, "n_items": 20_000, "interactions_per_user": 145.0}
SYNTH_QUICK: dict[str, Any] = {"n_users": 13_800, "n_items": 20_000, "interactions_per_user": 145.0}


# ---------------------------------------------------------------- quality
class _FactorModel:
    """``recommend`` over plain factor arrays: implicit's factors go through the same evaluator."""

    def __init__(self, users: np.ndarray, items: np.ndarray, train: sp.csr_matrix) -> None:
        self.users, self.items, self.train = users, items, train

    def recommend(
        self, user_ids: np.ndarray, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        from privrec.models.ranking import mask_seen, top_k

        idx = np.atleast_1d(np.asarray(user_ids))
        scores = self.users[idx] @ self.items.T
        if exclude_seen:
            mask_seen(scores, sp.csr_matrix(self.train[idx]))
        return top_k(scores, k)

    def recommend_history(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("weak generalisation only")


def _metrics(model: Any, split: Any) -> dict[str, float]:
    from privrec.evaluation import evaluate

    res = evaluate(model, split, k=(K,), groups=None, metrics=("recall", "ndcg"))
    table: dict[Any, Any] = res.table.to_dict()
    return {
        f"recall@{K}": float(table[K]["recall"]),
        f"ndcg@{K}": float(table[K]["ndcg"]),
    }


def quality(datasets: tuple[str, ...]) -> list[dict[str, Any]]:
    import implicit.cpu.als
    from threadpoolctl import threadpool_limits

    from privrec.evaluation import load_split
    from privrec.models.als import ImplicitALS

    rows: list[dict[str, Any]] = []
    for name in datasets:
        split = load_split(DATA / name, merge_valid_into_train=True)
        train = split.train
        print(f"[quality] {name}: {train}", flush=True)

        model = ImplicitALS(num_threads=THREADS)
        t0 = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t0
        row: dict[str, Any] = {"dataset": name, "library": "privrec", "params": model.get_params()}
        row.update(_metrics(model, split), fit_seconds=round(fit_s, 2))
        rows.append(row)
        print(f"  {row}", flush=True)

        best = IMPLICIT_BEST[name]
        with threadpool_limits(1, "blas"):
            imp = implicit.cpu.als.AlternatingLeastSquares(
                factors=FACTORS, iterations=ITERATIONS, num_threads=THREADS,
                random_state=0, **best,
            )  # fmt: skip
            t0 = time.perf_counter()
            imp.fit(train.matrix, show_progress=False)
            fit_s = time.perf_counter() - t0
        wrapped = _FactorModel(imp.user_factors, imp.item_factors, train.matrix)
        row = {"dataset": name, "library": "implicit", "params": dict(best)}
        row.update(_metrics(wrapped, split), fit_seconds=round(fit_s, 2))
        rows.append(row)
        print(f"  {row}", flush=True)
    return rows


# ----------------------------------------------------------- speed / memory
def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside a fresh interpreter: load the matrix, fit, report time and memory."""
    with np.load(spec["path"]) as f:
        m = sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))
    epoch_ends: list[float] = []
    cpu_ends: list[float] = []

    def tick() -> None:
        epoch_ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())

    if spec["library"] == "privrec":
        from privrec.data.interactions import Interactions
        from privrec.models.als import ImplicitALS

        # wrap without copying (from_csr would copy): the file holds float32 data,
        # int32 indices and int64 indptr, which is what Interactions stores
        data = Interactions(m, np.arange(m.shape[0]), np.arange(m.shape[1]))
        del m
        # warm the JIT cache outside the measurement (cache=True: loads, no compile)
        ImplicitALS(factors=4, iterations=1, solver=spec["solver"]).fit(
            sp.random(50, 40, density=0.1, format="csr", random_state=0)
        )
        model = ImplicitALS(
            factors=FACTORS, iterations=spec["iterations"], solver=spec["solver"],
            num_threads=THREADS, **SPEED_PARAMS["privrec"],
        )  # fmt: skip
        peak_load = _proc_status_kb("VmHWM")
        reset = _reset_peak()
        before = _proc_status_kb("VmRSS")
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(data, progress=lambda i, n: tick())
    else:
        import implicit.cpu.als
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            peak_load = _proc_status_kb("VmHWM")
            reset = _reset_peak()
            before = _proc_status_kb("VmRSS")
            imp = implicit.cpu.als.AlternatingLeastSquares(
                factors=FACTORS, iterations=spec["iterations"], num_threads=THREADS,
                use_cg=spec["solver"] == "cg", random_state=0, **SPEED_PARAMS["implicit"],
            )  # fmt: skip
            t0, c0 = time.perf_counter(), time.process_time()
            imp.fit(m, show_progress=False, callback=lambda *a: tick())
    total = time.perf_counter() - t0
    peak_fit = _proc_status_kb("VmHWM")
    peak = max(peak_fit, peak_load)
    epochs = np.diff(np.array([t0, *epoch_ends]))
    cpu_epochs = np.diff(np.array([c0, *cpu_ends]))
    steady, cpu_steady = epochs[1:], cpu_epochs[1:]  # the first epoch is the warm-up
    return {
        "library": spec["library"],
        "solver": spec["solver"],
        "iterations": spec["iterations"],
        "params": SPEED_PARAMS[spec["library"]],
        "epoch_seconds": [round(float(e), 3) for e in epochs],
        "cpu_epoch_seconds": [round(float(e), 3) for e in cpu_epochs],
        "seconds_per_epoch": round(float(np.median(steady)), 3),
        "cpu_seconds_per_epoch": round(float(np.median(cpu_steady)), 3),
        "min_seconds_per_epoch": round(float(np.min(steady)), 3),
        "load_avg": round(os.getloadavg()[0], 2),
        "fit_seconds": round(total, 2),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_before_fit_mb": round(before / 1024, 1),
        "fit_rss_delta_mb": round((peak_fit - before) / 1024, 1) if reset else None,
        "ru_maxrss_mb_inherited": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }


def speed(quick: bool, repeats: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from privrec.data.synthetic import synthetic

    shape = SYNTH_QUICK if quick else SYNTH_FULL
    t0 = time.perf_counter()
    x = synthetic(**shape, seed=0, timestamps=False)
    gen_s = time.perf_counter() - t0
    info = {
        **shape,
        "nnz": x.nnz,
        "generator": "privrec.data.synthetic",
        "gen_seconds": round(gen_s, 1),
        "repeats": repeats,
        "epochs": EPOCHS,
    }
    print(f"[speed] synthetic {x} in {gen_s:.1f}s", flush=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.npz"
        m = x.matrix
        np.savez(path, data=m.data, indices=m.indices, indptr=m.indptr, shape=np.array(m.shape))
        del x, m
        for r in range(repeats):  # interleaved: load spikes hit every configuration alike
            for solver in ("cg", "cholesky"):
                for library in ("privrec", "implicit"):
                    spec = {
                        "path": str(path),
                        "library": library,
                        "solver": solver,
                        "iterations": EPOCHS[solver],
                    }
                    env = {**os.environ, "NUMBA_NUM_THREADS": str(THREADS)}
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", json.dumps(spec)],
                        capture_output=True, text=True, env=env, check=False,
                    )  # fmt: skip
                    if out.returncode != 0:
                        print(out.stderr, file=sys.stderr)
                        raise RuntimeError(f"{library}/{solver} child failed")
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    row["repeat"] = r + 1
                    runs.append(row)
                    print(f"  [repeat {r + 1}] {row}", flush=True)
    return info, runs


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (library, solver): medians over repeats of each run's steady figures."""
    out = []
    for solver in ("cg", "cholesky"):
        for library in ("privrec", "implicit"):
            rows = [r for r in runs if r["library"] == library and r["solver"] == solver]
            if not rows:
                continue
            sec = [r["seconds_per_epoch"] for r in rows]
            out.append(
                {
                    "library": library,
                    "solver": solver,
                    "iterations": rows[0]["iterations"],
                    "repeats": len(rows),
                    "seconds_per_epoch": round(float(np.median(sec)), 3),
                    "range_seconds_per_epoch": [min(sec), max(sec)],
                    "cpu_seconds_per_epoch": round(
                        float(np.median([r["cpu_seconds_per_epoch"] for r in rows])), 3
                    ),
                    "peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in rows])),
                    "fit_rss_delta_mb": (
                        None
                        if any(r["fit_rss_delta_mb"] is None for r in rows)
                        else float(np.median([r["fit_rss_delta_mb"] for r in rows]))
                    ),
                }
            )
    return out


# ------------------------------------------------------------------ report
def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "n/a"


def markdown(result: dict[str, Any]) -> str:
    lines = ["# ImplicitALS vs implicit 0.7 ALS", ""]
    lines += [f"Run {result['date']} ({'quick' if result['quick'] else 'full'} mode).", ""]
    lines += ["## Quality (train+valid → test, Recall/NDCG@20, 64 factors, 15 iterations)", ""]
    lines += ["| dataset | library | hyper-parameters | Recall@20 | NDCG@20 | fit s |"]
    lines += ["|---|---|---|---:|---:|---:|"]
    for r in result["quality"]:
        p = r["params"]
        if r["library"] == "privrec":
            ps = "defaults"
        else:
            ps = f"reg={p['regularization']}, alpha={p['alpha']} (grid winner on valid)"
        lines.append(
            f"| {r['dataset']} | {r['library']} | {ps} | {r['recall@20']:.4f} "
            f"| {r['ndcg@20']:.4f} | {r['fit_seconds']} |"
        )
    s = result["synthetic"]
    lines += [
        "",
        f"## Speed and memory (synthetic {s['n_users']:,} users × {s['n_items']:,} items, "
        f"{s['nnz']:,} interactions, 64 factors, {THREADS} threads)",
        "",
    ]
    lines += [
        f"Equal parameters ({json.dumps(SPEED_PARAMS)}); {s.get('repeats', 1)} interleaved "
        "repeats per configuration; the first epoch of every run is a warm-up and left out.",
        "",
        "| solver | library | s/epoch: median over repeats (range) | CPU s/epoch | epochs per run "
        "| peak RSS MB | RSS Δ during fit MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    summary = result.get("summary") or summarise(result["speed"])
    by = {(r["library"], r["solver"]): r for r in summary}
    for (lib, solver), r in by.items():
        lo, hi = r["range_seconds_per_epoch"]
        lines.append(
            f"| {solver} | {lib} | {r['seconds_per_epoch']:.2f} ({lo:.2f}–{hi:.2f}) "
            f"| {r['cpu_seconds_per_epoch']:.2f} | {r['iterations']} (1 warm-up) "
            f"| {r['peak_rss_mb']:.0f} | {r['fit_rss_delta_mb'] or float('nan'):.0f} |"
        )
    lines += [
        "",
        "Peak RSS is the child's own high-water mark (`VmHWM`), including the loaded "
        "matrix; RSS Δ is the peak during `fit` minus the RSS just before it (data "
        "generation and loading excluded). `ru_maxrss` is inherited from the parent "
        "through fork+exec on Linux, so it is recorded in the JSON but not used.",
        "",
    ]
    for solver in ("cg", "cholesky"):
        a, b = by.get(("privrec", solver)), by.get(("implicit", solver))
        if a and b:
            lines.append(
                f"- {solver}: privrec / implicit time per epoch = "
                f"{_ratio(a['seconds_per_epoch'], b['seconds_per_epoch'])} "
                f"(CPU {_ratio(a['cpu_seconds_per_epoch'], b['cpu_seconds_per_epoch'])}), "
                f"peak RSS = {_ratio(a['peak_rss_mb'], b['peak_rss_mb'])}, "
                f"RSS Δ = {_ratio(a['fit_rss_delta_mb'], b['fit_rss_delta_mb'])}"
            )
    lines += ["", "## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="ml-1m only, 1/10-scale speed test")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--skip-quality", action="store_true", help="speed/memory only")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (interleaved)")
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine_info(),
        "implicit_grid": IMPLICIT_GRID,
        "implicit_best": IMPLICIT_BEST,
    }
    datasets = DATASETS[:1] if args.quick else DATASETS
    result["quality"] = [] if args.skip_quality else quality(datasets)
    result["synthetic"], result["speed"] = speed(args.quick, args.repeats)
    result["summary"] = summarise(result["speed"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (out / f"als{suffix}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"als{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
