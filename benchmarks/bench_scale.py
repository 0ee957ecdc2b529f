"""DPALS on Ray vs one process, and memory at 100M interactions (issue 16).

Synthetic implicit data (Zipf item popularity, per-user lengths Poisson around nnz/users) is
written straight into user-sharded Parquet files (never whole in memory), outside the repo
(``--dir``, default /tmp). Two measurements:

* ``--size 20m`` (400k users × 50k items): DPALS step time on a local Ray cluster with 2
  workers vs the single-process model on the same data, same parameters, in one run; each
  side's steps after the first (warm-up: the first step has 8 CG iterations, later ones 4) are
  timed from the ``progress`` callback, median reported, plus wall and CPU seconds.
* ``--size 100m`` (2M users × 50k items): peak resident memory of each Ray worker and of the
  driver for a Ray fit (one private step: peak memory per step does not grow with steps).

The machine is shared (2 cores, other engineers' jobs): run with ``nice -n 10``; the load seen
is recorded. Results: ``benchmarks/results/scale.{json,md}`` (merged across sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = {"20m": (400_000, 50_000, 20_000_000), "100m": (2_000_000, 50_000, 100_000_000)}
QUICK = (20_000, 5_000, 1_000_000)


def write_synthetic(out: Path, n_users: int, n_items: int, nnz: int, shards: int) -> None:
    """User-sharded Parquet of ~``nnz`` distinct (user, item) pairs, shard by shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from privrec.engine.parquet import shard_path, user_shard, write_manifest

    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    users = np.arange(n_users, dtype=np.int64)
    shard_of = user_shard(users, shards)
    lengths = np.maximum(1, rng.poisson(nnz / n_users, n_users))
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    cdf = np.cumsum(p / p.sum())
    perm = rng.permutation(n_items)
    for s in range(shards):
        mine = users[shard_of == s]
        n = lengths[mine]
        u = np.repeat(mine, n)
        i = perm[np.minimum(np.searchsorted(cdf, rng.random(len(u))), n_items - 1)]
        key = np.unique(u * n_items + i)  # distinct pairs, sorted by user
        pq.write_table(
            pa.table({"user": key // n_items, "item": key % n_items}),
            shard_path(out, s),
        )
    write_manifest(out, shards, ["user", "item"])


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _timed_fit(fit: Any) -> dict[str, Any]:
    marks: list[float] = []
    t0, c0 = time.perf_counter(), _cpu()
    model = fit(lambda done, total: marks.append(time.perf_counter()))
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    steps = np.diff(marks).tolist()
    return {"model": model, "wall_s": wall, "driver_cpu_s": cpu, "step_s": steps,
            "median_step_s": statistics.median(steps) if steps else None}  # fmt: skip


def params(iterations: int) -> dict[str, Any]:
    return dict(epsilon=1.0, delta=1e-8, unit="user", factors=32, iterations=iterations,
                head_fraction=1.0)  # fmt: skip


def run_20m(data: Path, iterations: int, repeats: int) -> dict[str, Any]:
    """Ray and single-process fits interleaved ``repeats`` times; medians over all timed steps."""
    import ray

    from privrec.engine import ParquetSource, RayEngine
    from privrec.models import DPALS

    src = ParquetSource.open(data)
    t0 = time.perf_counter()
    whole = src.to_interactions()
    load_s = time.perf_counter() - t0
    runs: dict[str, list[dict[str, Any]]] = {"ray": [], "single": []}
    with RayEngine(num_workers=2) as engine:
        for _ in range(repeats):
            before = engine.last_group.actors if engine.last_group is not None else []
            cpu0 = sum(ray.get([a.cpu_seconds.remote() for a in before])) if before else 0.0
            r = _timed_fit(lambda cb: engine.fit(DPALS(**params(iterations)), src, progress=cb))
            group = engine.last_group
            assert group is not None
            r.pop("model")
            r["workers_cpu_s"] = sum(ray.get([a.cpu_seconds.remote() for a in group.actors])) - cpu0
            r["bytes_reduced"] = group.bytes_reduced
            r["users"], r["nnz"] = engine.last_sizes
            runs["ray"].append(r)
            r = _timed_fit(lambda cb: DPALS(**params(iterations)).fit(whole, progress=cb))
            r.pop("model")
            runs["single"].append(r)
    out: dict[str, Any] = {"runs": runs, "single_load_s": load_s}
    for side in ("ray", "single"):
        steps = [s for r in runs[side] for s in r["step_s"]]
        out[f"{side}_median_step_s"] = statistics.median(steps)
        out[f"{side}_median_wall_s"] = statistics.median(r["wall_s"] for r in runs[side])
    out["ray_median_cpu_s"] = statistics.median(
        r["driver_cpu_s"] + r["workers_cpu_s"] for r in runs["ray"]
    )
    out["single_median_cpu_s"] = statistics.median(r["driver_cpu_s"] for r in runs["single"])
    out["ratio_median_step"] = out["ray_median_step_s"] / out["single_median_step_s"]
    out["ratio_cpu"] = out["ray_median_cpu_s"] / out["single_median_cpu_s"]
    out["nnz"] = runs["ray"][0]["nnz"]
    out["users_with_data"] = runs["ray"][0]["users"]
    return out


def run_100m(data: Path) -> dict[str, Any]:
    import ray

    from privrec.engine import ParquetSource, RayEngine
    from privrec.models import DPALS

    src = ParquetSource.open(data)
    with RayEngine(num_workers=2, object_store_memory=1 << 30) as engine:
        r = _timed_fit(lambda cb: engine.fit(DPALS(**params(1)), src, progress=cb))
        group = engine.last_group
        assert group is not None
        peaks = ray.get([a.peak_rss.remote() for a in group.actors])
        out = {k: v for k, v in r.items() if k != "model"}
        out["worker_peak_rss_gb"] = [p / 1e9 for p in peaks]
        out["bytes_reduced"] = group.bytes_reduced
        out["users_with_data"], out["nnz"] = engine.last_sizes
    out["driver_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=["20m", "100m"], default="20m")
    ap.add_argument("--quick", action="store_true", help="1M interactions, smoke run")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/privrec-bench-scale"))
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the shards afterwards")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    sys_path = str(HERE)
    if sys_path not in os.sys.path:  # type: ignore[attr-defined]
        os.sys.path.insert(0, sys_path)  # type: ignore[attr-defined]
    from machine import machine_info  # type: ignore[import-not-found]

    n_users, n_items, nnz = QUICK if args.quick else SIZES[args.size]
    data = args.dir / (f"{args.size}{'-quick' if args.quick else ''}")
    if data.exists():
        shutil.rmtree(data)
    free = shutil.disk_usage(args.dir.parent if not args.dir.exists() else args.dir).free
    print(f"free disk {free / 1e9:.0f} GB; writing ~{nnz / 1e6:.0f}M interactions to {data}")
    t0 = time.perf_counter()
    write_synthetic(data, n_users, n_items, nnz, 32)
    gen_s = time.perf_counter() - t0
    load = os.getloadavg()
    try:
        res = run_20m(data, args.iterations, args.repeats) if args.size == "20m" else run_100m(data)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    key = args.size + ("-quick" if args.quick else "")
    res |= {"users": n_users, "items": n_items, "target_nnz": nnz, "generate_s": gen_s,
            "load_before": load, "load_after": os.getloadavg()}  # fmt: skip
    path = HERE / "results" / "scale.json"
    allres = json.loads(path.read_text()) if path.exists() else {}
    allres[key] = res
    allres["machine"] = machine_info()
    allres["note"] = "machine shared with other engineers (2 cores); run with nice -n 10"
    path.write_text(json.dumps(allres, indent=1, default=float) + "\n")
    print(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
