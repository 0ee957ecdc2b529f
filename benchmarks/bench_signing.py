"""What signing and verifying a model file costs (``privrec.models.signing``).

Signing hashes the file once (SHA-256 of every byte before the zip comment) and appends a
232-byte block; a verified load (``load_model(path, verify_key=...)``) reads the file once,
hashes it and checks one Ed25519 signature before the usual hardened load. Rows: a DPPopularity
and a DPALS file (private: catalogue and released arrays only) and an ImplicitALS file saved with
its training interactions (the largest kind of file privrec writes), each on the training split
of the same dataset. Times are medians of ``repeats`` calls after a warm-up.

    python benchmarks/bench_signing.py [--repeats 7] [--quick]

Writes ``benchmarks/results/signing.{json,md}``.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privrec.data.shared import shared_dataset
from privrec.data.synthetic import synthetic
from privrec.models import DPALS, DPPopularity, ImplicitALS, load_model
from privrec.models.signing import generate_keypair, sign_file, verify_file

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, machine_markdown

RESULTS = Path(__file__).parent / "results"


def _data(quick: bool) -> tuple[Any, str]:
    path = None if quick else shared_dataset("ml-1m-implicit-r3")
    if path is None:
        return synthetic(n_users=3000, n_items=500, seed=0), "synthetic 3,000 × 500"
    from privrec.evaluation import load_split

    return load_split(path).train, "ml-1m-implicit-r3 (train.txt)"


def _median(fn: Callable[[], Any], repeats: int) -> float:
    def once() -> float:
        t = time.perf_counter()
        fn()
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
    private = {"epsilon": 1.0, "delta": 1e-6, "unit": "user"}
    models = {
        "DPPopularity": (DPPopularity(**private), {}),
        "DPALS (32 factors)": (DPALS(**private, factors=32), {}),
        "ImplicitALS (32 factors) + user data": (
            ImplicitALS(factors=32, iterations=5),
            {"include_user_data": True},
        ),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        private_key, public_key = generate_keypair(Path(tmp) / "keys")
        for name, (model, save_kw) in models.items():
            model.fit(data)
            plain = model.save(Path(tmp) / "plain.npz", **save_kw)
            signed = model.save(Path(tmp) / "signed.npz", signing_key=private_key, **save_kw)
            rows.append(
                {
                    "model": name,
                    "file_bytes": signed.stat().st_size,
                    "sign_s": _median(lambda p=signed: sign_file(p, private_key), repeats),
                    "verify_s": _median(lambda p=signed: verify_file(p, public_key), repeats),
                    "load_s": _median(lambda p=plain: load_model(p), repeats),
                    "load_verified_s": _median(
                        lambda p=signed: load_model(p, verify_key=public_key), repeats
                    ),
                }
            )
    load = os.getloadavg()[0]
    out = {"dataset": label, "repeats": repeats, "rows": rows, "load_average": load,
           "machine": machine_info()}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "signing.json").write_text(json.dumps(out, indent=1))
    md = [
        "# Signing and verifying model files (Ed25519 over SHA-256 of the file)",
        "",
        f"{label}; median of {repeats} calls after a warm-up. *sign*: `sign_file` on a saved "
        "file (re-signs in place); *verify*: `verify_file` alone (streaming hash + one "
        "signature check); *load* / *load verified*: `load_model` of the unsigned file, and of "
        "the signed one with `verify_key=` (read once, checked, then the usual hardened load). "
        f"The machine was shared with other work (1-minute load average {load:.1f} at the end).",
        "",
        "| model file | bytes | sign (ms) | verify (ms) | load (ms) | load verified (ms) |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['model']} | {r['file_bytes']:,} | {1e3 * r['sign_s']:.2f} | "
            f"{1e3 * r['verify_s']:.2f} | {1e3 * r['load_s']:.1f} | "
            f"{1e3 * r['load_verified_s']:.1f} |"
            for r in rows
        ),
        "",
        machine_markdown(out["machine"]),
    ]
    (RESULTS / "signing.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
