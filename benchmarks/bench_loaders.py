"""Loader speed: this checkout against another git ref (default ``main``) and raw pandas.

Usage::

    python benchmarks/bench_loaders.py               # against main, 3 rounds x 5 repeats
    python benchmarks/bench_loaders.py --ref HEAD~3 --rounds 5

Each side runs in its own subprocess (the reference's ``src`` exported with
``git archive`` and put first on ``PYTHONPATH``): one subprocess per (file,
side, round), one warm-up load, then ``--repeats`` timed loads. The sides
alternate file by file, and which side goes first alternates from round to
round, so that load on a shared machine hits both alike. Reported: the median
over all timed loads. The floor is ``pandas.read_csv`` of the same file with the
same separator into a DataFrame (no checks, no matrix), timed the same way in
the current side's process. Files come from ``../shared/data``; missing ones
are skipped. Writes ``results/loaders.json`` and ``results/loaders.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402

DATA = REPO.parent / "shared" / "data"
#: (label, file under DATA, loader name in privrec.data, kwargs, pandas.read_csv kwargs)
CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "ml-100k u.data (ml-100k)",
        "ml-100k/u.data",
        "load_ml100k",
        {},
        {"sep": "\t", "header": None},
    ),
    (
        "ml-1m-implicit-r3 train.txt (user-item lists)",
        "ml-1m-implicit-r3/train.txt",
        "load_user_item_lists",
        {},
        {},
    ),
    (
        "ml-1m-implicit-r3 train.txt (read_user_item_lists)",
        "ml-1m-implicit-r3/train.txt",
        "read_user_item_lists",
        {},
        {},
    ),
    (
        "ml-latest-small ratings.csv (movielens-csv)",
        "ml-latest-small/ratings.csv",
        "load_movielens_csv",
        {},
        {"sep": ","},
    ),
    (
        "ml-latest-small ratings.csv (generic csv)",
        "ml-latest-small/ratings.csv",
        "load_csv",
        {
            "user_col": "userId",
            "item_col": "movieId",
            "value_col": "rating",
            "timestamp_col": "timestamp",
        },
        {"sep": ","},
    ),
    (
        "movietweetings-100k ratings.dat",
        "movietweetings-100k/ratings.dat",
        "load_movietweetings",
        {},
        {"sep": ":", "header": None},
    ),
    (
        "hetrec2011-lastfm-2k user_artists.dat",
        "hetrec2011-lastfm-2k/user_artists.dat",
        "load_lastfm",
        {},
        {"sep": "\t"},
    ),
]


def _worker(repeats: int, floor: bool, only: str | None) -> dict[str, Any]:
    """Time every case (or the case labelled ``only``) in this process (run in a subprocess)."""
    import warnings

    import pandas as pd

    import privrec.data as pdata

    out: dict[str, Any] = {"privrec": str(Path(pdata.__file__).resolve().parents[2])}
    for label, rel, name, kw, pd_kw in CASES:
        path = DATA / rel
        if not path.exists() or (only is not None and label != only):
            continue
        fn = getattr(pdata, name)
        times, cpu = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(path, **kw)
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                fn(path, **kw)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        entry: dict[str, Any] = {"times": times, "cpu": cpu}
        if floor and pd_kw:
            pd.read_csv(path, engine="c", **pd_kw)
            ft = []
            for _ in range(repeats):
                t = time.perf_counter()
                pd.read_csv(path, engine="c", **pd_kw)
                ft.append(time.perf_counter() - t)
            entry["floor"] = ft
        out[label] = entry
    return out


def _export(ref: str, dest: Path) -> Path:
    """``src`` of ``ref`` (a git ref) unpacked under ``dest``."""
    archive = dest / "src.tar"
    subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), ref, "src"],
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def _run(src: Path, repeats: int, floor: bool, only: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, __file__, "--worker", "--repeats", str(repeats), "--only", only]
    if floor:
        cmd.append("--floor")
    res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="main", help="git ref to compare with (default: main)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.repeats, args.floor, args.only)))
        return

    load_start = os.getloadavg()[0]
    sides: dict[str, dict[str, list[float]]] = {
        "ref": {},
        "current": {},
        "floor": {},
        "ref_cpu": {},
        "current_cpu": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ref_src = _export(args.ref, Path(tmp))
        order = [("ref", ref_src), ("current", REPO / "src")]
        labels = [c[0] for c in CASES if (DATA / c[1]).exists()]
        for r in range(args.rounds):
            for label in labels:
                for side, src in order if r % 2 == 0 else order[::-1]:
                    res = _run(src, args.repeats, side == "current", label)
                    assert Path(res["privrec"]).resolve() == src.resolve(), res["privrec"]
                    entry = res[label]
                    sides[side].setdefault(label, []).extend(entry["times"])
                    sides[f"{side}_cpu"].setdefault(label, []).extend(entry["cpu"])
                    if "floor" in entry:
                        sides["floor"].setdefault(label, []).extend(entry["floor"])
    load_end = os.getloadavg()[0]

    rows = []
    for label, *_ in CASES:
        if label not in sides["current"]:
            continue
        ref_ms = 1e3 * statistics.median(sides["ref"][label])
        cur_ms = 1e3 * statistics.median(sides["current"][label])
        ref_cpu = 1e3 * statistics.median(sides["ref_cpu"][label])
        cur_cpu = 1e3 * statistics.median(sides["current_cpu"][label])
        floor = sides["floor"].get(label)
        rows.append(
            {
                "case": label,
                "ref_ms": round(ref_ms, 1),
                "current_ms": round(cur_ms, 1),
                "change": round(cur_ms / ref_ms - 1, 3),
                "ref_cpu_ms": round(ref_cpu, 1),
                "current_cpu_ms": round(cur_cpu, 1),
                "cpu_change": round(cur_cpu / ref_cpu - 1, 3),
                "pandas_read_csv_ms": None
                if not floor
                else round(1e3 * statistics.median(floor), 1),
                "n": len(sides["current"][label]),
            }
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    result = {
        "run": stamp,
        "ref": args.ref,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "load_average_1min": [round(load_start, 2), round(load_end, 2)],
        "rows": rows,
        "machine": machine_info(),
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "loaders.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Loader speed: this branch vs `{args.ref}`",
        "",
        f"Run {stamp}. Median of {args.rounds} rounds x {args.repeats} timed loads per side, each "
        "file in a fresh process per side after one warm-up load, sides alternating file by file "
        "(and which goes first, round by round); the floor is `pandas.read_csv` of the same "
        "file into a DataFrame without any check. 1-minute load average at start and end: "
        f"{result['load_average_1min']} on a shared machine.",
        "",
        "CPU time (`time.process_time`, the loaders run on one thread) is not inflated by other "
        "jobs competing for the cores, so it is the fairer comparison on a busy machine.",
        "",
        f"| file (loader) | `{args.ref}` wall ms | this branch wall ms | change | "
        f"`{args.ref}` CPU ms | this branch CPU ms | change | pandas.read_csv wall ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        floor_ms = "–" if r["pandas_read_csv_ms"] is None else f"{r['pandas_read_csv_ms']:.1f}"
        lines.append(
            f"| {r['case']} | {r['ref_ms']:.1f} | {r['current_ms']:.1f} | "
            f"{100 * r['change']:+.0f}% | {r['ref_cpu_ms']:.1f} | {r['current_cpu_ms']:.1f} | "
            f"{100 * r['cpu_change']:+.0f}% | {floor_ms} |"
        )
    lines += ["", machine_markdown(result["machine"]), ""]
    (out / "loaders.md").write_text("\n".join(lines))
    print("\n".join(lines[:-2]))


if __name__ == "__main__":
    main()
