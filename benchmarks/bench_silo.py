"""Cross-silo DPALS on ml-1m-implicit-r3 split into 3 silos by user, against central DPALS.

Usage::

    python benchmarks/bench_silo.py            # ε ∈ {1, 5}
    python benchmarks/bench_silo.py --quick    # ε = 5 only

Both models use DPALS's defaults (32 factors) at the same (ε, δ = 1e-6), trained on
train + valid and evaluated on test (Recall@20, NDCG@20). Central DPALS accounts with PLD;
the cross-silo model with RDP and discrete Gaussians, and each of the two servers adds a full
noise share (see docs/cross_silo.md), so some utility loss is expected and is what this
measures. The cross-silo run is in one process (servers and silos in threads, real loopback
TCP with the AES-GCM channel) on a shared 2-core machine: silo compute competes for the same
cores, and loopback hides network latency.

Time per private step: ``round`` is the driver's wall time from sending the step to holding
both partial sums; ``silo compute`` the slowest silo's local statistics; the secure
aggregation overhead is ``round - silo compute`` (encoding, sharing, AES-GCM, transfer,
server sums and noise), reported as a fraction of the whole step (round + item solve).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "ml-1m-implicit-r3"
K = 20
N_SILOS = 3


class _Factors:
    """``recommend`` over released item factors and per-silo user factors (head items only)."""

    def __init__(
        self, users: np.ndarray, items: np.ndarray, head: np.ndarray, train: sp.csr_matrix
    ) -> None:
        self.users, self.items, self.train = users, items, train
        self.unreleased = np.setdiff1d(np.arange(items.shape[0]), head)

    def recommend(
        self, user_ids: np.ndarray, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        from privrec.models.ranking import mask_seen, top_k

        idx = np.atleast_1d(np.asarray(user_ids))
        scores = self.users[idx] @ self.items.T
        scores[:, self.unreleased] = -np.inf
        if exclude_seen:
            mask_seen(scores, sp.csr_matrix(self.train[idx]))
        return top_k(scores, k)

    def recommend_history(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("weak generalisation only")


def _metrics(model: Any, split: Any) -> dict[str, float]:
    from privrec.evaluation import evaluate

    res = evaluate(model, split, k=(K,), groups=None, metrics=("recall", "ndcg"))
    table: dict[Any, Any] = res.table.to_dict()
    return {"recall@20": float(table[K]["recall"]), "ndcg@20": float(table[K]["ndcg"])}


def run(epsilons: tuple[float, ...]) -> list[dict[str, Any]]:
    from privrec.evaluation import load_split
    from privrec.models.dp_als import DPALS
    from privrec.secure.silo import SiloConfig, run_local

    split = load_split(DATA, merge_valid_into_train=True)
    x = sp.csr_matrix(split.train.matrix)
    cuts = np.linspace(0, x.shape[0], N_SILOS + 1).astype(int)
    silos = [sp.csr_matrix(x[a:b]) for a, b in itertools.pairwise(cuts)]
    rows: list[dict[str, Any]] = []
    for eps in epsilons:
        central = DPALS(epsilon=eps, delta=1e-6, unit="user")
        t0 = time.perf_counter()
        central.fit(split.train)
        fit_s = time.perf_counter() - t0
        row = {"epsilon": eps, "model": "central DPALS (PLD)", **_metrics(central, split)}
        row.update(fit_seconds=round(fit_s, 2), steps=central.iterations_)
        rows.append(row)
        print(row, flush=True)

        config = SiloConfig(epsilon=eps, delta=1e-6, n_items=x.shape[1])
        t0 = time.perf_counter()
        result = run_local(silos, config, timeout=120)
        fit_s = time.perf_counter() - t0
        # the same step computed centrally (no sharing, no channel): statistics on the union
        # at the released factors, plus the driver's item solve
        from privrec.privacy.contribution import adaptive_weights
        from privrec.secure.silo import binary, silo_statistics

        xh = binary(x[:, result.head_items])
        w = adaptive_weights(
            xh, np.maximum(result.noisy_counts[result.head_items], 1.0), 0.5, 100.0
        )
        y = result.item_factors[result.head_items].astype(np.float64)
        kw = {"alpha0": config.alpha0, "user_regularization": 0.1, "clip_norm": 0.3}
        silo_statistics(xh, w, y, **kw)  # warm-up
        t0 = time.perf_counter()
        silo_statistics(xh, w, y, **kw)
        central_step = time.perf_counter() - t0 + float(np.median(result.solve_seconds))
        users = np.vstack([result.user_factors(m, config) for m in silos])
        model = _Factors(users, result.item_factors, result.head_items, x)
        rounds = result.round_seconds[1:]  # the first release is the counts
        compute = [max(s[i + 1] for s in result.silo_seconds) for i in range(len(rounds))]
        steps = [r + s for r, s in zip(rounds, result.solve_seconds, strict=True)]
        overhead = [r - c for r, c in zip(rounds, compute, strict=True)]
        row = {
            "epsilon": eps,
            "model": f"cross-silo DPALS, {N_SILOS} silos (RDP, 2 servers)",
            **_metrics(model, split),
            "fit_seconds": round(fit_s, 2),
            "steps": len(rounds),
            "achieved_epsilon": round(result.guarantee.epsilon, 4),
            "head_items": len(result.head_items),
            "step_seconds": [round(v, 3) for v in steps],
            "silo_compute_seconds": [round(v, 3) for v in compute],
            "secure_overhead_seconds": [round(v, 3) for v in overhead],
            "secure_overhead_fraction": round(float(np.median(overhead) / np.median(steps)), 3),
            "central_step_seconds": round(central_step, 3),
            "added_vs_central_step": round(float(np.median(steps)) / central_step - 1.0, 3),
            "bytes_sent_by_driver": result.bytes_sent,
        }
        rows.append(row)
        print(row, flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Cross-silo DPALS vs central DPALS (ml-1m-implicit-r3, 3 silos by user)",
        "",
        f"Run {result['date']}. δ = 1e-6, 32 factors, DPALS defaults; test Recall/NDCG@20.",
        "",
        "| ε | model | Recall@20 | NDCG@20 | steps | fit s | step s (same step central) "
        "| round − silo compute, share of step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        frac = r.get("secure_overhead_fraction")
        lines.append(
            f"| {r['epsilon']:g} | {r['model']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | "
            f"{r['steps']} | {r['fit_seconds']:.1f} | "
            + (
                "— | —"
                if frac is None
                else f"{np.median(r['step_seconds']):.2f} ({r['central_step_seconds']:.2f}) | "
                f"{100 * frac:.0f}%"
            )
            + " |"
        )
    lines += [
        "",
        "Step s: median wall time of a cross-silo private step (driver sends the step → both "
        "partials in → item solve). In parentheses: the same step computed centrally on this "
        "machine (statistics of the union at the released factors + the item solve), so the "
        "difference is what secret sharing, the channel and the servers add. Last column: "
        "round time minus the slowest silo's local computation, as a share of the step. All "
        "roles share the same 2 cores (threads, loopback TCP).",
        "",
        machine_markdown(result["machine"]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ε = 5 only")
    args = ap.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} not found")
        return
    eps = (5.0,) if args.quick else (1.0, 5.0)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine_info(),
        "rows": run(eps),
    }
    out = HERE / "results"
    suffix = "-quick" if args.quick else ""
    (out / f"silo{suffix}.json").write_text(json.dumps(result, indent=2))
    (out / f"silo{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
