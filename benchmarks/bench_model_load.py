"""Time to load (and verify) an RDP FederatedMF model file, before and after the fix.

Loading a private model re-derives ε from the stored events (a tampered guarantee is refused).
For a distributed-DP FederatedMF file that took 2–3 s: every round was charged for its own
honest-survivor count, so a 30-round run stored ~30 distinct Poisson-subsampled events, each
composed by dp-accounting's RDP accountant at ~150 orders, most of them fractional (a slow
series). Two changes, measured here side by side in one run on the same trained model:

* **events**: every completed round is now charged its planned worst case, so a run stores two
  events (head selection + one self-composed run) whatever the dropouts;
* **orders**: RDP guarantees with Poisson-sampled events are verified at the integer orders
  FederatedMF's own accountant uses (dense orders only as a fallback).

Rows: the old per-round file verified at dense orders (main before the fix), the old file at
the integer orders, and the new file (what privrec writes now). Each is the median of
``repeats`` full ``load_model`` calls (array checks, verification, smoke test) after a warm-up.

    python benchmarks/bench_model_load.py [--repeats 7] [--quick]

Writes ``benchmarks/results/model_load.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import dp_accounting

from privrec.data import load, synthetic
from privrec.data.shared import shared_dataset
from privrec.federated.accounting import fast_epsilon
from privrec.federated.model import FederatedMF
from privrec.federated.training import FaultModel
from privrec.models import load_model
from privrec.privacy.accounting import AccountantKind
from privrec.privacy.events import SpentEvent, total_event
from privrec.privacy.guarantee import PrivacyGuarantee

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, machine_markdown

RESULTS = Path(__file__).parent / "results"


def _data(quick: bool) -> tuple[Any, str]:
    path = None if quick else shared_dataset("ml-100k")
    if path is None or not (path / "u.data").exists():
        return synthetic(n_users=3000, n_items=300, seed=0), "synthetic 3,000 × 300"
    return load(path / "u.data"), "ml-100k"


def _per_round_guarantee(model: FederatedMF, srv_history: list[dict[str, Any]], enc: Any, q: float,
                         g: PrivacyGuarantee) -> PrivacyGuarantee:  # fmt: skip
    """The same run's guarantee as main recorded it: each round charged its honest survivors."""
    spent = [s for s in g.spent_events if not s.label.startswith("round")]
    rounds = [h for h in srv_history if not h.get("aborted")]
    for h in rounds:
        inner = enc.plan.dp_event(int(h["honest_survivors"]))
        spent.append(
            SpentEvent(
                f"round {h['round']}",
                dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, inner), 1),
            )
        )
    eps = fast_epsilon(total_event(spent), g.delta, AccountantKind.RDP)
    return g.model_copy(update={"epsilon": eps, "events": tuple(s.to_dict() for s in spent)})


def _time_load(path: Path, repeats: int, dense: bool = False) -> float:
    def once() -> float:
        t = time.perf_counter()
        m = load_model(path, verify=not dense)
        if dense:  # main's verification: ε recomputed at dp-accounting's default orders
            m.guarantee_.epsilons_at([m.guarantee_.delta, m.guarantee_.delta * 10,
                                      m.guarantee_.delta / 10], dense=True)  # fmt: skip
        return time.perf_counter() - t

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    warnings.simplefilter("ignore")
    data, label = _data(args.quick)
    rounds = 10 if args.quick else 30
    model = FederatedMF(epsilon=2.0, delta=1e-6, factors=8, rounds=rounds, clients_per_round=300,
                        head_items=200)  # fmt: skip
    from privrec.federated.training import FederatedSimulation

    sim = FederatedSimulation(model.config(), data.matrix, faults=FaultModel(dropout=0.1, seed=1))
    sim.run()
    srv = sim.server
    new = FederatedMF.from_server(srv, data.item_ids)
    old = FederatedMF.from_server(srv, data.item_ids)
    old.guarantee_ = _per_round_guarantee(old, srv.history, srv.encoder(), srv.q, new.guarantee_)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        p_new, p_old = new.save(Path(tmp) / "new.npz"), old.save(Path(tmp) / "old.npz")
        for name, path, dense in (
            ("per-round events, dense orders (main before)", p_old, True),
            ("per-round events, integer orders", p_old, False),
            ("worst-case events, integer orders (now)", p_new, False),
        ):
            g = load_model(path).guarantee_
            rows.append({"file": name, "events": len(g.events), "epsilon": g.epsilon,
                         "load_s": _time_load(path, repeats, dense)})  # fmt: skip
    load = os.getloadavg()[0]
    out = {"dataset": label, "rounds": rounds, "repeats": repeats, "rows": rows,
           "load_average": load, "machine": machine_info()}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_load.json").write_text(json.dumps(out, indent=1))
    md = [
        "# Loading an RDP FederatedMF file (load_model, guarantee verified)",
        "",
        f"{label}, distributed DP, {rounds} rounds, 10% dropout; median of {repeats} loads after "
        "a warm-up. ε differs between the rows: the per-round file charges each round its own "
        "honest survivors (tighter, but it stores a function of every cohort's size). The "
        f"machine was shared with other work (1-minute load average {load:.1f} at the end).",
        "",
        "| file | stored events | ε | load (s) |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['file']} | {r['events']} | {r['epsilon']:.4f} | {r['load_s']:.3f} |"
            for r in rows
        ),
        "",
        machine_markdown(out["machine"]),
    ]
    (RESULTS / "model_load.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
