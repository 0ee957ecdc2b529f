"""Real separate processes over 127.0.0.1 through the CLI (keys, serve, join, train): a server
frozen mid-training makes the driver abort with a named phase and exit 1; training then resumes
from the checkpoint the processes wrote and finishes with exactly the planned releases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from privrec.secure.silo import setup_keys

PY = [sys.executable, "-m", "privrec.cli.main"]


def _write_silo(path: Path, first_user: int, n_users: int, n_items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(first_user, first_user + n_users):
        items = rng.choice(n_items, size=int(rng.integers(3, 12)), replace=False)
        lines.append(" ".join(str(v) for v in [u, *items.tolist()]))
    path.write_text("\n".join(lines) + "\n")


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as fh:
        return subprocess.Popen([*PY, *args], stdout=fh, stderr=subprocess.STDOUT, env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)


def _warm_numba_cache() -> None:
    """Compile (and cache on disk) the kernels the roles use, so that a cold cache — a fresh CI
    clone — cannot make a healthy party miss the short timeout this test relies on."""
    import warnings

    import scipy.sparse as sp

    from privrec.models.dp_als import DPALS
    from privrec.privacy.distributed import sample_discrete_gaussian
    from privrec.secure.silo import SiloConfig, run_local

    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((30, 12)) < 0.4).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DPALS(epsilon=5.0, delta=1e-3, unit="user", factors=4, seed=0).fit(x)
    sample_discrete_gaussian(3.0, 10)
    # the silo path's own kernels (float64 exact user solve, item statistics)
    run_local(
        [x[:15], x[15:]], SiloConfig(epsilon=5, delta=1e-6, n_items=12, factors=4), timeout=20
    )


def test_processes_abort_on_frozen_server_then_resume(tmp_path: Path) -> None:
    _warm_numba_cache()
    n_items, iters = 40, 60
    setup_keys(tmp_path / "keys", 2)
    roster = str(tmp_path / "keys" / "roster.json")
    for i in (1, 2):
        _write_silo(tmp_path / f"silo{i}.txt", 100 * i, 80, n_items, i)
    ck = tmp_path / "ck"
    from privrec.secure.silo import SiloConfig

    run = tmp_path / "run.json"
    run.write_text(
        SiloConfig(
            epsilon=5, delta=1e-6, n_items=n_items, factors=4, iterations=iters
        ).model_dump_json()
    )

    def roles(tag: str) -> list[subprocess.Popen[bytes]]:
        out = []
        for s in ("server0", "server1"):
            out.append(
                _start(
                    [
                        "silo",
                        "serve",
                        "--roster",
                        roster,
                        "--key",
                        str(tmp_path / "keys" / f"{s}.key"),
                        "--config",
                        str(run),
                        "--timeout",
                        "30",
                    ],
                    tmp_path / f"{s}-{tag}.log",
                )
            )
        for i in (1, 2):
            out.append(
                _start(
                    [
                        "silo",
                        "join",
                        "--roster",
                        roster,
                        "--key",
                        str(tmp_path / "keys" / f"silo{i}.key"),
                        "--data",
                        str(tmp_path / f"silo{i}.txt"),
                        "--n-items",
                        str(n_items),
                        "--config",
                        str(run),
                        "--timeout",
                        "30",
                    ],
                    tmp_path / f"silo{i}-{tag}.log",
                )
            )
        return out

    def train(tag: str, *extra: str) -> subprocess.Popen[bytes]:
        return _start(
            [
                "silo",
                "train",
                "--roster",
                roster,
                "--key",
                str(tmp_path / "keys" / "driver.key"),
                "--config",
                str(run),
                "--checkpoint",
                str(ck),
                "--out",
                str(tmp_path / "model.npz"),
                "--timeout",
                "5",
                *extra,
            ],
            tmp_path / f"driver-{tag}.log",
        )

    procs = roles("a")
    try:
        driver = train("a")
        procs.append(driver)
        deadline = time.monotonic() + 120  # process start-up is slow on a loaded machine
        while not (ck / "state.npz").exists():  # counts released: training has started
            assert time.monotonic() < deadline, (tmp_path / "driver-a.log").read_text()
            assert driver.poll() is None, (tmp_path / "driver-a.log").read_text()
            time.sleep(0.005)
        os.kill(procs[1].pid, signal.SIGSTOP)  # server1 stops answering mid-training
        assert driver.wait(60) == 1
        log = (tmp_path / "driver-a.log").read_text()
        # The driver awaits both partials at once and the silos send to both servers at once
        # (server0's seed share before computing), so only the frozen server can be late.
        assert "ProtocolAbort" in log and "phase 'aggregate'" in log, log
        assert "'server1'" in log and "'server0'" not in log, log
        with np.load(ck / "state.npz") as z:
            done = int(z["completed"])
        assert done < iters
    finally:
        os.kill(procs[1].pid, signal.SIGCONT)
        _stop(procs)

    # resume from the processes' checkpoint (roles in threads here, to keep the test short;
    # the CLI's `train --resume` runs the same Driver code)
    import scipy.sparse as sp

    from privrec.data.loaders import read_user_item_lists
    from privrec.secure.silo import SiloConfig, run_local

    matrices = []
    for i in (1, 2):
        users, items, all_users = read_user_item_lists(tmp_path / f"silo{i}.txt")
        rows = np.searchsorted(all_users, users)
        matrices.append(
            sp.csr_matrix((np.ones(len(rows)), (rows, items)), shape=(len(all_users), n_items))
        )
    config = SiloConfig(epsilon=5, delta=1e-6, n_items=n_items, factors=4, iterations=iters)
    result = run_local(matrices, config, checkpoint=ck, resume=True, timeout=20)
    with np.load(ck / "state.npz") as z:
        assert int(z["completed"]) == iters
    assert result.item_factors.shape == (n_items, 4)
    assert len(result.guarantee.events) == 1 + 3 * iters  # the aborted step released nothing
    assert result.guarantee.epsilon <= 5.0


@pytest.mark.parametrize("model", ["dpals", "dpease"])
def test_cli_train_writes_model_and_guarantee(tmp_path: Path, model: str) -> None:
    """`privrec silo train --config` against servers (holding the same config) and silos
    running as threads in this process, for both models."""
    import threading

    import scipy.sparse as sp
    from typer.testing import CliRunner

    from privrec.cli.main import app
    from privrec.models.signing import generate_keypair
    from privrec.secure.silo import AggregationServer, AnyConfig, Silo, SiloConfig, SiloEASEConfig

    n_items = 30
    roster, ids = setup_keys(tmp_path / "keys", 2)
    signing = generate_keypair(tmp_path / "signing")
    rng = np.random.default_rng(0)
    config: AnyConfig = (
        SiloConfig(epsilon=3, delta=1e-6, n_items=n_items, factors=4, iterations=2)
        if model == "dpals"
        else SiloEASEConfig(epsilon=3, delta=1e-6, n_items=n_items, max_items=20)
    )
    (tmp_path / "run.json").write_text(config.model_dump_json())
    roles: list[AggregationServer | Silo] = [
        AggregationServer(ids[s], roster, timeout=20, config=config) for s in ("server0", "server1")
    ]
    for i in (1, 2):
        x = sp.random(50, n_items, density=0.2, random_state=rng, format="csr")
        roles.append(Silo(ids[f"silo{i}"], roster, x, timeout=20, config=config))
    threads = [threading.Thread(target=r.run, daemon=True) for r in roles]
    for th in threads:
        th.start()
    try:
        res = CliRunner().invoke(
            app,
            [
                "silo", "train", "--roster", str(tmp_path / "keys" / "roster.json"),
                "--key", str(tmp_path / "keys" / "driver.key"),
                "--config", str(tmp_path / "run.json"), "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "m.npz"),
                "--timeout", "20", "--sign-key", str(signing[0]),
            ],
        )  # fmt: skip
    finally:
        for th in threads:
            th.join(20)
    assert res.exit_code == 0, res.output
    assert "user-level ε = 3" in res.output or "ε = 2.9" in res.output
    from privrec.models import load_model

    # a normal privrec model file, signed by the driver's model-signing key
    loaded = load_model(tmp_path / "m.npz", verify_key=signing[1])
    assert loaded.privacy_guarantee.accountant.value == "rdp"  # type: ignore[attr-defined]
    assert loaded.n_users_ == 0 and loaded.n_items_ == n_items
    if model == "dpals":
        assert loaded.item_factors_.shape == (n_items, 4)  # type: ignore[attr-defined]
    else:
        assert loaded.weights_.shape == (20, 20) and loaded.head_items_.shape == (20,)  # type: ignore[attr-defined]
