"""DPALS private step against an ImplicitALS epoch (privrec and implicit 0.7), side by side.

Usage::

    python benchmarks/bench_dpals_speed.py                  # 5M, 10M and 20M interactions
    python benchmarks/bench_dpals_speed.py --scales 20M     # one scale
    python benchmarks/bench_dpals_speed.py --quick          # 1/10 of users and items (~2 min)
    python benchmarks/bench_dpals_speed.py --rounds 3       # repeat every model 3 times

The target (issue 15): a steady DPALS private item step costs at most 1.3× one
ImplicitALS CG epoch at 5M, 10M and 20M interactions, in wall and CPU time.

Data
    ``privrec.data.synthetic(138_000, 20_000, m, seed=0, timestamps=False)`` with
    m = 36, 72 and 145 interactions per user on average (~5M, ~10M, ~19.8M;
    ``--quick``: 13,800 users × 2,000 items at m = 145), each written once to a
    ``.npz`` in the temporary folder and read by every child. ``--quick`` is a
    smoke run only: at that size every factor matrix fits in cache, which
    speeds up the memory-bound CG epoch far more than the compute-bound
    private step, so its ratio is not comparable with the target.
Models (each in its own subprocess, 64 factors, 2 threads)
    * privrec ``ImplicitALS`` (conjugate gradient) and ``implicit`` 0.7
      ``AlternatingLeastSquares`` (CG), the reference library, at EQUAL parameters:
      the same objective (observed weight 2, unobserved weight 1, plain ridge 0.01)
      and 3 CG steps per row (:data:`ALS_PARAMS`, as in ``bench_als.py``);
    * ``DPALS`` at ε = 5 with the whole catalogue (``head_fraction=1``), B = 100
      and 4 private steps, once per left-hand-side variant (:data:`LHS_VARIANTS`:
      ``lhs="full"``, per-item k×k statistics; ``"none"``, the noisy Gramian
      alone). The steady step is the median of steps 2–4 (step 1 also
      holds the one-off set-up: noisy counts with per-user sampling, head
      selection, weights — and 8 rather than 4 warm-up CG user steps). The
      set-up is reported as step 1 minus the steady step, and
      ``sample_per_user`` (its main part) is also timed on its own. The final
      fold (exact Cholesky solves of every user against the released item
      factors) is the time from the last step to the end of ``fit``.
Baseline
    ``--baseline-src DIR`` adds, in every round, a DPALS run importing
    privrec from ``DIR`` (e.g. an older checkout's ``src``, exported with
    ``git archive``), so that an optimisation is measured against the code it
    replaces under the same load.
Contention
    The machine may be shared. Models run interleaved (round 1: all models,
    round 2: all models, …) so that background load hits them alike; the first
    epoch/step of every run is a warm-up (one-off set-up) and is left out; the
    tables report the median over rounds of each run's median step, the
    median of the per-round ratios (each against the ImplicitALS epoch of the
    same round), and the process CPU seconds per step (less sensitive to
    other processes than wall time). The load average before and after each
    run is recorded.

Results: ``benchmarks/results/dpals_speed.{json,md}`` (``-quick`` suffix in
quick mode), with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402

THREADS = 2
FACTORS = 64
ITERATIONS = 4
TARGET = 1.3
#: the two ALS implementations at equal parameters (implicit's confidence alpha·value is
#: privrec's alpha0 + alpha·value: 2 = 1 + 1 on binary data; implicit 0.7 takes 3 CG steps)
ALS_PARAMS: dict[str, dict[str, Any]] = {
    "implicitals": {
        "regularization": 0.01,
        "alpha": 1.0,
        "alpha0": 1.0,
        "reg_exponent": 0.0,
        "cg_steps": 3,
    },
    "implicit": {"regularization": 0.01, "alpha": 2.0},
}
FULL: dict[str, Any] = {"n_users": 138_000, "n_items": 20_000, "interactions_per_user": 145.0}
# the same users and items at a half and a quarter of the interactions (issue 15: 5M, 10M, 20M)
SCALES: dict[str, dict[str, Any]] = {
    "5M": {**FULL, "interactions_per_user": 36.0},
    "10M": {**FULL, "interactions_per_user": 72.0},
    "20M": FULL,
}
# DPALS left-hand-side variants timed side by side (``DPALS(lhs=...)``)
LHS_VARIANTS = ("full", "none")
# 1/10 of the users and of the items, so entries per item (what the item-side work per entry
# is amortised over: per-item solves and noise) stay as at full scale
QUICK: dict[str, Any] = {"n_users": 13_800, "n_items": 2_000, "interactions_per_user": 145.0}


def _load(path: str) -> sp.csr_matrix:
    with np.load(path) as f:
        return sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))


def _intervals(t0: float, ends: list[float]) -> list[float]:
    return [round(float(s), 3) for s in np.diff(np.array([t0, *ends]))]


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter: load the matrix, warm the JIT cache, fit, report timings."""
    m = _load(spec["path"])
    ends: list[float] = []
    cpu_ends: list[float] = []

    def tick(*_: Any) -> None:
        ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())

    small: Any = sp.random(60, 40, density=0.2, format="csr", random_state=0)
    out: dict[str, Any] = {"model": spec["model"], "iterations": ITERATIONS}
    load0 = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec["model"] == "implicit":
            import implicit.cpu.als
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1, "blas"):
                imp = implicit.cpu.als.AlternatingLeastSquares(
                    factors=FACTORS, iterations=ITERATIONS, num_threads=THREADS, use_cg=True,
                    random_state=0, **ALS_PARAMS["implicit"],
                )  # fmt: skip
                t0, c0 = time.perf_counter(), time.process_time()
                imp.fit(m, show_progress=False, callback=tick)
        else:
            from privrec.data.interactions import Interactions

            data = Interactions(m, np.arange(m.shape[0]), np.arange(m.shape[1]))
            if spec["model"] == "implicitals":
                from privrec.models.als import ImplicitALS

                ImplicitALS(factors=4, iterations=1).fit(small)  # load the JIT cache
                model: Any = ImplicitALS(
                    factors=FACTORS, iterations=ITERATIONS, num_threads=THREADS,
                    **ALS_PARAMS["implicitals"],
                )  # fmt: skip
            else:
                from privrec.models.dp_als import DPALS
                from privrec.privacy.contribution import sample_per_user
                from privrec.privacy.randomness import seeded_generator

                kw: dict[str, Any] = {"epsilon": 5.0, "delta": 1e-5, "unit": "user", "seed": 0}
                DPALS(**kw, factors=4, iterations=1, head_fraction=1.0).fit(small)
                rng = seeded_generator(0, warn=False)
                sample_per_user(sp.csr_matrix(small), 3, rng)
                s0 = time.perf_counter()
                sample_per_user(m, 100, rng)
                out["sample_per_user_seconds"] = round(time.perf_counter() - s0, 3)
                model = DPALS(
                    **kw,
                    factors=FACTORS,
                    iterations=ITERATIONS,
                    head_fraction=1.0,
                    max_per_user=100,
                    lhs=spec.get("lhs", "full"),
                )
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(data, progress=tick)
    total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    steps = _intervals(t0, ends)
    cpu_steps = _intervals(c0, cpu_ends)
    out.update(
        step_seconds=steps,
        cpu_step_seconds=cpu_steps,
        fit_seconds=round(total, 3),
        load_before=round(load0, 2),
        load_after=round(os.getloadavg()[0], 2),
    )
    if spec["model"].startswith("dpals"):
        steady = float(np.median(steps[1:]))
        out["steady_seconds"] = round(steady, 3)
        out["steady_cpu_seconds"] = round(float(np.median(cpu_steps[1:])), 3)
        out["first_step_seconds"] = steps[0]
        out["setup_seconds"] = round(steps[0] - steady, 3)
        out["final_fold_seconds"] = round(total - (ends[-1] - t0), 3)
        out["final_fold_cpu_seconds"] = round(cpu_total - (cpu_ends[-1] - c0), 3)
    else:
        # the first epoch holds one-off set-up (transposes); the steady epoch is the median
        out["steady_seconds"] = round(float(np.median(steps[1:])), 3)
        out["steady_cpu_seconds"] = round(float(np.median(cpu_steps[1:])), 3)
    return out


