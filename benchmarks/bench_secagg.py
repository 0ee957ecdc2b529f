"""privrec SecAgg+ round cost (compute per role, bytes per client), with Flower's SecAgg+ alongside.

Usage::

    python benchmarks/bench_secagg.py            # full grid + Flower comparison (~5-10 min)
    python benchmarks/bench_secagg.py --quick    # n = 100, d = 10k only, no Flower

privrec
    :func:`privrec.federated.simulate_secagg` for n in {100, 1000}, d in {10k, 100k} and
    dropout in {0, 5 %, 20 %} of the clients, dropping in the masked-input phase (the
    costly case: the server must rebuild the dropped clients' mask keys and regenerate
    their pairwise masks). b = 32, k and t from :func:`privrec.secure.choose_parameters`
    (5 % corrupt clients, the round's dropout rate). "Compute" is the process CPU time of
    the whole simulated round (all clients + server + message encoding, one thread);
    per-role figures are the summed wall time of each role's protocol calls, so under CPU
    contention they can exceed the CPU time. Bytes are the encoded messages, per client.
    "Per dropped client" is the server's time to rebuild one mask key from its shares plus
    to regenerate that client's pairwise masks; "Shamir" is one 32-byte reconstruction at
    t = 26 (Flower's comparison point: ~1.2 s per serialised P-384 key).
Flower
    Flower's own ``SecAggPlusWorkflow`` + ``secaggplus_mod`` in its Ray simulation engine,
    n in {10, 50}, d = 100k, dropout 0 and 5 % (dropped clients raise in ``fit``, i.e. in
    the masked-vector stage), ``num_shares = reconstruction_threshold = 0.5`` fractions
    (n = 10: all other clients). Flower needs its own virtual environment: set
    ``PRIVREC_FLWR_PYTHON`` to its interpreter, or create ``/tmp/flwr``
    (``python3 -m venv /tmp/flwr && /tmp/flwr/bin/pip install "flwr[simulation]"``);
    otherwise the comparison is skipped with a message. We report Flower's round time
    (its four SecAgg+ stages, excluding Ray start-up) and its unmask stage; the same n, d
    and dropouts are run through privrec for the side-by-side table.

Method (both sides): one warm-up run that is left out (imports, first-use caches, Ray
actor start-up), then ``--repeats`` measured runs, reported as the **median** with the range.
privrec's runs are interleaved with Flower's at the same n, d and dropout, and the headline
speed-up is at **equal protocol parameters**: privrec run with Flower's own k and t (Flower
shares to n/2 neighbours with a threshold of half of them). Flower runs ``--repeats + 1``
rounds in one simulation (its first round carries the actors' start-up) and the median is
over the rounds after the first. The machine (and how loaded it was) is recorded.

Results go to ``benchmarks/results/secagg.{json,md}`` (``secagg-quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402
from privrec.federated import simulate_secagg  # noqa: E402
from privrec.secure import shamir  # noqa: E402

BITS = 32
TARGET_SECONDS = 20.0

FLOWER_SCRIPT = r"""
import json, sys, time
import numpy as np
N, D, DROP, ROUNDS = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation

import os
import flwr.server.workflow.secure_aggregation.secaggplus_workflow as sw

N_DROP = int(round(DROP * N))
CLIENT_LOG = os.environ["FLWR_CLIENT_LOG"]
combine_log = []
_combine = sw.combine_shares


def timed_combine(shares):
    t = time.perf_counter()
    secret = _combine(shares)
    combine_log.append((len(secret), time.perf_counter() - t))
    return secret


sw.combine_shares = timed_combine


def timed_mod(msg, ctxt, call_next):
    # Runs in the Ray actor: append this client-side SecAgg+ step's duration to a file.
    t = time.perf_counter()
    out = secaggplus_mod(msg, ctxt, call_next)
    with open(CLIENT_LOG, "a") as f:
        f.write(f"{time.perf_counter() - t}\n")
    return out


class Client(NumPyClient):
    def __init__(self, pid):
        self.pid = pid

    def fit(self, parameters, config):
        if self.pid < N_DROP:
            raise RuntimeError("simulated dropout")
        return [np.full(D, 0.5, dtype=np.float32)], 1, {}


def client_fn(context: Context):
    return Client(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=client_fn, mods=[timed_mod])
