"""Federated DPALS on Flower: payload per device and round time on ml-100k.

Usage::

    python benchmarks/bench_flower_dpals.py                 # in process, then deployed
    python benchmarks/bench_flower_dpals.py --modes local   # in process only

Both modes train :class:`~privrec.federated.FederatedDPALS` with its defaults at user-level
ε = 5, δ = 1e-5 on ml-100k (every rating a positive, all 943 users), the users spread over
:data:`NODES` SuperNodes (user ``u`` on node ``u mod 3``), every user a full SecAgg+ client
with its own keys, contribution, clipping and discrete-Gaussian share.

``local``
    The ServerApp's coordinator against the real ClientApp handlers in one process, every
    message and node state serialised as between Flower processes: the protocol's own cost
    (all nodes' and the server's CPU on one machine) without Flower's process start-ups.
``deploy``
    ``flower-superlink`` and three ``flower-supernode`` processes on 127.0.0.1 and
    ``flwr run examples/flower`` with ``algorithm = "dpals"``: what a deployment takes,
    dominated by Flower 1.42 starting a ``flwr-clientapp`` process per message and polling.

Recorded per round: the vector each device encodes (length, padded length, bits, bytes of the
encoded payload), the bytes each device sent and received in all SecAgg+ messages of the round
(keys, shares, masked input, unmask shares; the server's counts of the Flower records), the
round's wall seconds and its phases'. Results: ``benchmarks/results/flower_dpals.{json,md}``.
The machine is shared (2 cores): the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from machine import machine_info, machine_markdown  # noqa: E402

DATA = Path(os.environ.get("PRIVREC_SHARED_DATA", ROOT.parent / "shared" / "data"))
NODES = 3
EPSILON, DELTA = 5.0, 1e-5
BIN = Path(sys.executable).parent


def _data_file() -> Path:
    return DATA / "ml-100k" / "u.data"


def _run_config(ckpt: Path) -> dict[str, Any]:
    return {
        "algorithm": "dpals",
        "round-timeout": 900.0,
        "min-nodes": NODES,
        "node-wait": 120.0,
        "checkpoint-dir": str(ckpt),
        "max-retries": 1,
        "dpals.epsilon": EPSILON,
        "dpals.delta": DELTA,
    }


class _LocalTransport:
    """SuperNodes as in-process handler calls; messages and node state serialised."""

    def __init__(self, parts: int) -> None:
        from flwr.app import Context, RecordDict
        from flwr.common.serde import context_to_proto

        self.contexts = {
            100 + p: context_to_proto(
                Context(
                    run_id=1,
                    node_id=100 + p,
                    node_config={
                        "data": str(_data_file()),
                        "partition-id": p,
                        "num-partitions": parts,
                    },
                    state=RecordDict(),
                    run_config={},
                )
            )
            for p in range(parts)
        }

    def node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def exchange(
        self, action: str, contents: Mapping[int, Any], *, timeout: float, group: str
    ) -> dict[int, Any]:
        from flwr.common.serde import (
            context_from_proto,
            context_to_proto,
            recorddict_from_proto,
            recorddict_to_proto,
        )
        from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

        from privrec.federated.flower.node import handle

        def roundtrip(content: Any) -> Any:
            raw = recorddict_to_proto(content).SerializeToString()
            return recorddict_from_proto(ProtoRecordDict.FromString(raw))

        out = {}
        for node, content in contents.items():
            context = context_from_proto(self.contexts[node])
            out[node] = roundtrip(handle(action, roundtrip(content), context))
            self.contexts[node] = context_to_proto(context)
        return out


def _rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = (
        "round",
        "dim",
        "padded_dim",
        "bits",
        "bytes_per_device",
        "flower_bytes_up_per_device",
        "flower_bytes_down_per_device",
        "flower_seconds",
        "flower_phase_seconds",
        "survivors",
        "devices",
        "attempts",
    )
    return [{k: r.get(k) for k in keep} for r in rounds]


def run_local() -> dict[str, Any]:
    from privrec.federated.flower.dpals import DPALSCoordinator, parse_dpals_run_config

    with tempfile.TemporaryDirectory() as tmp:
        params, settings = parse_dpals_run_config(_run_config(Path(tmp)))
        coord = DPALSCoordinator(_LocalTransport(NODES), params, settings, say=print)
        t0 = time.perf_counter()
        c0 = time.process_time()
        model = coord.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    g = model.privacy_guarantee
    return {
        "mode": "local",
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "epsilon": g.epsilon,
        "factors": model.factors_,
        "head_items": len(model.head_items_),
        "rounds": _rows(model.rounds_),
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each started process's own session (started with start_new_session), by id."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


def run_deploy() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="privrec-flwr-dpals-"))
    home = tmp / "flwr-home"
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n",
        encoding="utf-8",
    )
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.3",
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    ckpt = tmp / "ckpt"
    overrides = tmp / "overrides.toml"
    lines = []
    for k, v in _run_config(ckpt).items():
        lines.append(f"{k} = {json.dumps(v)}")  # dotted keys: the app's [dpals] table
    overrides.write_text("\n".join(lines) + "\n", encoding="utf-8")
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with (tmp / f"{name}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [str(BIN / args[0]), *args[1:]],
                    env=env,
                    cwd=tmp,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    t0 = time.perf_counter()
    try:
        start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
              "--port", str(port), "--disable-runtime-dependency-installation")  # fmt: skip
        for i in range(NODES):
            start(f"supernode-{i}", "flower-supernode", "--insecure", "--superlink",
                  f"127.0.0.1:{port}", "--host", "127.0.0.1", "--port", str(_free_port()),
                  "--node-config",
                  f"partition-id={i} num-partitions={NODES} data='{_data_file()}'")  # fmt: skip
        deadline = time.monotonic() + 120.0  # the SuperLink listens after a few seconds
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        time.sleep(2.0)  # and the SuperNodes connect
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(ROOT / "examples" / "flower"),
                "bench",
                "--stream",
                "--run-config",
                str(overrides),
            ],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    finally:
        _stop(procs)
    wall = time.perf_counter() - t0
    rounds_file = ckpt / "dpals_rounds.json"
    if run.returncode != 0 or not rounds_file.exists():
        raise RuntimeError((run.stdout + run.stderr)[-4000:] + f"\nlogs in {tmp}")
    rounds = json.loads(rounds_file.read_text())
    from privrec.models import load_model

    model = load_model(ckpt / "model.npz")
    return {
        "mode": "deploy",
        "wall_seconds": wall,
        "epsilon": model.privacy_guarantee.epsilon,
        "factors": int(model.factors_),
        "head_items": len(model.head_items_),
        "rounds": _rows(rounds),
    }


def _markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    out = [
        "# Federated DPALS on Flower (ml-100k)",
        "",
        f"ε = {EPSILON:g}, δ = {DELTA:g} (user level, RDP), FederatedDPALS defaults; ml-100k, "
        f"943 users on {NODES} SuperNodes, each user a full SecAgg+ client. "
        "`python benchmarks/bench_flower_dpals.py`.",
        "",
    ]
    for res in results:
        out += [
            f"## {res['mode']}: {res['wall_seconds']:.1f} s wall"
            + (f", {res['cpu_seconds']:.1f} s CPU" if "cpu_seconds" in res else "")
            + f"; ε = {res['epsilon']:.4g}, k = {res['factors']}, {res['head_items']} head items",
            "",
            "| round | vector (padded) | bits | encoded payload / device | sent / device "
            "(all SecAgg+ msgs) | received / device | round s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["rounds"]:
            out.append(
                f"| {r['round']} | {r['dim']:,} ({r['padded_dim']:,}) | {r['bits']} | "
                f"{r['bytes_per_device'] / 1024:.1f} KiB | "
                f"{r['flower_bytes_up_per_device'] / 1024:.1f} KiB | "
                f"{r['flower_bytes_down_per_device'] / 1024:.1f} KiB | "
                f"{r['flower_seconds']:.2f} |"
            )
        out.append("")
    out += ["## Machine", "", machine_markdown(info), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["local", "deploy"])
    parser.add_argument("--keep", action="store_true", help="keep the other modes' results")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    results = []
    if args.keep:  # add to the results already recorded (other modes)
        old = json.loads((HERE / "results" / "flower_dpals.json").read_text())["results"]
        results = [r for r in old if r["mode"] not in args.modes]
    for mode in args.modes:
        results.append(run_local() if mode == "local" else run_deploy())
        print(json.dumps(results[-1], indent=1, default=float))
    info = machine_info()
    info["loadavg"] = os.getloadavg()
    out = HERE / "results"
    (out / "flower_dpals.json").write_text(
        json.dumps({"machine": info, "results": results}, indent=1, default=float)
    )
    (out / "flower_dpals.md").write_text(_markdown(results, info))


if __name__ == "__main__":
    main()
