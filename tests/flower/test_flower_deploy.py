"""End to end on Flower's deployment engine: a SuperLink, three SuperNodes, two rounds.

Starts ``flower-superlink --insecure`` and three ``flower-supernode`` processes on 127.0.0.1
(free ports, a temporary ``FLWR_HOME``), runs ``examples/flower`` with ``flwr run --stream``
for two noise-free, seeded rounds over 36 synthetic users, then checks from the server's
checkpoints that

* each round's modular sum equals the sum of the survivors' encodings recomputed locally,
  and the decoded aggregate equals the sum of their clipped payloads up to the
  quantisation bound;
* the training loss went down;

and stops every process it started by PID (also on failure).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr (the [federated] extra) is not installed")

from .local import (
    DATA_SEED,
    ITEMS,
    PER_USER,
    USERS,
    full_matrix,
    reference_round,
    round_log,
    training_loss,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower"
BIN = Path(sys.executable).parent
EXES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
NODES = 3
FAST_SUPERNODE = Path(__file__).with_name("supernode_fast_poll.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited early with code {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the SuperLink did not listen on port {port} within {timeout} s")


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (empty where /proc does not exist)."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _descendants(pids: list[int]) -> set[int]:
    tree = _children()
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        p = todo.pop()
        for c in tree.get(p, []):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop(procs: list[subprocess.Popen[bytes]]) -> set[int]:
    """SIGTERM every started process and its descendants by PID, SIGKILL the stragglers.

    Returns the PIDs still alive afterwards (should be none).
    """
    pids = [p.pid for p in procs if p.poll() is None]
    family = _descendants([p.pid for p in procs]) | set(pids)
    for pid in family:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    while time.monotonic() < deadline and any(_alive(pid) for pid in family):
        time.sleep(0.2)
    for pid in family:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
    time.sleep(0.3)
    return {pid for pid in family if _alive(pid)}


def _overrides(path: Path, ckpt: Path) -> Path:
    path.write_text(
        f"""round-timeout = 90.0
min-nodes = {NODES}
node-wait = 60.0
checkpoint-dir = "{ckpt}"
save-aggregates = true
max-retries = 1

[mf]
factors = 4
head-items = ""
rounds = 2
sampling-rate = 1.0
clients-per-round = ""
noise-multiplier = 0.0
epsilon = ""
clip-norm = 1.0
server-lr = 0.1
seed = 11
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find child processes")
def test_two_rounds_on_the_deployment_engine(tmp_path: Path) -> None:
    for exe in EXES:
        if not (BIN / exe).exists():
            pytest.skip(f"{exe} not found next to {sys.executable}")
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n",
        encoding="utf-8",
    )
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # SuperNodes spawn flower-superexec
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.3",  # default 1 s; each phase waits for it
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    ckpt = tmp_path / "checkpoints"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        # SuperNodes run flower_supernode() through a launcher that caps its fixed 3 s idle
        # poll (13 phases, one pull miss each); see supernode_fast_poll.py
        if args[0] == "flower-supernode":
            command = [sys.executable, str(FAST_SUPERNODE), *args[1:]]
        else:
            command = [str(BIN / args[0]), *args[1:]]
        with (logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                command,
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        return proc

    run: subprocess.CompletedProcess[str] | None = None
    leaked: set[int] = set()
    try:
        link = start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        )
        for i in range(NODES):  # SuperNodes retry until the SuperLink listens
            start(
                f"supernode-{i}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(_free_port()),
                "--node-config",
                f"partition-id={i} num-partitions={NODES} synthetic-users={USERS} "
                f"synthetic-items={ITEMS} synthetic-per-user={PER_USER} "
                f"synthetic-seed={DATA_SEED} test-mode=true",
            )
        _wait_port(port, link, timeout=120)
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(EXAMPLE),
                "test",
                "--stream",
                "--run-config",
                str(_overrides(tmp_path / "overrides.toml", ckpt)),
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        leaked = _stop(procs)
    assert not leaked, f"processes left running: {sorted(leaked)}"
    assert run is not None
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert (ckpt / "rounds.jsonl").exists(), output[-4000:]

    done = [e for e in round_log(ckpt, None) if e["aborted"] is None]
    # the counting round (popularity prior) runs first, then the training rounds
    assert [(e["kind"], e["round"]) for e in done] == [("count", 0), ("train", 1), ("train", 2)]
    entries = [e for e in done if e["kind"] == "train"]
    matrix = full_matrix()
    for e in entries:
        assert e["survivors"] == USERS  # every user sampled (q = 1), nobody dropped
        assert e["nodes"] == dict.fromkeys(
            ("advertise_keys", "share_keys", "masked_input", "unmask"), NODES
        )
        ref = reference_round(ckpt, e["round"], matrix)
        assert ref["exact"], "modular sum differs from the survivors' encodings"
        err = float(np.linalg.norm(ref["decoded"] - ref["expected"]))
        assert err <= ref["bound"], (err, ref["bound"])
    losses = [training_loss(ckpt / f"round-{r:04d}.npz", matrix) for r in (0, 1, 2)]
    assert losses[2] < losses[1] < losses[0], losses
