"""Real processes: SIGKILL at random points never under-reports; racing analysts never overspend.

Workers are forked from the test process (real OS processes with their own database
connections) so the ≥ 200 kills per backend cost milliseconds each instead of a Python start-up.
Trainings use the interaction unit: DPPopularity then runs no numba thread pool, which must not be
forked into.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import signal
import time
from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from privrec.data import synthetic
from privrec.errors import BudgetExceededError
from privrec.governance import Ledger
from privrec.models.dp_popularity import DPPopularity
from privrec.privacy.accounting import calibrate, epsilon_of
from privrec.privacy.budget import Budget
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.units import PrivacyUnit

from .conftest import make_setup

KILLS = 200
DELTA = 1e-6
TRAIN_EPS = (0.3, 0.5)
QUERY_Z = (6.0, 9.0)


def _train_z(eps: float) -> float:
    return calibrate(Budget(eps, DELTA), gaussian_event, kind="pld", unit=PrivacyUnit.INTERACTION)


def _crash_worker(url: str, key: str, data: object, out: Path, i: int) -> None:
    ledger = Ledger.connect(url, key)
    n = 0
    while True:
        try:
            if i % 2 == 0:
                eps = TRAIN_EPS[(i // 2) % 2]
                model = DPPopularity(epsilon=eps, delta=DELTA, unit="interaction")
                ledger.train(model, data, output=out / f"t{i}-{n}.npz")  # type: ignore[arg-type]
            else:
                z = QUERY_Z[(i // 2) % 2]
                c = ledger.reserve("crash", [SpentEvent("q", dp_accounting.GaussianDpEvent(z))])
                (out / f"q{i}-{n}.out").write_text(
                    f"noisy answer {np.random.default_rng().normal(0, z)}"
                )
                ledger.commit(c, result={"n": n})
        except BudgetExceededError:
            while True:
                time.sleep(1)
        n += 1


@pytest.mark.slow
def test_sigkill_at_random_points_never_under_reports(ledger_url: str, tmp_path: Path) -> None:
    policy = {
        "purpose": "crash test",
        "unit": "interaction",
        "budget": {"epsilon": 80.0, "delta": DELTA},
    }
    s = make_setup(ledger_url, policy)
    s.owner.set_policy("crash", _policy(policy))
    data = s.analyst.load("crash", synthetic(n_users=150, n_items=40, seed=2))
    out = tmp_path / "released"
    out.mkdir()
    rng = random.Random(0)
    killed = 0
    batches = KILLS // 2
    batch = 0
    # Kill points are random in [0, 0.35 s); on a loaded machine a worker may not reach its
    # first release that fast, so batches with later kill points follow until something was
    # released (bounded), instead of a flaky "nothing released".
    while batch < batches or (not any(out.iterdir()) and batch < batches + 10):
        late = batch >= batches
        batch += 1
        pids = []
        for j in range(2):
            pid = os.fork()
            if pid == 0:  # child
                code = 0
                try:
                    _crash_worker(s.url, s.analyst_key, data, out, 2 * (batch - 1) + j)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    code = 1
                os._exit(code)
            pids.append(pid)
        time.sleep(rng.uniform(0.35, 3.0) if late else rng.uniform(0.0, 0.35))
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status), "a worker stopped by itself (see its traceback)"
            killed += os.WTERMSIG(status) == signal.SIGKILL
    assert killed >= KILLS

    # what really left the processes: every output file, complete or not (temporary names too)
    released: list[dp_accounting.DpEvent] = []
    z_train = {eps: _train_z(eps) for eps in TRAIN_EPS}
    for f in out.iterdir():
        m = re.match(r"^\.?([tq])(\d+)-\d+", f.name)
        assert m, f.name
        i = int(m.group(2))
        if m.group(1) == "t":
            released.append(dp_accounting.GaussianDpEvent(z_train[TRAIN_EPS[(i // 2) % 2]]))
        else:
            released.append(dp_accounting.GaussianDpEvent(QUERY_Z[(i // 2) % 2]))
    assert released, "no worker released anything: kill points too early"
    true_eps = epsilon_of(released, DELTA, "pld", PrivacyUnit.INTERACTION)
    (status,) = s.owner.status("crash")
    print(
        f"crash test: {killed} SIGKILLs, {len(released)} outputs released, {status.committed} "
        f"committed + {status.reserved} reserved charges; composed ε {status.composed_epsilon:.4f} "
        f">= released ε {true_eps:.4f}"
    )
    # the same multiset of events composed in another order differs in the last bits (PLD
    # convolution is not exactly associative in floating point): 1e-9 relative is far below
    # anything a charge could hide
    assert status.composed_epsilon >= true_eps * (1 - 1e-9)
    assert status.committed + status.reserved >= len(released)
    assert s.auditor.verify_audit_log().ok


def _policy(raw: dict[str, object]):  # type: ignore[no-untyped-def]
    from privrec.governance.policy import policy_from_dict

    return policy_from_dict(raw)


def _race_worker(url: str, key: str, z: float, barrier: object, results: object) -> None:
    ledger = Ledger.connect(url, key)
    barrier.wait()  # type: ignore[attr-defined]
    won = 0
    while True:
        try:
            c = ledger.reserve("ratings", [SpentEvent("q", dp_accounting.GaussianDpEvent(z))])
        except BudgetExceededError:
            break
        ledger.commit(c)
        won += 1
    results.put(won)  # type: ignore[attr-defined]


def test_racing_processes_never_overspend(ledger_url: str) -> None:
    s = make_setup(ledger_url)  # dataset budget ε = 2 at δ = 1e-6
    z1 = calibrate(Budget(2.0, DELTA), gaussian_event)  # one Gaussian using the whole budget
    z = z1 * np.sqrt(40.5)  # so exactly 40 charges fit
    n_max = 40
    assert epsilon_of(dp_accounting.GaussianDpEvent(z / np.sqrt(n_max)), DELTA) <= 2.0
    assert epsilon_of(dp_accounting.GaussianDpEvent(z / np.sqrt(n_max + 1)), DELTA) > 2.0
    ctx = multiprocessing.get_context("fork")
    n_proc = 8
    barrier = ctx.Barrier(n_proc)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race_worker, args=(s.url, s.analyst_key, z, barrier, results))
        for _ in range(n_proc)
    ]
    for p in procs:
        p.start()
    wins = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(wins) == n_max
    (status,) = s.owner.status("ratings")
    assert status.committed == n_max and status.composed_epsilon <= 2.0
    assert s.auditor.verify_audit_log().ok