server_app = ServerApp()
marks = {}


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=N,
                      min_available_clients=N)
    ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=ROUNDS), strategy=strategy)
    shares = 0.5 if N > 10 else (N - 1 if (N - 1) % 2 else N - 2)
    wf = SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=0.5)
    for stage in ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage",
                  "unmask_stage"):
        orig = getattr(wf, stage)

        def timed(*a, _o=orig, _s=stage, **k):
            t = time.perf_counter()
            r = _o(*a, **k)
            marks.setdefault(_s + "_s", []).append(time.perf_counter() - t)
            return r

        setattr(wf, stage, timed)

    class Timed:
        def __call__(self, g, c):
            t = time.perf_counter()
            wf(g, c)
            marks.setdefault("round_s", []).append(time.perf_counter() - t)

    DefaultWorkflow(fit_workflow=Timed())(grid, ctx)
    keys = [dt for size, dt in combine_log if size > 32]
    seeds = [dt for size, dt in combine_log if size <= 32]
    with open(CLIENT_LOG) as f:
        client_steps = [float(x) for x in f.read().split()]
    marks.update(n=N, d=D, dropout=DROP, dropped=N_DROP,
                 key_combine_s=keys, seed_combine_mean_s=sum(seeds) / max(1, len(seeds)),
                 client_secagg_s=sum(client_steps), client_steps=len(client_steps))
    print("FLWR_RESULT " + json.dumps(marks), flush=True)


run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                               "init_args": {"num_cpus": 2}})
"""


# Flower's effective neighbours and threshold for num_shares = reconstruction_threshold = 0.5
# (its num_shares counts the client itself; n = 10 uses 9 shares).
FLOWER_KT = {10: (8, 4), 50: (24, 12)}


def run_privrec(
    n: int,
    d: int,
    dropout: float,
    k: int | None = None,
    t: int | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Simulated rounds after one left-out warm-up: median CPU / wall time over ``repeats``,
    and the last round's per-role time, bytes and server breakdown."""
    simulate_secagg(n, d, bits=BITS, dropout=dropout, seed=0, neighbours=k, threshold=t)
    cpus, walls = [], []
    for _ in range(max(1, repeats)):
        c0, w0 = time.process_time(), time.perf_counter()
        r = simulate_secagg(n, d, bits=BITS, dropout=dropout, seed=0, neighbours=k, threshold=t)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    cpu, wall = float(np.median(cpus)), float(np.median(walls))
    if not r.exact:
        raise AssertionError(f"wrong sum at n={n} d={d} dropout={dropout}")
    survivors = list(r.survivors)
    n_dropped = len(r.dropped["masked_input"])
    st = r.server_stats
    per_drop = (
        (st["key_rebuild_seconds"] + st["dropped_mask_seconds"]) / n_dropped if n_dropped else None
    )
    return {
        "n": n,
        "d": d,
        "dropout": dropout,
        "dropped": n_dropped,
        "k": r.neighbours,
        "t": r.threshold,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_s_runs": cpus,
        "wall_s_runs": walls,
        "client_s": r.timings["client"]["total"],
        "client_s_per_client": r.timings["client"]["total"] / n,
        "server_s": r.timings["server"]["total"],
        "encoding_s": r.timings["transport"]["total"],
        "client_phase_s": {k: v for k, v in r.timings["client"].items() if k != "total"},
        "server_phase_s": {k: v for k, v in r.timings["server"].items() if k != "total"},
        "bytes_up_per_client": float(np.mean(r.bytes_up[survivors])),
        "bytes_down_per_client": float(np.mean(r.bytes_down[survivors])),
        "server_stats": dict(st),
        "server_s_per_dropped_client": per_drop,
        "key_rebuild_s_per_dropped_client": (
            st["key_rebuild_seconds"] / n_dropped if n_dropped else None
        ),
    }


def shamir_cost(t: int = 26, repeats: int = 200) -> float:
    """Seconds to reconstruct one 32-byte secret from t shares."""
    xs = [shamir.x_coordinate(i) for i in range(2 * t)]
    shares = shamir.split([os.urandom(32)], xs, t)
    t0 = time.perf_counter()
    for _ in range(repeats):
        shamir.reconstruct(xs[:t], shares[:t], t)
    return (time.perf_counter() - t0) / repeats


