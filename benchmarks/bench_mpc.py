"""Secure top-k with MPyC (privrec.secure.mpc): latency and bytes, next to CKKS and Paillier.

Usage::

    python benchmarks/bench_mpc.py            # 100 and 1k items (about 10 min on 2 loaded cores)
    python benchmarks/bench_mpc.py --quick    # 100 items, one repetition
    python benchmarks/bench_mpc.py --large    # add 10k items, public item matrix, one run
                                              # (about 7 min on 2 loaded cores), merged into
                                              # the existing results

Random item factors (N(0, 0.3²), 64 factors) and one random user vector; k = 10, three
excluded items. Each repetition runs :func:`privrec.secure.mpc.secure_top_k_local`: three
fresh processes on 127.0.0.1 (client, model holder, helper), with the item matrix either a
secret input of the model holder or public to all parties, and the public case once more with
mutually authenticated TLS on every link (``tls=True``). Reported per row (medians over
repetitions):

* protocol s — wall time from all parties connected to the client holding the ids (the
  slowest party), i.e. the latency a deployment with running parties would see;
* wall s — the same plus starting three Python processes and connecting them;
* CPU s — CPU time of the busiest party over the protocol (the rest is waiting for
  messages: every comparison level costs several network rounds);
* bytes — what each party sent to its peers (MPyC's counters, TCP payload plus its
  12-byte frame headers; TLS records add a few dozen bytes per message on top); the
  client's share is what a user's device pays when it runs party 0 itself;
* exact — the ids equal the plaintext top-k in every repetition.

All three parties share the same 2 cores with whatever else runs on the machine, so the
load average is recorded before and after. The CKKS and Paillier rows of the comparison
come from ``benchmarks/results/he.json`` (run separately by ``bench_he.py``).

Results go to ``benchmarks/results/mpc.json`` and ``benchmarks/results/mpc.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402
from privrec.secure.mpc import MPCParams  # noqa: E402
from privrec.secure.mpc_local import secure_top_k_local  # noqa: E402

FACTORS = 64
K = 10
SIZES_FULL = ((100, 3), (1000, 2))  # (items, repetitions)
SIZES_QUICK = ((100, 1),)
LARGE = 10_000  # --large: one run with the public item matrix


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def bench_mpc(
    n_items: int, public_items: bool, reps: int, params: MPCParams, tls: bool = False
) -> dict[str, Any]:
    rng = np.random.default_rng(n_items)
    y = rng.normal(0.0, 0.3, size=(n_items, FACTORS))
    u = rng.normal(0.0, 0.3, size=FACTORS)
    exclude = [0, 1, 2]
    scores = y @ u
    scores[exclude] = -np.inf
    expected = np.argsort(-scores)[:K]
    proto, wall, cpu, exact = [], [], [], []
    sent: tuple[int, ...] = ()
    for _ in range(reps):
        res = secure_top_k_local(
            y,
            u,
            K,
            exclude=exclude,
            public_items=public_items,
            params=params,
            tls=tls,
            timeout=1800,
        )
        proto.append(res.seconds)
        wall.append(res.wall_seconds)
        cpu.append(max(res.party_cpu_seconds))
        exact.append(bool(np.array_equal(res.items, expected)))
        sent = res.bytes_sent
    return {
        "n_items": n_items,
        "factors": FACTORS,
        "k": K,
        "items": "public" if public_items else "secret",
        "tls": tls,
        "reps": reps,
        "protocol_s": _median(proto),
        "wall_s": _median(wall),
        "busiest_party_cpu_s": _median(cpu),
        "bytes_sent_per_party": list(sent),
        "bytes_total": int(sum(sent)),
        "client_bytes_sent": int(sent[0]),
        "exact_top_k": all(exact),
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = [
        "# Secure top-k with MPyC (3 parties) vs CKKS and Paillier private scoring",
        "",
        f"Run {result['date']} ({'quick' if result['quick'] else 'full'} mode). "
        f"{FACTORS} factors, top-{K}, 3 excluded items; medians over repetitions. "
        f"Load average (1 min) before / after: {result['load_before']:.1f} / "
        f"{result['load_after']:.1f} on {result['machine']['usable_cores']} cores.",
        "",
        f"MPyC {result['versions']['mpyc']} (gmpy2 "
        f"{'installed' if result['versions']['gmpy2'] else 'not installed'}), "
        f"SecFxp({p['bit_length']}, {p['frac_length']}), {p['compare_bits']}-bit comparisons, "
        f"statistical security 2^-{p['sec_param']}, threshold 1 of 3 parties, "
        "no PRSS (random bits from the parties' own randomness).",
        "",
        "## MPyC secure top-k (privrec.secure.mpc)",
        "",
        "| items | item matrix | protocol s | wall s (with process start) | busiest party CPU s "
        "| bytes sent by client / model holder / helper | total | exact top-k |",
        "|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for r in result["mpc"]:
        per = " / ".join(_mb(b) for b in r["bytes_sent_per_party"])
        when = (
            f" (run {r['date']}, load {r['load_before']:.0f}–{r['load_after']:.0f})"
            if "date" in r
            else ""
        )
        lines.append(
            f"| {r['n_items']:,}{when} | {r['items']}{', TLS' if r.get('tls') else ''} "
            f"| {r['protocol_s']:.2f} | {r['wall_s']:.2f} "
            f"| {r['busiest_party_cpu_s']:.2f} | {per} | {_mb(r['bytes_total'])} "
            f"| {'yes' if r['exact_top_k'] else 'NO'} |"
        )
    lines += [
        "",
        "Protocol s: from all parties connected to the ids at the client. The gap between "
        "protocol time and CPU time is waiting: for the other parties' CPU (three processes "
        "share two cores with the rest of the machine) and on network rounds (a bitonic "
        "selection network of 40 comparison levels at 1k items, k = 10, several rounds each). "
        "Work and bytes grow linearly in the items, rounds in log n.",
    ]
    he = result.get("he_reference")
    if he:
        lines += [
            "",
            f"## Next to CKKS and Paillier (from he.json, run {he['date']})",
            "",
            "| scheme | items | latency s | client traffic per query | client learns |",
            "|---|---:|---:|---|---|",
        ]
        for r in he["ckks"]:
            lines.append(
                f"| CKKS {r['packing']} | {r['n_items']:,} | {r['server_s']:.3f} "
                f"(+ client {r['client_encrypt_s'] + r['client_decrypt_s']:.3f}) "
                f"| {_mb(r['bytes_up_per_query'])} / {_mb(r['bytes_down'])} | all scores |"
            )
        for r in he["paillier"]:
            note = " (scaled)" if r["extrapolated"] else ""
            lines.append(
                f"| Paillier {r['key_bits']}-bit | {r['n_items']:,} | {r['server_s']:.1f}{note} "
                f"(+ client {r['client_encrypt_s'] + r['client_decrypt_s']:.1f}) "
                f"| {_mb(r['bytes_up_per_query'])} / {_mb(r['bytes_down'])} | all scores |"
            )
        for r in result["mpc"]:
            lines.append(
                f"| MPyC top-k, {r['items']} items{', TLS' if r.get('tls') else ''} "
                f"| {r['n_items']:,} | {r['protocol_s']:.2f} "
                f"| {_mb(r['client_bytes_sent'])} sent by party 0 | top-{K} ids only |"
            )
    lines += ["", "## Machine", "", machine_markdown(result["machine"]), ""]
    return "\n".join(lines)


def add_large(out: Path) -> int:
    """Run the large catalogue once and merge the row into the existing full results."""
    path = out / "mpc.json"
    if not path.exists():
        print(f"{path} missing: run the full benchmark first", file=sys.stderr)
        return 1
    result = json.loads(path.read_text())
    load = os.getloadavg()[0]
    row = bench_mpc(LARGE, True, 1, MPCParams(**_param_fields(result["params"])))
    row["load_before"], row["load_after"] = load, os.getloadavg()[0]
    row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(row), flush=True)
    result["mpc"] = [r for r in result["mpc"] if r["n_items"] != LARGE] + [row]
    path.write_text(json.dumps(result, indent=2) + "\n")
    (out / "mpc.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _param_fields(params: dict[str, Any]) -> dict[str, Any]:
    names = ("bit_length", "frac_length", "user_norm_bound", "item_norm_bound", "sec_param")
    return {k: params[k] for k in names}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 items, one repetition")
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder")
    ap.add_argument(
        "--large",
        action="store_true",
        help=f"only {LARGE:,} items (public item matrix, one run), merged into mpc.json",
    )
    args = ap.parse_args()
    if args.large:
        return add_large(Path(args.out))
    params = MPCParams()
    result: dict[str, Any] = {
        "benchmark": "mpc",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine_info(),
        "versions": {name: _version(name) for name in ("mpyc", "gmpy2", "uvloop")},
        "params": {
            "bit_length": params.bit_length,
            "frac_length": params.frac_length,
            "user_norm_bound": params.user_norm_bound,
            "item_norm_bound": params.item_norm_bound,
            "compare_bits": params.compare_bits,
            "sec_param": params.sec_param,
        },
        "load_before": os.getloadavg()[0],
        "mpc": [],
    }
    for n, reps in SIZES_QUICK if args.quick else SIZES_FULL:
        for public, tls in ((False, False), (True, False), (True, True)):
            row = bench_mpc(n, public, reps, params, tls)
            print(json.dumps(row), flush=True)
            result["mpc"].append(row)
    result["load_after"] = os.getloadavg()[0]
    he_json = Path(args.out) / "he.json"
    if he_json.exists():
        he = json.loads(he_json.read_text())
        result["he_reference"] = {k: he[k] for k in ("date", "ckks", "paillier")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (out / f"mpc{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"mpc{suffix}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
