"""Time a ledger charge adds to a training, on SQLite and PostgreSQL (target < 50 ms / < 100 ms).

For each backend: a fresh ledger, ml-1m (or synthetic data when the shared set is absent) loaded
through a policy, then ``repeats`` trainings of DPALS through ``Ledger.train`` after a warm-up.
Inside each training the time spent in ``fit`` and in ``save`` is measured; the charge's cost is
the rest — dataset lookup, content-hash check, the write-ahead reservation (composition of every
earlier charge), the artifact hash, the commit and its audit rows. A plain ``fit`` + ``save``
of the same model is timed alongside for reference. Also times a bare query charge
(reserve + commit) with a ledger already holding the trainings' charges.

    python benchmarks/bench_ledger.py [--repeats 15] [--quick]

Writes ``benchmarks/results/ledger.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dp_accounting

from privrec.data import load, synthetic
from privrec.data.shared import shared_dataset
from privrec.governance import Ledger
from privrec.governance.db import dispose_engines
from privrec.governance.policy import policy_from_dict
from privrec.models.dp_als import DPALS
from privrec.privacy.events import SpentEvent

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, machine_markdown

RESULTS = Path(__file__).parent / "results"


def _data(quick: bool) -> tuple[Any, str]:
    path = None if quick else shared_dataset("ml-100k")
    if path is None or not (path / "u.data").exists():
        return synthetic(n_users=6000, n_items=3700, seed=0), "synthetic 6,000 × 3,700"
    return load(path / "u.data"), "ml-100k"


def _model() -> DPALS:
    return DPALS(epsilon=1.0, delta=1e-7, unit="user", factors=32)


def bench_backend(url: str, data: Any, repeats: int, work: Path) -> dict[str, Any]:
    owner, _ = Ledger.init(url, owner="olga")
    policy = {"purpose": "bench", "unit": "user", "budget": {"epsilon": 1e6, "delta": 1e-6}}
    owner.set_policy("ml", policy_from_dict(policy))
    ann = Ledger.connect(url, owner.create_key("ann", "analyst"))
    g = ann.load("ml", data)
    overhead, fits, saves, totals, plain = [], [], [], [], []
    for i in range(repeats + 1):
        # plain fit + save, for reference
        m = _model()
        t0 = time.perf_counter()
        m.fit(g.interactions)
        m.save(work / f"plain{i}.npz")
        plain.append(time.perf_counter() - t0)
        # through the ledger, with fit and save timed inside
        m = _model()
        parts = {"fit": 0.0, "save": 0.0}

        def timed_fit(model: Any, x: Any, parts: dict[str, float] = parts) -> None:
            t = time.perf_counter()
            model.fit(x)
            parts["fit"] = time.perf_counter() - t

        save = m.save

        def timed_save(
            *a: Any, parts: dict[str, float] = parts, save: Any = save, **k: Any
        ) -> Path:
            t = time.perf_counter()
            out: Path = save(*a, **k)
            parts["save"] = time.perf_counter() - t
            return out

        m.save = timed_save  # type: ignore[method-assign]
        t0 = time.perf_counter()
        ann.train(m, g, output=work / f"m{i}.npz", fit=timed_fit)
        total = time.perf_counter() - t0
        if i == 0:
            continue  # warm-up
        totals.append(total)
        fits.append(parts["fit"])
        saves.append(parts["save"])
        overhead.append(total - parts["fit"] - parts["save"])
    query = []
    ev = [SpentEvent("count query", dp_accounting.GaussianDpEvent(50.0))]
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        c = ann.reserve("ml", ev, idempotency_key=f"q{i}")
        ann.commit(c, result={"answer": i})
        if i:
            query.append(time.perf_counter() - t0)
    verify = owner.verify_audit_log()
    dispose_engines()
    med = statistics.median
    return {
        "charge_overhead_ms_median": 1000 * med(overhead),
        "charge_overhead_ms_min": 1000 * min(overhead),
        "fit_s_median": med(fits),
        "save_ms_median": 1000 * med(saves),
        "ledger_train_s_median": med(totals),
        "plain_fit_save_s_median": med(plain[1:]),
        "query_charge_ms_median": 1000 * med(query),
        "charges_in_ledger": 2 * repeats + 2,
        "audit_rows": verify.rows,
        "audit_ok": verify.ok,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    data, label = _data(args.quick)
    out: dict[str, Any] = {"dataset": label, "repeats": repeats, "model": "DPALS(ε=1, 32 factors)"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out["sqlite"] = bench_backend(f"sqlite:///{work}/privrec.db", data, repeats, work)
        from privrec.governance import pgcluster

        cluster = pgcluster.start()
        if isinstance(cluster, str):
            out["postgresql"] = {"skipped": cluster}
        else:
            try:
                cluster.sql("CREATE DATABASE bench")
                out["postgresql"] = bench_backend(cluster.url("bench"), data, repeats, work)
            finally:
                pgcluster.stop(cluster)
    out["machine"] = machine_info()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ledger.json").write_text(json.dumps(out, indent=2))
    rows = []
    for backend, target in (("sqlite", 50), ("postgresql", 100)):
        r = out[backend]
        if "skipped" in r:
            rows.append(f"| {backend} | skipped: {r['skipped']} | | | | | |")
            continue
        rows.append(
            f"| {backend} | **{r['charge_overhead_ms_median']:.1f}** ({r['charge_overhead_ms_min']:.1f}) "
            f"| < {target} | {r['fit_s_median']:.2f} | {r['save_ms_median']:.0f} "
            f"| {r['plain_fit_save_s_median']:.2f} | {r['query_charge_ms_median']:.1f} |"
        )
    md = [
        "# Ledger: time a charge adds to a training",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {label}; {out['model']}; "
        f"medians of {repeats} trainings after one warm-up. The charge's cost is the training time "
        "through `Ledger.train` minus the time inside `fit` and `save`: dataset lookup, content-hash "
        "check, write-ahead reservation (composing every earlier charge), artifact hash, commit and "
        "audit rows. The PostgreSQL cluster is a throw-away local one (fsync off) on 127.0.0.1.",
        "",
        "| backend | charge overhead ms, median (min) | target ms | fit s | save ms | plain fit+save s | query charge ms (reserve+commit) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Machine shared with other engineers' work while this ran (2 cores).",
        "",
        machine_markdown(out["machine"]),
    ]
    (RESULTS / "ledger.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