def flower_python() -> str | None:
    env = os.environ.get("PRIVREC_FLWR_PYTHON")
    if env:
        return env
    default = Path("/tmp/flwr/bin/python")
    return str(default) if default.exists() else None


def run_flower(
    python: str, n: int, d: int, dropout: float, repeats: int = 3
) -> dict[str, Any] | str:
    """Flower's SecAgg+ rounds in a subprocess (``repeats`` after a left-out first round);
    their median timings, or the reason it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "flower_round.py"
        script.write_text(FLOWER_SCRIPT)
        env = {
            **os.environ,
            "RAY_DEDUP_LOGS": "0",
            "PYTHONWARNINGS": "ignore",
            "FLWR_CLIENT_LOG": str(Path(tmp) / "client_steps.txt"),
        }
        try:
            proc = subprocess.run(
                [python, str(script), str(n), str(d), str(dropout), str(repeats + 1)],
                capture_output=True,
                text=True,
                timeout=900,
                env=env,
                cwd=tmp,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"Flower run failed: {exc}"
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("FLWR_RESULT "):
            out: dict[str, Any] = json.loads(line.removeprefix("FLWR_RESULT "))
            per_round = [k for k in out if k == "round_s" or k.endswith("_stage_s")]
            for key in per_round:
                warm = out[key][1:] or out[key]  # the first round carries the actors' start-up
                out[key + "_runs"] = out[key]
                out[key] = float(np.median(warm))
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return f"Flower run gave no result (exit {proc.returncode}): {' | '.join(tail)}"


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# SecAgg+ benchmark",
        "",
        f"Generated by `benchmarks/bench_secagg.py{' --quick' if res['quick'] else ''}` on "
        f"{res['date']}. b = {BITS} bits, dropouts in the masked-input phase, k and t from "
        "`choose_parameters` (5 % corrupt clients). CPU = process CPU time of the whole "
        "simulated round (all clients, server and message encoding on one thread), **median "
        f"of {res.get('repeats', 1)} runs after a left-out warm-up run** (half as many at "
        "n = 1000); client / server = summed wall time of each role's protocol calls (last "
        f"run). Load average at the start: {res.get('load_average')}.",
        "",
        "## privrec",
        "",
        "| n | d | dropout | k | t | CPU s | client s (per client ms) | server s | "
        "server s per dropped client | up KB / client | down KB / client |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["privrec"]:
        lines.append(
            f"| {r['n']} | {r['d']:,} | {r['dropout']:.0%} ({r['dropped']}) | {r['k']} | "
            f"{r['t']} | {fmt(r['cpu_s'])} | {fmt(r['client_s'])} "
            f"({fmt(1e3 * r['client_s_per_client'], 1)}) | {fmt(r['server_s'])} | "
            f"{fmt(r['server_s_per_dropped_client'], 4)} | "
            f"{r['bytes_up_per_client'] / 1e3:,.1f} | {r['bytes_down_per_client'] / 1e3:,.1f} |"
        )
    lines += [
        "",
        f"Shamir reconstruction of one 32-byte secret at t = 26: "
        f"**{1e3 * res['shamir_t26_s']:.3f} ms** (Flower: ~1.2 s per serialised P-384 key).",
    ]
    target = res.get("target")
    if target:
        verdict = "met" if target["cpu_s"] < TARGET_SECONDS else "NOT met"
        lines += [
            "",
            f"Target n = 1000, d = 100k, 5 % dropout under {TARGET_SECONDS:.0f} s of compute: "
            f"{fmt(target['cpu_s'])} s CPU ({verdict}).",
        ]
    lines += ["", "## Flower SecAgg+ side by side", ""]
    flower = res.get("flower")
    if isinstance(flower, str):
        lines.append(f"Skipped: {flower}")
    elif flower:
        lines += [
            "| n | d | dropout | Flower round s (median, warm) | "
            "privrec CPU s at Flower's k, t (**speed-up, equal parameters**) | "
            "privrec CPU s at its own k, t (speed-up) | "
            "client crypto s, all clients (Flower / privrec) | "
            "key rebuild s per dropped client (Flower / privrec) | "
            "Flower unmask stage s / privrec server s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in flower:
            p = f["privrec"]
            same = f["privrec_flower_kt"]
            fl = f["flower"]
            if isinstance(fl, str):
                lines.append(f"| {f['n']} | {f['d']:,} | {f['dropout']:.0%} | {fl} | | | | | | |")
                continue
            keys = fl.get("key_combine_s") or []
            fl_key = sum(keys) / len(keys) if keys else None
            lines.append(
                f"| {f['n']} | {f['d']:,} | {f['dropout']:.0%} ({fl['dropped']}) | "
                f"{fmt(fl['round_s'])} | "
                f"{fmt(same['cpu_s'])} (k={same['k']}, t={same['t']}; "
                f"**{fl['round_s'] / same['cpu_s']:.0f}x**) | "
                f"{fmt(p['cpu_s'])} (k={p['k']}, t={p['t']}; {fl['round_s'] / p['cpu_s']:.0f}x) | "
                f"{fmt(fl.get('client_secagg_s'))} / {fmt(p['client_s'], 3)} | "
                f"{fmt(fl_key, 3)} / {fmt(p['key_rebuild_s_per_dropped_client'], 5)} | "
                f"{fmt(fl['unmask_stage_s'])} / {fmt(p['server_s'], 3)} |"
            )
        lines += [
            "",
            "Flower's round time is its four SecAgg+ stages in the Ray simulation engine "
            "(excluding Ray start-up), clients running in parallel on the 2 cores; privrec's is "
            "the total CPU time of all clients and the server run one after another, so the "
            "comparison favours Flower. Flower's client crypto time is the summed duration of "
            "`secaggplus_mod` over all clients and stages (inside the Ray actors, so without "
            "transport); its key rebuild is `combine_shares` of one serialised private key. "
            "privrec's key rebuild is Shamir plus the public-key check of one X25519 key. "
            "Parameters differ: Flower shares to n/2 neighbours (8 of the 9 others at n = 10) with a "
            "threshold of half of them; privrec uses `choose_parameters` "
            + ", ".join(
                f"(n = {f['n']}: k = {f['privrec']['k']}, t = {f['privrec']['t']})"
                for f in flower
                if f["dropout"] == 0
            )
            + ".",
        ]
    lines += ["", "## Machine", "", machine_markdown(res["machine"]), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 100, d = 10k, no Flower")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs after a warm-up")
    args = parser.parse_args()
    if args.quick:
        grid = [(100, 10_000, p) for p in (0.0, 0.05, 0.2)]
    else:
        grid = [(n, d, p) for n in (100, 1000) for d in (10_000, 100_000) for p in (0.0, 0.05, 0.2)]
    res: dict[str, Any] = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bits": BITS,
        "machine": machine_info(),
        "privrec": [],
    }
    res["repeats"] = args.repeats
    res["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    for n, d, p in grid:
        row = run_privrec(n, d, p, repeats=args.repeats if n <= 100 else max(1, args.repeats // 2))
        res["privrec"].append(row)
        print(
            f"privrec n={n} d={d} dropout={p:.0%}: k={row['k']} t={row['t']} "
            f"cpu {row['cpu_s']:.2f}s client {row['client_s']:.2f}s server {row['server_s']:.2f}s "
            f"up {row['bytes_up_per_client'] / 1e3:.1f} KB",
            flush=True,
        )
        if (n, d, p) == (1000, 100_000, 0.05):
            res["target"] = row
    res["shamir_t26_s"] = shamir_cost()
    if args.quick:
        res["flower"] = "not run with --quick"
    else:
        python = flower_python()
        if python is None:
            res["flower"] = (
                "no Flower interpreter (set PRIVREC_FLWR_PYTHON or create /tmp/flwr with "
                "flwr[simulation] installed)"
            )
            print(res["flower"], flush=True)
        else:
            rows = []
            for n, p in ((10, 0.0), (10, 0.1), (50, 0.0), (50, 0.05)):
                fl = run_flower(python, n, 100_000, p, repeats=args.repeats)
                pr = run_privrec(n, 100_000, p, repeats=args.repeats)
                same = run_privrec(n, 100_000, p, *FLOWER_KT[n], repeats=args.repeats)
                rows.append(
                    {
                        "n": n,
                        "d": 100_000,
                        "dropout": p,
                        "flower": fl,
                        "privrec": pr,
                        "privrec_flower_kt": same,
                    }
                )
                print(f"flower n={n} dropout={p:.0%}: {fl}", flush=True)
            res["flower"] = rows
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stem = "secagg-quick" if args.quick else "secagg"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(res))
    print(f"wrote {out / stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