def _data(quick: bool, scale: str = "20M") -> tuple[str, dict[str, Any]]:
    from privrec.data.synthetic import synthetic

    shape = QUICK if quick or scale == "quick" else SCALES[scale]
    name = "privrec_synth2m_2k.npz" if quick else f"privrec_synth{scale.lower()}.npz"
    path = Path(tempfile.gettempdir()) / name
    if not path.exists():
        x = synthetic(**shape, seed=0, timestamps=False)
        mm = x.matrix
        np.savez(path, data=mm.data, indices=mm.indices, indptr=mm.indptr, shape=np.array(mm.shape))
        del x, mm
    with np.load(path) as f:
        nnz = int(f["data"].shape[0])
    return str(path), {**shape, "nnz": nnz}


def _has_implicit() -> bool:
    import importlib.util

    return importlib.util.find_spec("implicit") is not None


def _spec(path: str, model: str) -> dict[str, Any]:
    if model.startswith("dpals"):
        lhs = model.removesuffix("_baseline").split("-", 1)[1]
        return {"path": path, "model": "dpals", "lhs": lhs}
    return {"path": path, "model": model}


def run_scale(
    quick: bool, scale: str, rounds: int, baseline_src: str | None = None
) -> dict[str, Any]:
    path, info = _data(quick, scale)
    runs: list[dict[str, Any]] = []
    dp = [f"dpals-{v}" for v in LHS_VARIANTS]
    models = ["implicitals"] + (["implicit"] if _has_implicit() else []) + dp
    models += ["dpals-full_baseline"] if baseline_src else []
    for r in range(rounds):
        for model in models:
            env = {**os.environ, "NUMBA_NUM_THREADS": str(THREADS)}
            if model.endswith("_baseline") and baseline_src:
                env["PYTHONPATH"] = os.pathsep.join([baseline_src, env.get("PYTHONPATH", "")])
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(_spec(path, model))],
                capture_output=True, text=True, env=env, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise RuntimeError(f"{model} child failed")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(model=model, round=r + 1, scale=scale)
            runs.append(row)
            print(f"  [{scale} round {r + 1}] {row}", flush=True)
    summary: dict[str, Any] = {}
    for model in models:
        rows = [x for x in runs if x["model"] == model]
        summary[model] = {
            key: round(float(np.median([x[key] for x in rows])), 3)
            for key in ("steady_seconds", "steady_cpu_seconds")
        }
        if model.startswith("dpals"):
            for key in ("setup_seconds", "final_fold_seconds", "sample_per_user_seconds"):
                summary[model][key] = round(float(np.median([x[key] for x in rows])), 3)
            # ratios against the ImplicitALS epoch of the same round, then their median
            by_round = {x["round"]: x for x in runs if x["model"] == "implicitals"}
            wall = [x["steady_seconds"] / by_round[x["round"]]["steady_seconds"] for x in rows]
            cpu = [
                x["steady_cpu_seconds"] / by_round[x["round"]]["steady_cpu_seconds"] for x in rows
            ]
            summary[model]["ratio_per_round"] = [round(v, 2) for v in wall]
            summary[model]["ratio"] = round(float(np.median(wall)), 3)
            summary[model]["cpu_ratio"] = round(float(np.median(cpu)), 3)
            summary[model]["meets_target"] = bool(
                np.median(wall) <= TARGET and np.median(cpu) <= TARGET
            )
    return {"data": info, "runs": runs, "summary": summary, "als_params": ALS_PARAMS}


