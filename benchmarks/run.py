"""Run every benchmark in turn (``make bench``); ``--quick`` for a smoke run.

Each benchmark writes JSON + Markdown under ``benchmarks/results/`` with the
machine it ran on. Benchmarks needing the shared real datasets skip them with a
message when ``../shared/data`` (or ``$PRIVREC_DATA``) is absent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "bench_als.py",
    "bench_distributed_dp.py",
    "bench_secagg.py",
    "bench_he.py",
    "bench_mpc.py",
    "bench_silo.py",
    "privacy_utility.py",
    "bench_dpals_speed.py",
    "bench_dpals_lhs.py",
    "bench_dpals_small_eps.py",
    "bench_federated_dpals.py",
    "bench_personalized.py",
    "bench_private_tuning.py",
    "bench_federated.py",
    "bench_short_history.py",
    "bench_model_load.py",
    "bench_signing.py",
    "bench_serve.py",
    "bench_audit.py",
    "bench_monitor.py",
    "bench_scale.py",
]


def main() -> int:
    extra = sys.argv[1:]
    failed = []
    for name in BENCHMARKS:
        print(f"== {name} {' '.join(extra)}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / name), *extra])
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
