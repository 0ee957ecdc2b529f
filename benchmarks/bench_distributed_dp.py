"""Distributed DP (privrec.privacy.distributed) against central DP at the same ε.

Usage::

    python benchmarks/bench_distributed_dp.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_distributed_dp.py --quick    # smaller d and n, for a smoke run

Utility
    Relative L2 error ``‖mean_hat - mean‖ / ‖mean‖`` of the decoded mean of ``n`` clipped
    client updates, ``d = 10,000``, ``n ∈ {100, 1000}``, ``ε ∈ {1, 5}``, ``δ = 1e-5``,
    for ``b ∈ {12, 16, 20}`` bits (γ chosen by privrec for each ``b`` at
    ``modclip_prob = 1e-6``; discrete Gaussian, the default, and Skellam at ``b = 16``).
    The plain modular sum ``Σ y_i mod 2^b`` stands in for secure aggregation (it is what the
    secure sum returns). Updates: ``u_i = m + N(0, s² I)`` with a shared direction ``m`` of norm
    0.8 and ``s`` such that ``‖u_i‖ ≈ 1.2``, clipped to ``c = 1`` — i.e. clients agree on a
    direction but every update is clipped, as in federated averaging.

    Baselines, both a continuous Gaussian added by a trusted server to the exact clipped sum:
    ``central (PLD)`` calibrated with dp-accounting's exact Gaussian PLD (the tightest honest
    central baseline) and ``central (RDP)`` calibrated with the same RDP→(ε, δ) conversion the
    distributed bound uses, which isolates the cost of discretisation and modular wrapping from
    the cost of the looser accounting.
Speed
    Encode time per client (one vector) and decode time per round at ``d = 100,000``
    (padded to 131,072), median of repeats, 1 thread.

Results go to ``benchmarks/results/distributed_dp.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import dp_accounting
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402
from privrec.privacy import Budget, calibrate, seeded_generator  # noqa: E402
from privrec.privacy.distributed import (  # noqa: E402
    DistributedDPConfig,
    DistributedDPEncoder,
)

DELTA = 1e-5
CLIP = 1.0
TARGET = 0.05  # distributed at b = 16 within 5% of central DP's error


def updates(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    direction = rng.normal(size=d)
    direction *= 0.8 / np.linalg.norm(direction)
    s = math.sqrt((1.2**2 - 0.8**2) / d)
    u = direction + rng.normal(0.0, s, size=(n, d))
    norms = np.linalg.norm(u, axis=1, keepdims=True)
    clipped: np.ndarray = u * np.minimum(1.0, CLIP / norms)
    return clipped


def central_z(eps: float, kind: str) -> float:
    return calibrate(Budget(eps, DELTA), lambda z: dp_accounting.GaussianDpEvent(z), kind=kind)


def utility(quick: bool) -> list[dict[str, Any]]:
    d = 2_000 if quick else 10_000
    ns = (100,) if quick else (100, 1000)
    rows: list[dict[str, Any]] = []
    rng = seeded_generator(2026, warn=False)
    for n in ns:
        x = updates(n, d, rng)
        truth = x.mean(axis=0)
        tnorm = float(np.linalg.norm(truth))
        reps = 2 if n >= 1000 else 4
        for eps in (1.0, 5.0):
            central: dict[str, float] = {}
            for kind in ("pld", "rdp"):
                z = central_z(eps, kind)
                errs = [
                    np.linalg.norm(rng.normal(0.0, z * CLIP, size=d) / n) / tnorm
                    for _ in range(reps)
                ]
                central[kind] = float(np.mean(errs))
                central[f"{kind}_expected"] = z * CLIP * math.sqrt(d) / n / tnorm
            settings = [(b, "dgauss") for b in (12, 16, 20)] + [(16, "skellam")]
            for bits, mech in settings:
                cfg = DistributedDPConfig(
                    clip=CLIP,
                    dim=d,
                    min_survivors=n,
                    rotation_seed=1,
                    budget=Budget(eps, DELTA),
                    bits=bits,
                    mechanism=mech,
                )
                t0 = time.perf_counter()
                enc = DistributedDPEncoder(cfg)
                t_cal = time.perf_counter() - t0
                errs = []
                for _ in range(reps):
                    y = enc.encode(x, rng)
                    s = np.sum(y, axis=0, dtype=np.uint64) % np.uint64(2**bits)
                    mean = enc.decode(s, n, mean=True)
                    errs.append(np.linalg.norm(mean - truth) / tnorm)
                err = float(np.mean(errs))
                plan = enc.plan
                row = {
                    "n": n,
                    "d": d,
                    "epsilon": eps,
                    "bits": bits,
                    "mechanism": mech,
                    "gamma": plan.gamma,
                    "delta2": plan.delta2,
                    "scaled_clip": CLIP / plan.gamma,
                    "local_std_int": math.sqrt(plan.local_variance),
                    "epsilon_reported": plan.epsilon(n),
                    "rel_error": err,
                    "rel_error_expected": plan.decoded_noise_std(n) * math.sqrt(d) / n / tnorm,
                    "central_pld_error": central["pld"],
                    "central_rdp_error": central["rdp"],
                    "ratio_vs_pld": err / central["pld"],
                    "ratio_vs_rdp": err / central["rdp"],
                    "expected_ratio_vs_pld": plan.decoded_noise_std(n)
                    * math.sqrt(d)
                    / n
                    / tnorm
                    / central["pld_expected"],
                    "calibration_s": t_cal,
                }
                rows.append(row)
                print(
                    f"n={n} eps={eps} b={bits} {mech}: err {err:.4f} "
                    f"(central pld {central['pld']:.4f}, rdp {central['rdp']:.4f}) "
                    f"gamma={plan.gamma:.3g}",
                    flush=True,
                )
    return rows


def speed(quick: bool) -> dict[str, Any]:
    d = 16_000 if quick else 100_000
    cfg = DistributedDPConfig(
        clip=CLIP, dim=d, min_survivors=1000, rotation_seed=1, budget=Budget(1.0, DELTA), bits=20
    )
    enc = DistributedDPEncoder(cfg)
    rng = seeded_generator(7, warn=False)
    x = updates(1, d, rng)[0]
    enc_t, dec_t = [], []
    for _ in range(7):
        t0 = time.perf_counter()
        y = enc.encode(x, rng)
        enc_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        enc.decode(y, enc.plan.max_clients)  # the decode alone (a full cohort: no padding)
        dec_t.append(time.perf_counter() - t0)
    batch = updates(20, d, rng)
    t0 = time.perf_counter()
    enc.encode(batch, rng)
    t_batch = (time.perf_counter() - t0) / 20
    return {
        "d": d,
        "padded_dim": enc.encoded_dim,
        "bits": enc.bits,
        "encode_s_per_client_median": float(np.median(enc_t)),
        "encode_s_per_client_batched_20": t_batch,
        "decode_s_per_round_median": float(np.median(dec_t)),
    }


NOTES = [
    "Why the target is missed against central PLD: the distributed discrete Gaussian is accounted",
    "with KLS21's Rényi-DP bound, and the RDP → (ε, δ) conversion needs a noise multiplier",
    "4.05 instead of the exact Gaussian PLD's 3.73 at ε = 1 (×1.084) and 0.953 instead of 0.892",
    "at ε = 5 (×1.068). That accounting gap, not the discretisation, is most of the distance:",
    "against a central Gaussian calibrated with the same conversion (*ratio vs RDP*), b = 16",
    "costs 0.3–1.9% more noise by the calibrated parameters (the grid inflating Δ2 and adding",
    "rounding variance) and b = 20 0.1–0.2%; the measured ratios agree within sampling error",
    "(about ±1% per cell at d = 10,000 with 2–4 repeats).",
    "b = 12 is not viable at d = 10,000: the grid noise is at least about",
    "z·sqrt(D)/2 integer units (the D/4 term of Δ2²), and 7 standard deviations of it already",
    "fill most of ±2^11 at D = 16,384 and modclip_prob = 1e-6, so γ is forced coarse and",
    "rounding dominates Δ2. Relative errors above 1 at n = 100 mean the DP noise norm exceeds",
    "the mean's norm at d = 10,000 — the same for central DP.",
]


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Distributed DP vs central DP", ""]
    lines += [f"Run {result['date']} ({'quick' if result['quick'] else 'full'} mode).", ""]
    lines += [
        "Relative L2 error of the decoded mean (mean over repeats); δ = 1e-5, c = 1,",
        "`modclip_prob` = 1e-6, γ chosen by privrec for each b. *central (PLD)*: continuous",
        "Gaussian on the exact sum calibrated with the exact Gaussian PLD; *central (RDP)*: same,",
        "calibrated with the RDP conversion that the distributed bound uses.",
        "",
        "*expected* is the ratio of noise standard deviations implied by the calibrated",
        "parameters (no sampling error).",
        "",
        "| n | ε | b | mech | γ | rel. error | central (PLD) | central (RDP) "
        "| ratio vs PLD | expected | ratio vs RDP |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["utility"]:
        lines.append(
            f"| {r['n']} | {r['epsilon']:g} | {r['bits']} | {r['mechanism']} | {r['gamma']:.3g} "
            f"| {r['rel_error']:.4f} | {r['central_pld_error']:.4f} | {r['central_rdp_error']:.4f} "
            f"| {r['ratio_vs_pld']:.3f} | {r['expected_ratio_vs_pld']:.3f} "
            f"| {r['ratio_vs_rdp']:.3f} |"
        )
    lines += ["", "## Target: dgauss at b = 16 within 5% of central DP's error", ""]
    for r in result["utility"]:
        if r["bits"] == 16 and r["mechanism"] == "dgauss":
            ok_p = "met" if r["ratio_vs_pld"] <= 1 + TARGET else "NOT met"
            ok_r = "met" if r["ratio_vs_rdp"] <= 1 + TARGET else "NOT met"
            lines.append(
                f"- n={r['n']}, ε={r['epsilon']:g}: {ok_p} vs central PLD "
                f"(×{r['ratio_vs_pld']:.3f}), {ok_r} vs central RDP (×{r['ratio_vs_rdp']:.3f})"
            )
    lines += ["", *NOTES]
    sp = result["speed"]
    lines += [
        "",
        f"## Speed (d = {sp['d']:,}, padded to {sp['padded_dim']:,}, b = {sp['bits']})",
        "",
        "| encode s/client (one vector) | encode s/client (batch of 20) | decode s/round |",
        "|---:|---:|---:|",
        f"| {sp['encode_s_per_client_median']:.4f} | {sp['encode_s_per_client_batched_20']:.4f} "
        f"| {sp['decode_s_per_round_median']:.4f} |",
        "",
        "## Machine",
        "",
        machine_markdown(result["machine"]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="d = 2,000, n = 100; speed at d = 16,000")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine_info(),
    }
    result["utility"] = utility(args.quick)
    result["speed"] = speed(args.quick)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (out / f"distributed_dp{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"distributed_dp{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