def _load_sentence(result: dict[str, Any]) -> str:
    """Say how busy the machine was, from the load averages recorded around every run.

    The benchmark's own threads account for a load of about ``THREADS``; anything well above
    that is another job competing for the cores, which makes wall times (not CPU seconds) swing.
    """
    runs = [r for res in result["scales"].values() for r in res["runs"]]
    peak = max((max(r["load_before"], r["load_after"]) for r in runs), default=0.0)
    if peak <= THREADS + 0.5:
        return (
            f"No other job ran: the 1-minute load average stayed ≤ {peak:.2f} (the benchmark's "
            f"own {THREADS} threads); every run's load is listed below."
        )
    return (
        f"The machine was shared with other jobs (1-minute load average up to {peak:.2f} with "
        f"{THREADS} cores): every run's load is listed below, and the CPU-seconds ratio (same "
        "run) is the steadier estimate."
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# DPALS private step vs ImplicitALS epoch",
        "",
        f"Run {result['date']} ({'quick' if result['quick'] else 'full'} mode, "
        f"{result['rounds']} round(s) per scale, models interleaved within a round). Synthetic "
        f"138,000 users × 20,000 items at three densities; {FACTORS} factors, {THREADS} threads, "
        f"whole catalogue (`head_fraction=1`), B = 100, ε = 5, {ITERATIONS} epochs/steps per run "
        "(the first left out as warm-up); the two ALS implementations at equal parameters "
        f"({ALS_PARAMS}). {_load_sentence(result)}",
        "",
        "| scale | interactions | ImplicitALS CG epoch s (CPU s) | implicit 0.7 CG epoch s "
        "| DPALS step, `lhs` | s (CPU s) | / ImplicitALS wall | / ImplicitALS CPU | ≤ "
        f"{TARGET}× |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for scale, res in result["scales"].items():
        s = res["summary"]
        ials = s["implicitals"]
        imp = s.get("implicit")
        imp_cell = "—" if imp is None else f"{imp['steady_seconds']:.2f}"
        for model in (m for m in s if m.startswith("dpals")):
            d = s[model]
            lhs = model.removeprefix("dpals-")
            lines.append(
                f"| {scale} | {res['data']['nnz']:,} | {ials['steady_seconds']:.2f} "
                f"({ials['steady_cpu_seconds']:.2f}) | {imp_cell} | {lhs} | "
                f"{d['steady_seconds']:.2f} ({d['steady_cpu_seconds']:.2f}) | {d['ratio']:.2f} "
                f"{d['ratio_per_round']} | {d['cpu_ratio']:.2f} | "
                f"{'yes' if d['meets_target'] else 'no'} |"
            )
    lines += [
        "",
        "DPALS one-off costs (not part of the steady step; `lhs=full`): set-up = step 1 minus "
        "the steady step (length histogram absent here: B is given; noisy counts, head, weights, "
        "extra warm-up CG); final fold = exact solve of every user.",
        "",
        "| scale | `lhs` | set-up s | of which `sample_per_user` s | final fold s |",
        "|---|---|---:|---:|---:|",
    ]
    for scale, res in result["scales"].items():
        for model, d in res["summary"].items():
            if model.startswith("dpals"):
                lines.append(
                    f"| {scale} | {model.removeprefix('dpals-')} | {d['setup_seconds']:.2f} | "
                    f"{d['sample_per_user_seconds']:.2f} | {d['final_fold_seconds']:.2f} |"
                )
    lines += [
        "",
        "Every run (load average before → after):",
        "",
        "| scale | round | model | steps/epochs s | CPU s | load |",
        "|---|---:|---|---|---|---|",
    ]
    for res in result["scales"].values():
        for r in res["runs"]:
            lines.append(
                f"| {r['scale']} | {r['round']} | {r['model']} | {r['step_seconds']} "
                f"| {r['cpu_step_seconds']} | {r['load_before']} → {r['load_after']} |"
            )
    lines += ["", "## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="13,800 users × 2,000 items")
    ap.add_argument("--rounds", type=int, default=None, help="repeats (default 2, quick 1)")
    ap.add_argument("--scales", default="5M,10M,20M", help="comma-separated subset of 5M,10M,20M")
    ap.add_argument("--baseline-src", help="also time DPALS importing privrec from this folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    rounds = args.rounds or (1 if args.quick else 2)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "rounds": rounds,
        "machine": machine_info(),
    }
    scales = ["quick"] if args.quick else args.scales.split(",")
    result["scales"] = {
        scale: run_scale(args.quick, scale, rounds, args.baseline_src) for scale in scales
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (out / f"dpals_speed{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"dpals_speed{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
