"""Cross-silo DPALS and DPEASE on ml-1m-implicit-r3 split into 3 silos by user, against central.

Usage::

    python benchmarks/bench_silo.py            # ε ∈ {1, 5}
    python benchmarks/bench_silo.py --quick    # ε = 5 only

Utility: each model at the same (ε, δ = 1e-6), trained on train + valid and evaluated on test
(Recall@20, NDCG@20). Every model runs with its defaults — the cross-silo configs share
central DPALS's and DPEASE's (count_sample = B, SNR head rules, noise-scaled ridges, C = 10,
popularity blend of the released counts at scoring); the noise-derived ones see the noise each
path reveals. Central models account with PLD; the cross-silo ones with RDP and discrete
Gaussians, and each of the two servers adds a full noise share (docs/cross_silo.md), so some
utility loss is expected and is what this measures.

Time of the secure path per ALS step, all in one run (each server and silo in its own
process, the driver in this one; real loopback TCP with the AES-GCM channel; one shared 2-core
machine; the cross-silo "fit s" is the releases plus the solves, without process start-up):

* **central step**: the same step computed centrally — the statistics of the union of the
  silos at the released factors plus the driver's item solve (median of 3);
* **secure path added**, two clocks. *Wall*: the driver's round (jobs out → both partial
  sums in and decoded) minus the slowest silo's own computation, i.e. everything else on the
  step's critical path: job delivery, fixed-point encoding, share split, AES-GCM, transfer,
  server sums, any wait for noise, decoding. *CPU*: the thread CPU time of that work in the
  slowest silo (encode, split, seal, send), the slower server (receive/decrypt, sum, send)
  and the driver (receive/decrypt, decode), each timed inside its role; CPU time is not
  inflated by the other roles (and other jobs) competing for the cores. The servers'
  discrete-Gaussian noise is drawn in the background while the shares arrive, and ahead of
  every repeated plan; ``all-in`` adds each server's whole draw as if it were on the path.
* the share of the step: ``added / (central step + added)``.

The wall-clock step (round + solve) is reported too; on one 2-core box it also contains three
silos and two servers competing for the cores, which separate machines would not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
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


class _Scores:
    """``recommend`` over a score function of user histories (weak generalisation)."""

    def __init__(self, score: Callable[[sp.csr_matrix], np.ndarray], train: sp.csr_matrix) -> None:
        self.score, self.train = score, train

    def recommend(
        self, user_ids: np.ndarray, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        from privrec.models.ranking import mask_seen, top_k

        idx = np.atleast_1d(np.asarray(user_ids))
        rows = sp.csr_matrix(self.train[idx])
        scores = np.array(self.score(rows), dtype=np.float32, copy=True)
        if exclude_seen:
            mask_seen(scores, rows)
        return top_k(scores, k)

    def recommend_history(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("weak generalisation only")


def _role(kind: str, keys: str, name: str, matrix: Any, config: Any, queue: Any) -> None:
    """One server or silo in its own process (spawned): run the session, report timings."""
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import AggregationServer, Silo

    ident, roster = (
        Identity.load(Path(keys) / f"{name}.key"),
        Roster.load(Path(keys) / "roster.json"),
    )
    role: Any = (
        AggregationServer(ident, roster, timeout=300, config=config)
        if kind == "server"
        else Silo(ident, roster, matrix, timeout=300, config=config)
    )
    try:
        role.run()
    finally:
        queue.put((name, role.timings))


def run_processes(matrices: list[sp.csr_matrix], config: Any) -> Any:
    """The protocol with each server and silo in its own process (as on separate machines,
    but sharing this machine's cores) and the driver in this one; returns the driver's result
    with every role's timings."""
    import multiprocessing as mp
    import tempfile

    from privrec.secure.silo import make_driver, setup_keys

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as keys:
        roster, ids = setup_keys(keys, len(matrices))
        names = ["server0", "server1"] + [f"silo{i + 1}" for i in range(len(matrices))]
        procs = [
            ctx.Process(
                target=_role,
                args=(
                    "server" if n.startswith("server") else "silo",
                    keys,
                    n,
                    None if n.startswith("server") else matrices[int(n[4:]) - 1],
                    config,
                    queue,
                ),
            )
            for n in names
        ]
        for p in procs:
            p.start()
        try:
            driver = make_driver(ids["driver"], roster, config, timeout=300)
            result = driver.train()
            got = dict(queue.get(timeout=120) for _ in names)
        finally:
            for p in procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
    result.timings = {
        "driver": list(driver.timings),
        "servers": [got["server0"], got["server1"]],
        "silos": [got[n] for n in names[2:]],
    }
    return result


def _metrics(model: Any, split: Any) -> dict[str, float]:
    from privrec.evaluation import evaluate

    res = evaluate(model, split, k=(K,), groups=None, metrics=("recall", "ndcg"))
    table: dict[Any, Any] = res.table.to_dict()
    return {"recall@20": float(table[K]["recall"]), "ndcg@20": float(table[K]["ndcg"])}


def _secure_parts(timings: dict[str, Any], release: int, cpu: bool) -> dict[str, float]:
    """Seconds the secure path adds to one release (module docstring).

    Wall (``cpu=False``): the driver's round (jobs out → both partials in and decoded) minus
    the slowest silo's computation — everything else on the step's critical path (job
    delivery, encoding, sharing, AES-GCM, transfer, server sums, any wait for noise, decoding).
    CPU (``cpu=True``): the slowest silo's + the slower server's + the driver's thread CPU time
    for that work, noise left out (drawn in parallel with receiving, or ahead). ``all_in``
    adds each server's whole noise draw as if it were on the path. The parts (silo, server,
    driver) are the per-role times for the breakdown.
    """
    sfx = "_cpu" if cpu else ""
    silo = max(s[release]["encode" + sfx] + s[release]["send" + sfx] for s in timings["silos"])
    server = max(
        v[release]["receive" + sfx] + v[release]["sum" + sfx] + v[release]["send" + sfx]
        for v in timings["servers"]
    )
    d = timings["driver"][release]
    driver = d["receive" + sfx] + d["decode" + sfx]
    noise = max(v[release]["noise" + sfx] for v in timings["servers"])
    compute = max(s[release]["compute"] for s in timings["silos"])
    added = silo + server + driver if cpu else d["round"] - compute
    return {
        "silo": silo,
        "server": server,
        "driver": driver,
        "noise": noise,
        "noise_wait": max(v[release]["noise_wait"] for v in timings["servers"]),
        "noise_ahead": float(all(v[release]["noise_ahead"] for v in timings["servers"])),
        "added": added,
        "all_in": added + noise,
        "compute": compute,
        "round": d["round"],
    }


def _median(rows: list[dict[str, float]], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def _dpals(
    eps: float, split: Any, x: sp.csr_matrix, silos: list[sp.csr_matrix]
) -> list[dict[str, Any]]:
    from privrec.models.dp_als import DPALS
    from privrec.privacy.contribution import adaptive_weights
    from privrec.privacy.postprocessing import project_psd, psd_solve
    from privrec.secure.silo import (
        SiloConfig,
        binary,
        silo_statistics,
        unpack_statistics,
    )

    rows: list[dict[str, Any]] = []
    central = DPALS(epsilon=eps, delta=1e-6, unit="user")
    t0 = time.perf_counter()
    central.fit(split.train)
    fit_s = time.perf_counter() - t0
    row = {"epsilon": eps, "model": "central DPALS (PLD)", **_metrics(central, split)}
    row.update(
        fit_seconds=round(fit_s, 2),
        steps=central.iterations_,
        regularization=round(central.regularization_, 2),
        head_items=len(central.head_items_),
    )
    rows.append(row)
    print(row, flush=True)

    config = SiloConfig(epsilon=eps, delta=1e-6, n_items=x.shape[1])
    t0 = time.perf_counter()
    result = run_processes(silos, config)
    fit_s = sum(result.round_seconds) + sum(result.solve_seconds)  # without process start-up
    # the same step computed centrally: statistics of the union at the released factors
    # (same head, same per-user weights) plus the driver's item solve
    xh = binary(x[:, result.head_items])
    counts_h = np.maximum(result.noisy_counts[result.head_items], 1.0)
    w = adaptive_weights(xh, counts_h, config.adaptive_exponent, float(config.max_per_user))
    y = result.item_factors[result.head_items].astype(np.float64)
    kw = {
        "alpha0": config.alpha0,
        "user_regularization": config.user_regularization,
        "clip_norm": config.clip_norm,
    }
    reg = result.regularization
    n_head, k = len(result.head_items), config.factors

    def central_step() -> None:
        v = silo_statistics(xh, w, y, **kw)
        g, lhs, rhs = unpack_statistics(v, n_head, k)
        psd_solve(config.alpha0 * project_psd(g), lhs, rhs, np.full(n_head, reg), "if_indefinite")

    central_step()  # warm-up
    wall_s, cpu_s = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()  # process: BLAS/numba threads too
        central_step()
        wall_s.append(time.perf_counter() - t0)
        cpu_s.append(time.process_time() - c0)
    central_wall, central_cpu = float(np.median(wall_s)), float(np.median(cpu_s))
    steps = range(1, len(result.round_seconds))
    parts = [_secure_parts(result.timings, i, cpu=False) for i in steps]
    parts_cpu = [_secure_parts(result.timings, i, cpu=True) for i in steps]
    walls = [p["round"] + s for p, s in zip(parts, result.solve_seconds, strict=True)]
    # each silo scores its own users (own histories + the release), as central DPALS scores
    model = _Scores(lambda rows: result.scores(rows, config), x)
    added, added_cpu = _median(parts, "added"), _median(parts_cpu, "added")
    all_in, all_in_cpu = _median(parts, "all_in"), _median(parts_cpu, "all_in")
    worst = max(p["added"] for p in parts)
    row = {
        "epsilon": eps,
        "model": f"cross-silo DPALS, {N_SILOS} silos (RDP, 2 servers)",
        **_metrics(model, split),
        "fit_seconds": round(fit_s, 2),
        "steps": len(parts),
        "achieved_epsilon": round(result.guarantee.epsilon, 4),
        "head_items": len(result.head_items),
        "regularization": round(result.regularization, 2),
        "shared_words_per_step": int(sum(s.length for s in _stats_plan(config, result))),
        "central_step_seconds": round(central_wall, 4),
        "central_step_cpu_seconds": round(central_cpu, 4),
        "secure_added_seconds": round(added, 4),
        "secure_added_share": round(added / (central_wall + added), 4),
        "secure_added_cpu_seconds": round(added_cpu, 4),
        "secure_added_cpu_share": round(added_cpu / (central_cpu + added_cpu), 4),
        "secure_all_in_share": round(all_in / (central_wall + all_in), 4),
        "secure_all_in_cpu_share": round(all_in_cpu / (central_cpu + all_in_cpu), 4),
        "worst_step_added_share": round(worst / (central_wall + worst), 4),
        "secure_parts_median_seconds": {
            k: round(_median(parts, k), 4)
            for k in ("silo", "server", "driver", "noise", "noise_wait", "compute")
        },
        "secure_parts_median_cpu_seconds": {
            k: round(_median(parts_cpu, k), 4) for k in ("silo", "server", "driver", "noise")
        },
        "noise_drawn_ahead_steps": int(sum(p["noise_ahead"] for p in parts)),
        "wall_step_seconds": [round(v, 3) for v in walls],
        "bytes_sent_by_driver": result.bytes_sent,
    }
    rows.append(row)
    print(row, flush=True)
    return rows


def _stats_plan(config: Any, result: Any) -> list[Any]:
    from privrec.secure.silo import noise_plan

    return noise_plan(config, result.noise_scale, "stats", len(result.head_items))


def _dpease(
    eps: float, split: Any, x: sp.csr_matrix, silos: list[sp.csr_matrix]
) -> list[dict[str, Any]]:
    from privrec.models.dp_ease import DPEASE
    from privrec.secure.silo import SiloEASEConfig

    # both with their (shared) defaults: noisy head, ridge from each path's revealed Gram
    # noise std (z·C centrally, √2·z·C across silos), popularity blend at scoring
    config = SiloEASEConfig(epsilon=eps, delta=1e-6, n_items=x.shape[1])
    rows: list[dict[str, Any]] = []
    central = DPEASE(epsilon=eps, delta=1e-6, unit="user")
    t0 = time.perf_counter()
    central.fit(split.train)
    fit_s = time.perf_counter() - t0
    row = {"epsilon": eps, "model": "central DPEASE (PLD)", **_metrics(central, split)}
    row.update(
        fit_seconds=round(fit_s, 2),
        steps=1,
        regularization=round(central.regularization_, 1),
        head_items=len(central.head_items_),
    )
    rows.append(row)
    print(row, flush=True)

    t0 = time.perf_counter()
    result = run_processes(silos, config)
    fit_s = sum(result.round_seconds) + sum(result.solve_seconds)  # without process start-up
    last = len(result.round_seconds) - 1
    p = _secure_parts(result.timings, last, cpu=False)
    p_cpu = _secure_parts(result.timings, last, cpu=True)
    row = {
        "epsilon": eps,
        "model": f"cross-silo DPEASE, {N_SILOS} silos (RDP, 2 servers)",
        **_metrics(_Scores(result.scores, x), split),
        "fit_seconds": round(fit_s, 2),
        "steps": 1,
        "achieved_epsilon": round(result.guarantee.epsilon, 4),
        "head_items": len(result.head_items),
        "shared_words_per_step": int(len(result.head_items) * (len(result.head_items) + 1) // 2),
        "secure_parts_seconds": {k: round(v, 4) for k, v in p.items()},
        "secure_parts_cpu_seconds": {k: round(v, 4) for k, v in p_cpu.items()},
        "ease_solve_seconds": round(result.solve_seconds[-1], 3),
        "regularization": round(result.regularization, 1),
        "bytes_sent_by_driver": result.bytes_sent,
    }
    rows.append(row)
    print(row, flush=True)
    return rows


def run(epsilons: tuple[float, ...]) -> list[dict[str, Any]]:
    from privrec.evaluation import load_split

    split = load_split(DATA, merge_valid_into_train=True)
    x = sp.csr_matrix(split.train.matrix)
    cuts = np.linspace(0, x.shape[0], N_SILOS + 1).astype(int)
    silos = [sp.csr_matrix(x[a:b]) for a, b in itertools.pairwise(cuts)]
    rows: list[dict[str, Any]] = []
    for eps in epsilons:
        rows += _dpals(eps, split, x, silos)
    for eps in epsilons:
        rows += _dpease(eps, split, x, silos)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Cross-silo DPALS and DPEASE vs central (ml-1m-implicit-r3, 3 silos by user)",
        "",
        f"Run {result['date']}. δ = 1e-6; every model with its defaults (shared by central and "
        "cross-silo: DPALS 32 factors, count_sample = B, SNR head rule; DPEASE C = 10, noisy head; "
        "both a ridge λ from the noise each path reveals and the popularity blend of the "
        "released counts at scoring); test Recall/NDCG@20.",
        "",
        "| ε | model | Recall@20 | NDCG@20 | steps | head items | λ | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lam = f"{r['regularization']:,.4g}" if "regularization" in r else "—"
        head = f"{r['head_items']:,}" if "head_items" in r else "—"
        lines.append(
            f"| {r['epsilon']:g} | {r['model']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | "
            f"{r['steps']} | {head} | {lam} | {r['fit_seconds']:.1f} |"
        )
    lines += [
        "",
        "## Time the secure path adds per DPALS step",
        "",
        "| ε | shared words | clock | central step s | secure added s (silo / server / driver) "
        "| **share of step** | noise per server s | all-in share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dpals = [r for r in result["rows"] if "secure_added_share" in r]
    for r in dpals:
        for clock, sfx, key in (("CPU", "_cpu", "cpu_"), ("wall", "", "")):
            p = r[f"secure_parts_median{sfx}_seconds"]
            lines.append(
                f"| {r['epsilon']:g} | {r['shared_words_per_step']:,} | {clock} | "
                f"{r[f'central_step{sfx}_seconds']:.3f} | "
                f"{r[f'secure_added{sfx}_seconds']:.3f} ({p['silo']:.3f} / {p['server']:.3f} / "
                f"{p['driver']:.3f}) | **{100 * r[f'secure_added{sfx}_share']:.1f}%** | "
                f"{p['noise']:.3f} | {100 * r[f'secure_all_in_{key}share']:.0f}% |"
            )
    ahead = ", ".join(
        f"{r['noise_drawn_ahead_steps']}/{r['steps']} steps at ε = {r['epsilon']:g}" for r in dpals
    )
    walls = "; ".join(
        f"ε = {r['epsilon']:g}: {', '.join(f'{v:.2f}' for v in r['wall_step_seconds'])} s"
        for r in dpals
    )
    lines += [
        "",
        "Central step: statistics of the union at the released factors + the item solve, "
        "median of 3 (CPU: process time, so BLAS and numba threads count). Secure added "
        "(median over steps): wall = the driver's round minus the slowest silo's computation "
        "(job delivery, encoding, share split, AES-GCM, transfer, server sums, any wait for "
        "noise, decoding); CPU = the thread CPU time of that work in the slowest silo, the "
        "slower server and the driver (in parentheses, per role; wall per-role times count "
        "receiving from a message's first byte). Share of step = added / (central + added). "
        "Noise: each server's discrete-Gaussian draw, made in the background while the shares "
        f"arrive, and ahead (right after the previous partial) for {ahead}; all-in adds the "
        "whole draw as if it were on the path. Each server and silo ran in its own process, "
        "the driver in the benchmark's; wall-clock steps (round + solve, all on the same "
        f"2 cores): {walls}. 1-minute load average at the start and end of this run: "
        f"{result.get('load_average_1min', '?')} on 2 cores (other jobs shared the machine, "
        "which inflates the wall times but not the CPU times).",
        "",
    ]
    ease = [r for r in result["rows"] if "secure_parts_seconds" in r]
    if ease:
        lines += [
            "## DPEASE Gram release (one step)",
            "",
            "| ε | shared words | secure added s, wall (CPU) | noise per server s, wall (CPU) "
            "| EASE solve s | fit s |",
            "|---|---|---|---|---|---|",
        ]
        for r in ease:
            p, c = r["secure_parts_seconds"], r["secure_parts_cpu_seconds"]
            lines.append(
                f"| {r['epsilon']:g} | {r['shared_words_per_step']:,} | {p['added']:.2f} "
                f"({c['added']:.2f}) | {p['noise']:.2f} ({c['noise']:.2f}) | "
                f"{r['ease_solve_seconds']:.2f} | {r['fit_seconds']:.1f} |"
            )
        lines += [
            "",
            "One release of the Gram matrix's upper triangle over the head (secure added as "
            "for DPALS, including the wait for the noise); its noise is drawn in the background "
            "while the shares arrive, with no earlier step to draw it ahead of.",
        ]
        lines.append("")
    lines += [machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ε = 5 only")
    args = ap.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} not found")
        return
    eps = (5.0,) if args.quick else (1.0, 5.0)
    load_before = os.getloadavg()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine_info(),
        "rows": run(eps),
    }
    # other jobs on a shared machine inflate wall times (not the CPU times): record the load
    result["load_average_1min"] = [round(load_before[0], 1), round(os.getloadavg()[0], 1)]
    out = HERE / "results"
    suffix = "-quick" if args.quick else ""
    (out / f"silo{suffix}.json").write_text(json.dumps(result, indent=2))
    (out / f"silo{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
