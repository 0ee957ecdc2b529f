"""Simulated federated training: fast path = full SecAgg+, faults, aborts, checkpoint/resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.errors import ConfigError, ProtocolAbort
from privrec.federated import (
    FaultModel,
    FederatedMFConfig,
    FederatedSimulation,
    secure_sum,
    simulate_secagg,
)
from privrec.privacy.distributed import DistributedDPConfig, DistributedDPEncoder
from privrec.privacy.randomness import seeded_generator
from privrec.secure.secagg import PHASES

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def _histories(n_users: int = 80, n_items: int = 12, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, 2, size=n_users)
    p = np.where((np.arange(n_items)[None, :] % 2) == taste[:, None], 0.5, 0.05)
    return sp.csr_matrix((rng.random((n_users, n_items)) < p).astype(np.float64))


def _encoded(n: int, dim: int, seed: int) -> tuple[np.ndarray, int]:
    enc = DistributedDPEncoder(
        DistributedDPConfig(
            clip=1.0,
            dim=dim,
            min_survivors=n // 2,
            rotation_seed=3,
            noise_multiplier=1.0,
            max_clients=n,
        )
    )
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return enc.encode(x, seeded_generator(seed, warn=False)), enc.bits


def test_fast_path_equals_simulate_secagg_bit_for_bit() -> None:
    """Same encoded vectors, same dropouts: the fast path's sum is the protocol's sum."""
    y, bits = _encoded(12, 20, seed=1)
    drops = {"share_keys": 1, "masked_input": 2, "unmask": 1}
    full = simulate_secagg(12, y.shape[1], bits=bits, dropout=drops, inputs=y, seed=5)
    crash = {u: phase for phase, ids in full.dropped.items() for u in ids}
    fast = secure_sum(12, y.shape[1], bits, y.__getitem__, crash=crash, mode="fast")
    assert fast.survivors == full.survivors
    np.testing.assert_array_equal(fast.sum, full.sum)
    assert fast.sum.dtype == full.sum.dtype == np.uint64
    assert full.exact


def test_fast_path_equals_our_full_driver_with_garbage_and_crashes() -> None:
    y, bits = _encoded(14, 9, seed=2)
    crash = {0: "advertise_keys", 3: "share_keys", 5: "masked_input", 8: "unmask"}
    garbage = {10}
    full = secure_sum(
        14,
        y.shape[1],
        bits,
        y.__getitem__,
        crash=crash,
        garbage=garbage,
        mode="full",
        neighbours=13,
        threshold=6,
    )
    fast = secure_sum(
        14, y.shape[1], bits, y.__getitem__, crash=crash, garbage=garbage, mode="fast"
    )
    assert full.survivors == fast.survivors
    assert 8 in full.survivors and 10 not in full.survivors  # unmask crash: input counted
    assert full.dropped["rejected"] == (10,)
    np.testing.assert_array_equal(full.sum, fast.sum)
    expected = y[list(full.survivors)].sum(axis=0) % (1 << bits)
    np.testing.assert_array_equal(full.sum, expected.astype(np.uint64))
    assert full.bytes_up[list(full.survivors)].min() > 0


def _cfg(**kw: object) -> FederatedMFConfig:
    base: dict[str, object] = {
        "factors": 2,
        "head_items": 8,
        "rounds": 3,
        "clients_per_round": 30,
        "noise_multiplier": 0.5,
        "server_lr": 0.05,
        "seed": 0,
        "clip_count_stddev": 5.0,
    }
    base.update(kw)
    return FederatedMFConfig.create(**base)


def test_full_protocol_round_with_faults_in_every_phase() -> None:
    faults = FaultModel(
        dropout=0.15, straggler=0.2, straggler_delay=10.0, round_timeout=5.0, garbage=0.05, seed=3
    )
    sim = FederatedSimulation(
        _cfg(min_survivor_fraction=0.3), _histories(), secure="full", faults=faults
    )
    reports = sim.run()
    done = [r for r in reports if not r["aborted"]]
    assert [r["round"] for r in done] == [1, 2, 3]
    assert sim.server.round == 3
    for r in done:
        assert r["survivors"] <= r["sampled"]
        assert r["bytes_up"] > 0 and r["secure"] == "secagg+ (full protocol)"
    lost = sum(sum(r["dropped"].values()) for r in done)
    assert lost > 0  # faults happened and the rounds still completed with the survivors
    assert sim.server.head_items is not None and len(sim.server.head_items) == 8


def test_too_many_dropouts_abort_with_a_named_reason_and_cost_nothing() -> None:
    sim = FederatedSimulation(
        _cfg(aggregation="distributed"),
        _histories(),
        faults=FaultModel(dropout=0.9, seed=1),
        max_retries=1,
        head_items=np.arange(8),
    )
    with pytest.raises(ProtocolAbort, match="masked inputs") as info:
        sim.run()
    assert info.value.phase == "masked_input"
    # the counting round (always first) is the one that aborts, twice
    aborted = [h for h in sim.server.history if h.get("aborted")]
    assert len(aborted) == 2 and all("at least" in h["reason"] for h in aborted)
    assert sim.server.spent == [] and sim.server.round == 0 and sim.server.needs_head


def test_central_server_rejects_garbage_and_uses_survivors() -> None:
    sim = FederatedSimulation(
        _cfg(aggregation="central", rounds=2), _histories(), faults=FaultModel(garbage=0.3, seed=2)
    )
    reports = sim.run()
    assert all(r["rejected"] > 0 and r["survivors"] < r["sampled"] for r in reports)
    assert sim.server.round == 2


def test_resume_after_a_crash_continues_exactly(tmp_path: Path) -> None:
    x = _histories()
    ref = FederatedSimulation(_cfg(rounds=4), x)
    ref.run()

    class CrashError(RuntimeError):
        pass

    def crash_after_two(report: object) -> None:
        if getattr(report, "round", 0) == 2:
            raise CrashError

    first = FederatedSimulation(_cfg(rounds=4), x, checkpoint_dir=tmp_path)
    with pytest.raises(CrashError):
        first.run(on_round=crash_after_two)
    again = FederatedSimulation.resume(tmp_path, x)
    assert again.server.round == 2
    again.run()
    srv, want = again.server, ref.server
    assert srv.round == 4
    np.testing.assert_allclose(srv.item_factors, want.item_factors, rtol=1e-12)
    assert srv.clip_norm == pytest.approx(want.clip_norm, rel=1e-12)
    assert srv.epsilon() == pytest.approx(want.epsilon(), rel=1e-12)
    assert [e.to_dict() for e in srv.spent] == [e.to_dict() for e in want.spent]
    assert len(again.reports) == 4


def test_validation_recall_is_reported() -> None:
    x = _histories()
    hist, tgt = x[:20], sp.csr_matrix(x[:20].shape)
    tgt = sp.csr_matrix(_histories(seed=9)[:20])
    sim = FederatedSimulation(
        _cfg(rounds=2, aggregation="central"), x, validation=(hist, tgt), eval_every=2
    )
    reports = sim.run()
    assert reports[0]["recall"] is None and 0.0 <= reports[1]["recall"] <= 1.0


def test_fault_model_validates() -> None:
    with pytest.raises(ConfigError):
        FaultModel(dropout=1.5)
    with pytest.raises(ConfigError):
        FaultModel(dropout_phases=("nope",))
    crash, garbage, _ = FaultModel(dropout=1.0, dropout_phases=PHASES).draw(
        50, np.random.default_rng(0)
    )
    assert set(crash.values()) <= set(PHASES) and len(crash) == 50 and not garbage
