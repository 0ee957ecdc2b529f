"""The Flower apps' logic in one process: same handlers, every message and node state serialised.

Fast companions of ``test_flower_deploy.py``: they run the coordinator against the real
ClientApp handlers through :class:`~tests.flower.local.LocalTransport`, which serialises each
message and each node's ``Context`` as Flower would between processes, and inject faults a
real deployment would see (a node missing a phase, garbage, impersonation, aborts).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr (the [federated] extra) is not installed")

from flwr.app import ConfigRecord, RecordDict

from privrec.errors import ConfigError, MessageRejected, ProtocolAbort
from privrec.federated.flower.codec import (
    decode_messages,
    export_client,
    messages_record,
    restore_client,
    round_from_record,
    round_record,
)
from privrec.federated.flower.coordinator import Coordinator, parse_run_config
from privrec.federated.mf import FederatedMFServer
from privrec.secure.messages import MaskedInput
from privrec.secure.secagg import RoundConfig, SecAggClient, SecAggServer

from .local import (
    USERS,
    LocalTransport,
    full_matrix,
    identities,
    reference_round,
    round_log,
    run_config,
    training_loss,
)

PHASES = ("advertise_keys", "share_keys", "masked_input", "unmask")


def _train(ckpt: Path, transport: LocalTransport, **mf: Any) -> Coordinator:
    config, settings = parse_run_config(run_config(ckpt, **mf))
    coordinator = Coordinator(transport, config, settings, say=lambda _: None)
    coordinator.run()
    return coordinator


def _check_sums(ckpt: Path, rounds: list[int]) -> None:
    matrix = full_matrix()
    for r in rounds:
        ref = reference_round(ckpt, r, matrix)
        assert ref["exact"]
        assert np.linalg.norm(ref["decoded"] - ref["expected"]) <= ref["bound"]


# ----------------------------------------------------------------------------------------------
# Codec
# ----------------------------------------------------------------------------------------------


def test_client_state_survives_a_process_boundary_at_every_phase() -> None:
    config = RoundConfig.create(6, dim=5, bits=16, neighbours=4, threshold=3)
    blobs = {u: export_client(SecAggClient(config, u)) for u in config.client_ids}
    server = SecAggServer(config)

    def step(name: str, arg: dict[int, Any] | None, *extra: Any) -> dict[int, Any]:
        out = {}
        for u in sorted(blobs if arg is None else arg):
            client = restore_client(config, blobs[u])  # a fresh process per phase
            call = getattr(client, name)
            out[u] = call(*(() if arg is None else (arg[u],)), *(e[u] for e in extra))
            blobs[u] = export_client(client)
        return out

    adverts = step("advertise_keys", None)
    directories = server.advertise_keys(adverts.values())
    shares = step("share_keys", directories)
    deliveries = server.share_keys(shares.values())
    inputs = {u: np.arange(5, dtype=np.uint16) * (u + 1) for u in deliveries}
    del deliveries[5]  # user 5 drops out before masking
    masked = step("masked_input", deliveries, inputs)
    requests = server.masked_input(masked.values())
    result = server.unmask(step("unmask", requests).values())
    expected = np.sum([inputs[u].astype(np.uint64) for u in range(5)], axis=0) % (1 << 16)
    assert result.survivors == (0, 1, 2, 3, 4)
    assert result.sum.tolist() == expected.tolist()


def test_client_state_rejects_garbage() -> None:
    config = RoundConfig.create(4, dim=3, bits=8, neighbours=3, threshold=2)
    client = SecAggClient(config, 0)
    client.advertise_keys()
    blob = export_client(client)
    with pytest.raises(MessageRejected):
        restore_client(config, blob[:-3])
    with pytest.raises(MessageRejected):
        restore_client(config, blob + b"x")
    with pytest.raises(MessageRejected):
        restore_client(config, b"nope" + blob[4:])


def test_round_record_round_trip_and_version_check() -> None:
    config = RoundConfig.create([3, 7, 9], dim=4, bits=12, neighbours=2, threshold=2)
    rec = round_record(config, round_=2, attempt=1, kind="train", users=[7])
    back, meta = round_from_record(rec)
    assert back == config
    assert meta == {"round": 2, "attempt": 1, "kind": "train", "users": [7]}
    rec["protocol"] = "privrec-flower/0"
    with pytest.raises(MessageRejected, match="protocol"):
        round_from_record(rec)


def test_decode_messages_counts_garbage_without_raising() -> None:
    config = RoundConfig.create(3, dim=2, bits=8, neighbours=2, threshold=2)
    good = SecAggClient(config, 1).advertise_keys()
    rec = ConfigRecord({"msgs": [good.to_bytes(), b"garbage", good.to_bytes()[:-1]]})
    msgs, bad = decode_messages(rec, type(good))
    assert msgs == [good] and bad == 2
    assert decode_messages(rec, MaskedInput) == ([], 3)


def test_run_config_parsing() -> None:
    config, settings = parse_run_config(run_config(Path("/tmp/x"), secagg_bits=20))
    assert config.head_items is None and config.clients_per_round is None
    assert config.secagg_bits == 20 and settings.save_aggregates
    with pytest.raises(ConfigError, match="unknown run config key"):
        parse_run_config({"round-timeot": 3})
    central, settings = parse_run_config(run_config(Path("/tmp/x"), aggregation="central"))
    with pytest.raises(ConfigError, match="distributed"):
        Coordinator(LocalTransport(2), central, settings)


# ----------------------------------------------------------------------------------------------
# Training rounds
# ----------------------------------------------------------------------------------------------


def test_two_rounds_sum_exactly_and_improve_the_model(tmp_path: Path) -> None:
    transport = LocalTransport(3)
    _train(tmp_path, transport)
    # the counting round first; round 2's advertisements rode on round 1's unmask (pipelining)
    assert transport.calls == ["describe", *PHASES, *PHASES, *PHASES[1:]]
    (count,) = round_log(tmp_path, "count")
    assert (count["round"], count["survivors"], count["aborted"]) == (0, USERS, None)
    log = round_log(tmp_path)
    assert [(e["round"], e["survivors"], e["aborted"]) for e in log] == [
        (1, USERS, None),
        (2, USERS, None),
    ]
    _check_sums(tmp_path, [1, 2])
    matrix = full_matrix()
    losses = [training_loss(tmp_path / f"round-{r:04d}.npz", matrix) for r in (0, 1, 2)]
    assert losses[2] < losses[1] < losses[0]


def test_malicious_server_rounds_sign_and_cross_check_the_survivors(tmp_path: Path) -> None:
    pki, extra = identities(tmp_path)
    transport = LocalTransport(3, extra=extra)
    ckpt = tmp_path / "ck"
    config, settings = parse_run_config(
        {**run_config(ckpt), "mf.threat-model": "malicious", "pki": str(pki)}
    )
    Coordinator(transport, config, settings, say=lambda _: None).run()
    malicious = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")
    assert transport.calls == ["describe", *malicious, *malicious, *malicious[1:]]
    assert transport.errors == []
    assert [(e["survivors"], e["aborted"]) for e in round_log(ckpt)] == [(USERS, None)] * 2
    _check_sums(ckpt, [1, 2])
    g = FederatedMFServer.load(ckpt / "server.npz", population=USERS).guarantee()
    assert "malicious server" in g.threat_model


def test_nodes_refuse_forged_identity_keys_and_downgrades(tmp_path: Path) -> None:
    from privrec.federated.flower.identity import create_identities

    pki, extra = identities(tmp_path)
    forged = create_identities(range(USERS), 3, tmp_path / "forged")  # the server's own keys
    config, settings = parse_run_config(
        {**run_config(tmp_path / "a", rounds=1), "mf.threat-model": "malicious", "pki": str(forged)}
    )
    transport = LocalTransport(3, extra=extra)
    with pytest.raises(ProtocolAbort):
        Coordinator(transport, config, settings, say=lambda _: None).run()
    assert transport.errors and all("PKI" in e for e in transport.errors)
    # a node that requires malicious-server rounds refuses an honest-but-curious one
    transport = LocalTransport(3, extra=extra)
    config, settings = parse_run_config(run_config(tmp_path / "b", rounds=1))
    with pytest.raises(ProtocolAbort):
        Coordinator(transport, config, settings, say=lambda _: None).run()
    assert any("requires rounds secured against a malicious server" in e for e in transport.errors)
    with pytest.raises(ConfigError, match="pki"):
        Coordinator(
            LocalTransport(3),
            *parse_run_config({**run_config(tmp_path), "mf.threat-model": "malicious"}),
        )
    del pki


def test_without_pipelining_every_round_has_four_trips(tmp_path: Path) -> None:
    config, settings = parse_run_config({**run_config(tmp_path), "pipeline": False})
    transport = LocalTransport(3)
    Coordinator(transport, config, settings, say=lambda _: None).run()
    assert transport.calls == ["describe", *PHASES, *PHASES, *PHASES]  # count, 1, 2
    _check_sums(tmp_path, [1, 2])


def test_a_node_silent_in_unmask_keeps_its_input_but_misses_the_next_round(
    tmp_path: Path,
) -> None:
    unmasks = {"n": 0}

    def fault(action: str, node: int, reply: RecordDict) -> RecordDict | None:
        if action == "unmask" and node == 100:
            unmasks["n"] += 1
            if unmasks["n"] == 2:  # round 1's unmask (the first was the counting round's)
                return None  # also loses its users' pipelined advertisements for round 2
        return reply

    # the complete graph: on a sparse one (seeded by the random round id) a client left with
    # fewer than t live neighbours after node 100's users are gone is excluded too — a
    # fresh-clone run saw 21 survivors instead of 24
    config, settings = parse_run_config(
        {**run_config(tmp_path, min_survivor_fraction=0.5), "complete-graph": True}
    )
    Coordinator(LocalTransport(3, fault), config, settings, say=lambda _: None).run()
    first, second = round_log(tmp_path)
    assert first["survivors"] == USERS and first["dropped"]["unmask"] == USERS // 3
    assert second["survivors"] == USERS - USERS // 3
    assert second["dropped"]["advertise_keys"] == USERS // 3
    _check_sums(tmp_path, [1, 2])


def test_a_node_missing_the_masked_input_deadline_drops_out(tmp_path: Path) -> None:
    def fault(action: str, node: int, reply: RecordDict) -> RecordDict | None:
        return None if action == "masked_input" and node == 100 else reply

    config, settings = parse_run_config(  # the complete graph: see the test above
        {**run_config(tmp_path, rounds=1, min_survivor_fraction=0.5), "complete-graph": True}
    )
    Coordinator(LocalTransport(3, fault), config, settings, say=lambda _: None).run()
    (entry,) = round_log(tmp_path)
    assert entry["survivors"] == USERS - USERS // 3
    assert entry["dropped"]["masked_input"] == USERS // 3
    assert entry["nodes"]["masked_input"] == 2
    _check_sums(tmp_path, [1])  # the dropped users' pairwise masks were removed


def test_too_few_survivors_abort_and_retry_with_a_fresh_sample(tmp_path: Path) -> None:
    calls = {"n": 0}

    def fault(action: str, node: int, reply: RecordDict) -> RecordDict | None:
        if action == "share_keys" and node == 101 and calls["n"] == 0:
            calls["n"] += 1
            return None  # only in the first attempt
        return reply

    coordinator = _train(tmp_path, LocalTransport(3, fault), rounds=1)
    first, second = round_log(tmp_path, "count")  # the fault hit the first (counting) round
    assert first["aborted"].startswith("masked_input") and first["survivors"] == 0
    assert second["attempt"] == 1 and second["aborted"] is None
    srv = coordinator.server
    assert srv is not None and srv.round == 1
    assert [h.get("aborted", False) for h in srv.history] == [True, False]
    assert len(srv.spent) == 2  # counts and round 1: the abort was charged nothing
    _check_sums(tmp_path, [1])


def test_an_abort_after_the_unmask_request_is_charged_not_retried(tmp_path: Path) -> None:
    """A review (of federated DPALS, same coordinator code): an attempt that aborted in the
    unmask phase was retried for free, but the replies the server held could decode it. A
    training round is now charged as complete and its update discarded; a counting round stops
    the run unretried."""
    seen = {"n": 0}

    def fault(action: str, node: int, reply: RecordDict) -> RecordDict | None:
        if action == "unmask" and node == 100:
            seen["n"] += 1
        if action == "unmask" and node != 100 and seen["n"] == 2:  # round 1's unmask
            return None
        return reply

    config, settings = parse_run_config(
        {**run_config(tmp_path, noise_multiplier=1.0), "complete-graph": True}
    )
    coordinator = Coordinator(LocalTransport(3, fault), config, settings, say=lambda _: None)
    coordinator.run()
    srv = coordinator.server
    assert srv is not None and srv.round == 2
    assert [bool(h.get("discarded")) for h in srv.history] == [True, False]
    plain = _train(tmp_path / "plain", LocalTransport(3), noise_multiplier=1.0).server
    assert plain is not None and math.isfinite(plain.epsilon())
    assert srv.epsilon() == plain.epsilon()  # the same charges
    aborted = [e for e in round_log(tmp_path) if e["aborted"]]
    assert len(aborted) == 1 and aborted[0]["round"] == 1
    assert [e["attempt"] for e in round_log(tmp_path)].count(1) == 0  # never retried
    from privrec.federated.mf import FederatedMFServer

    resumed = FederatedMFServer.load(tmp_path / "server.npz", population=USERS)
    assert resumed.round == 2 and resumed.epsilon() == srv.epsilon()  # the charge survives

    def count_fault(action: str, node: int, reply: RecordDict) -> RecordDict | None:
        return None if action == "unmask" and node != 100 else reply

    with pytest.raises(ProtocolAbort, match="counting round is not retried"):
        _train(tmp_path / "count", LocalTransport(3, count_fault), rounds=1)


def test_a_crash_after_the_unmask_request_is_charged_on_resume(tmp_path: Path) -> None:
    """A third review: a crash (no protocol abort) after round 1's unmask request left nothing
    on disk, and the resumed run asked for round 1 again uncharged. A durable mark written
    before the request makes the resumed run charge that round (update discarded); a counting
    round that never completed refuses the run."""
    seen = {"n": 0}

    def crash(action: str, node: int, reply: RecordDict) -> RecordDict | None:
        if action == "unmask" and node == 100:
            seen["n"] += 1
            if seen["n"] == 2:  # round 1 (the first unmask was the counting round's)
                raise KeyboardInterrupt("server killed")
        return reply

    cfg = {**run_config(tmp_path, noise_multiplier=1.0), "pipeline": False}
    config, settings = parse_run_config(cfg)
    with pytest.raises(KeyboardInterrupt):
        Coordinator(LocalTransport(3, crash), config, settings, say=lambda _: None).run()
    assert (tmp_path / "round-0001.unmasking").exists()
    resumed = Coordinator(LocalTransport(3), config, settings, say=lambda _: None)
    resumed.run()
    srv = resumed.server
    assert srv is not None and srv.round == 2 and not (tmp_path / "round-0001.unmasking").exists()
    assert [bool(h.get("discarded")) for h in srv.history if "round" in h][-2:] == [True, False]
    plain = _train(tmp_path / "plain", LocalTransport(3), noise_multiplier=1.0).server
    assert plain is not None and srv.epsilon() == plain.epsilon()

    seen["n"] = 1  # the next unmask (a counting round's) crashes
    ckpt = tmp_path / "count"
    config, settings = parse_run_config({**run_config(ckpt), "pipeline": False})
    with pytest.raises(KeyboardInterrupt):
        Coordinator(LocalTransport(3, crash), config, settings, say=lambda _: None).run()
    with pytest.raises(ConfigError, match="counting round went past its unmask request"):
        Coordinator(LocalTransport(3), config, settings, say=lambda _: None).run()


def test_one_server_per_checkpoint_dir_and_no_silent_restart(tmp_path: Path) -> None:
    """A fourth review: two MF servers on one checkpoint-dir each released round 2 (one
    charge), and ``resume = false`` re-ran a finished run over its own checkpoint."""
    from privrec.federated.flower.run_lock import RunLock

    _train(tmp_path, LocalTransport(3), rounds=1)
    config, settings = parse_run_config({**run_config(tmp_path, rounds=1), "resume": False})
    transport = LocalTransport(3)
    with pytest.raises(ConfigError, match="resume is off"):
        Coordinator(transport, config, settings, say=lambda _: None).run()
    assert transport.calls == ["describe"]  # refused before any round
    held = RunLock(tmp_path)
    config, settings = parse_run_config(run_config(tmp_path, rounds=1))
    transport = LocalTransport(3)
    with pytest.raises(ConfigError, match="another server holds"):
        Coordinator(transport, config, settings, say=lambda _: None).run()
    assert transport.calls == ["describe"]
    held.close()
    Coordinator(LocalTransport(3), config, settings, say=lambda _: None).run()  # resumes


def test_a_resume_with_other_settings_or_without_its_checkpoint_is_refused(
    tmp_path: Path,
) -> None:
    """A fifth review: resuming with more rounds ran past the ε the noise was calibrated for,
    and a folder whose server.npz was lost started a fresh run over the old one's rounds."""
    _train(tmp_path, LocalTransport(3), rounds=1, noise_multiplier="", epsilon=5.0)
    config, settings = parse_run_config(
        run_config(tmp_path, rounds=6, noise_multiplier="", epsilon=5.0)
    )
    transport = LocalTransport(3)
    with pytest.raises(ConfigError, match=r"configured otherwise \(rounds\)"):
        Coordinator(transport, config, settings, say=lambda _: None).run()
    (tmp_path / "server.npz").unlink()
    config, settings = parse_run_config(
        run_config(tmp_path, rounds=1, noise_multiplier="", epsilon=5.0)
    )
    with pytest.raises(ConfigError, match=r"holds rounds of a run but no server\.npz"):
        Coordinator(transport, config, settings, say=lambda _: None).run()
    assert transport.calls == ["describe", "describe"]  # nothing asked of the devices


@pytest.mark.parametrize("key", ["resume", "save-aggregates", "pipeline", "complete-graph"])
def test_deploy_switches_must_be_booleans(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match="must be true or false"):
        parse_run_config({**run_config(tmp_path), key: "false"})


def test_a_run_without_checkpoint_dir_warns(tmp_path: Path) -> None:
    from privrec.errors import PrivacyWarning

    config, settings = parse_run_config({**run_config(tmp_path, rounds=1), "checkpoint-dir": ""})
    with pytest.warns(PrivacyWarning, match="no checkpoint-dir"):
        Coordinator(LocalTransport(3), config, settings, say=lambda _: None).run()


def test_retries_exhausted_stop_with_the_reason(tmp_path: Path) -> None:
    def fault(action: str, node: int, reply: RecordDict) -> RecordDict | None:
        return None if action == "advertise_keys" and node != 100 else reply

    with pytest.raises(ProtocolAbort, match="masked inputs, at least 28 required"):
        _train(tmp_path, LocalTransport(3, fault), rounds=1)
    assert [e["attempt"] for e in round_log(tmp_path, "count")] == [0, 1, 2]
    assert round_log(tmp_path) == []
    assert not (tmp_path / "server.npz").exists()  # nothing was released, nothing saved


def test_garbage_and_impersonation_are_dropped_not_fatal(tmp_path: Path) -> None:
    stolen: dict[str, Any] = {}

    def fault(action: str, node: int, reply: RecordDict) -> RecordDict | None:
        if action != "masked_input":
            return reply
        msgs, _ = decode_messages(reply.config_records["msgs"], MaskedInput)
        if node == 100:
            stolen["msg"] = msgs[0]
            return reply
        if node == 101:  # one user's masked vector is truncated
            bad = MaskedInput(msgs[0].round_id, msgs[0].sender, msgs[0].bits, msgs[0].values[:-2])
            return RecordDict({"msgs": messages_record([bad, *msgs[1:]])})
        # node 102 also replays a user of node 100 (it was not asked for that user)
        return RecordDict({"msgs": messages_record([*msgs, stolen["msg"]])})

    _train(tmp_path, LocalTransport(3, fault), rounds=1, min_survivor_fraction=0.5)
    (entry,) = round_log(tmp_path)
    assert entry["rejected"] == 2
    assert entry["survivors"] == USERS - 1
    _check_sums(tmp_path, [1])


def test_training_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    _train(tmp_path, LocalTransport(3), rounds=1)
    after_one = FederatedMFServer.load(tmp_path / "server.npz", population=USERS)
    transport = LocalTransport(3)
    _train(tmp_path, transport, rounds=2)
    assert transport.calls == ["describe", *PHASES]  # only round 2 ran
    resumed = FederatedMFServer.load(tmp_path / "server.npz", population=USERS)
    assert resumed.round == 2
    np.testing.assert_array_equal(
        FederatedMFServer.load(tmp_path / "round-0001.npz", population=USERS).item_factors,
        after_one.item_factors,
    )
    _check_sums(tmp_path, [2])


def test_private_head_selection_runs_a_secure_counting_round_first(tmp_path: Path) -> None:
    transport = LocalTransport(3)
    coordinator = _train(tmp_path, transport, head_items=12, rounds=1)
    assert transport.calls == ["describe", *PHASES, *PHASES]
    count, train = round_log(tmp_path, None)
    assert (count["kind"], count["round"], count["survivors"]) == ("count", 0, USERS)
    assert train["kind"] == "train"
    srv = coordinator.server
    assert srv is not None and srv.head_items is not None and srv.head_items.size == 12
    assert srv.item_factors.shape == (12, 4)
    assert srv.spent[0].label.startswith("counting round")
    _check_sums(tmp_path, [1])


def test_with_noise_the_spend_stays_within_the_budget(tmp_path: Path) -> None:
    coordinator = _train(tmp_path, LocalTransport(3), noise_multiplier="", epsilon=5.0)
    srv = coordinator.server
    assert srv is not None and srv.round == 2 and srv.noise_multiplier > 0
    eps = srv.epsilon()
    assert 0 < eps <= 5.0 * (1 + 1e-6)
    assert round_log(tmp_path)[-1]["epsilon"] == pytest.approx(eps)
    ref = reference_round(tmp_path, 1, full_matrix())
    # the clients' noise is in the sum: far more than rounding separates it from the clean sum
    assert np.linalg.norm(ref["decoded"] - ref["expected"]) > 3 * ref["bound"]


def test_node_rejects_bad_settings_and_incomplete_messages() -> None:
    from flwr.app import Context

    from privrec.errors import ProtocolError
    from privrec.federated.flower.node import handle, load_node_data

    from .local import node_config

    with pytest.raises(ConfigError, match="partition-id"):
        load_node_data({"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ConfigError, match="integer"):
        load_node_data({"partition-id": "zero"})
    ctx = Context(
        run_id=1, node_id=1, node_config=node_config(0, 1), state=RecordDict(), run_config={}
    )
    with pytest.raises(MessageRejected, match="'round'"):
        handle("advertise_keys", RecordDict(), ctx)
    with pytest.raises(ProtocolError, match="no SecAgg round"):
        handle("share_keys", RecordDict({"meta": ConfigRecord({"round-id": b"r" * 16})}), ctx)
    with pytest.raises(ConfigError, match="unknown action"):
        handle("train", RecordDict(), ctx)


def test_nodes_refuse_noise_free_rounds_and_seeds_unless_in_test_mode(tmp_path: Path) -> None:
    transport = LocalTransport(3, test_mode=False)
    with pytest.raises(ProtocolAbort, match="masked inputs"):
        _train(tmp_path / "refused", transport, rounds=1)
    assert transport.errors and all("refuses" in e for e in transport.errors)

    def sum_mod(name: str, test_mode: bool) -> np.ndarray:
        _train(
            tmp_path / name, LocalTransport(3, test_mode=test_mode), noise_multiplier=1.0, rounds=1
        )
        out: np.ndarray = np.load(tmp_path / name / "aggregate-0001.npz")["sum_mod"]
        return out

    # the server's seed is honoured only in test mode: otherwise the noise is fresh each time
    assert np.array_equal(sum_mod("t1", True), sum_mod("t2", True))
    assert not np.array_equal(sum_mod("p1", False), sum_mod("p2", False))


def test_a_learnable_head_smaller_than_the_payload_sums_exactly_with_zero_padding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distributed DP's learnable head on Flower: the nodes get the learnable head's factors
    and the planned payload length, and send zeros past the learnable rows; the sums equal the
    local reference (the simulation's device code) exactly. The tiny data set cannot make the
    rule fire (it keeps at least 100 items), so it is forced to 5 of the 12 planned items."""
    from privrec.federated import server_counting

    monkeypatch.setattr(
        server_counting, "learnable_head_size", lambda srv, items, n, t=None, lengths=None: 5
    )
    coordinator = _train(tmp_path, LocalTransport(3), head_items=12)
    srv = coordinator.server
    assert srv is not None and srv.head_items is not None
    assert srv.head_items.size == 5 and srv.payload_rows == 12
    assert srv.item_factors.shape == (5, 4) and srv.payload_dim == 12 * 4 + 1
    _check_sums(tmp_path, [1, 2])
    for r in (1, 2):
        ref = reference_round(tmp_path, r, full_matrix())
        assert not ref["expected"][5 * 4 : -1].any()
        assert np.abs(ref["decoded"][5 * 4 : -1]).max() <= ref["bound"]  # rounding only


def test_node_refuses_a_hostile_head_before_use() -> None:
    """A training round whose head, factors and payload length disagree is refused with a
    DataError before any user's update is computed."""
    from privrec.errors import DataError
    from privrec.federated.flower.node import (
        _mf_payloads,
        load_node_data,
        model_record,
    )
    from privrec.federated.mf import FederatedMFConfig, RoundSpec

    from .local import node_config

    cfg = FederatedMFConfig.create(noise_multiplier=0.0, factors=2, head_items=None, seed=1)
    srv = FederatedMFServer(cfg, n_items=24, population=USERS)
    data = load_node_data(node_config(0, 1))

    def payloads(factors: np.ndarray, head: np.ndarray, dim: int, ddp_dim: int) -> Any:
        spec = RoundSpec(1, 1.0, 1.0, 0.0, dim, "distributed", srv.ddp_config(ddp_dim))
        content = RecordDict({"model": model_record(factors, head)})
        meta = {"kind": "train", "round": 1, "attempt": 0}
        return _mf_payloads(content, data, [0, 1], meta, True, mf_config=cfg, spec=spec)

    y, head = np.ones((3, 2)), np.array([2, 5, 9])
    good, _ = payloads(y, head, 7, 7)
    assert good[0].shape == (7,)
    with pytest.raises(DataError, match="increasing"):
        payloads(y, np.array([9, 2, 5]), 7, 7)
    with pytest.raises(DataError, match="do not match"):
        payloads(np.ones((4, 2)), head, 7, 7)
    with pytest.raises(DataError, match="payload length"):
        payloads(y, head, 5, 5)  # fewer rows than the head
    with pytest.raises(DataError, match="payload length"):
        payloads(y, head, 2 * 25 + 1, 2 * 25 + 1)  # more rows than the catalogue
    with pytest.raises(DataError, match="distributed-DP encoding"):
        payloads(y, head, 7, 9)


# ----------------------------------------------------------------------------------------------
# A lying server: round settings no honest server sends
# ----------------------------------------------------------------------------------------------


def _round_message(kind: str = "train") -> tuple[ConfigRecord, RoundConfig, Any]:
    """An honest server's masked-input task and SecAgg round for a 12-item head (noise 1)."""
    from privrec.federated.flower.codec import ddp_to_json
    from privrec.federated.flower.node import mf_config_json, task_record
    from privrec.federated.mf import FederatedMFConfig

    from .local import ITEMS

    cfg = FederatedMFConfig.create(noise_multiplier=1.0, factors=2, head_items=12, seed=1)
    srv = FederatedMFServer(cfg, n_items=ITEMS, population=USERS)
    srv.select_head(np.zeros(srv.count_dim), survivors=USERS, sampled=USERS)
    if kind == "count":
        enc = srv.count_encoder()
        task = task_record(
            mf_config_json=mf_config_json(cfg), ddp_json=ddp_to_json(enc.config), noise=True,
            round_=0,
        )  # fmt: skip
    else:
        enc, spec = srv.encoder(), srv.round_spec()
        task = task_record(
            mf_config_json=mf_config_json(cfg), ddp_json=ddp_to_json(enc.config), noise=True,
            round_=1, clip_norm=spec.clip_norm, value_scale=spec.value_scale,
            bit_scale=spec.bit_scale, payload_dim=spec.dim,
        )  # fmt: skip
    rc = RoundConfig.create(
        list(range(USERS)), enc.encoded_dim, enc.bits, min_survivors=srv.round_min_survivors(USERS)
    )
    return task, rc, srv


def _with(task: ConfigRecord, ddp: dict[str, Any] | None = None, **fields: Any) -> ConfigRecord:
    """The task with some fields (and some distributed-DP settings) replaced."""
    import json

    out = ConfigRecord(dict(task))
    if ddp:
        out["ddp"] = json.dumps({**json.loads(str(task["ddp"])), **ddp})
    for key, value in fields.items():
        out[key.replace("_", "-")] = value
    return out


def test_check_round_spec_accepts_an_honest_round() -> None:
    from privrec.federated.flower.node import check_round_spec

    task, rc, srv = _round_message()
    ddp, cfg, spec = check_round_spec(task, rc, "train", srv.n_items)
    assert spec == srv.round_spec() and ddp == srv.encoder().config and cfg == srv.config
    task, rc, srv = _round_message("count")
    ddp, _, spec = check_round_spec(task, rc, "count", srv.n_items)
    assert spec is None and ddp.dim == srv.count_dim


@pytest.mark.parametrize(
    ("ddp", "fields", "match"),
    [
        ({"noise_multiplier": float("nan")}, {}, "noise"),
        ({"noise_multiplier": float("inf")}, {}, "noise"),
        ({"noise_multiplier": 0.0}, {}, "noise"),
        ({"noise_multiplier": -1.0}, {}, "noise"),
        ({"clip": -1.0}, {}, "clip"),
        ({"gamma": float("nan")}, {}, "gamma"),
        ({"bits": 80}, {}, "bits"),
        ({"beta": 1.5}, {}, "beta"),
        ({"min_survivors": 10_000}, {}, "noise shares"),  # each device would add too little
        ({"max_clients": 1}, {}, "max_clients"),
        ({}, {"clip_norm": float("nan")}, "clip-norm"),
        ({}, {"clip_norm": 0.0}, "clip-norm"),
        ({}, {"clip_norm": -1.0}, "clip-norm"),
        ({}, {"value_scale": float("inf")}, "value-scale"),
        ({}, {"value_scale": 0.0}, "value-scale"),
        ({}, {"bit_scale": -0.5}, "bit-scale"),
        ({}, {"bit_scale": 0.0}, "bit-scale"),  # adaptive clipping needs the clip bit
        ({}, {"value_scale": 5.0}, "norm"),  # a payload above the sensitivity bound
        ({"dim": 2**40}, {"payload_dim": 2**40}, "dimension"),  # the SecAgg round is smaller
        ({}, {"payload_dim": 12 * 2}, "payload dimension"),  # not whole rows
        ({"dim": 27}, {}, "payload dimension"),  # the task (25) and the encoding disagree
    ],
)
def test_node_refuses_a_hostile_round_spec(
    ddp: dict[str, Any], fields: dict[str, Any], match: str
) -> None:
    from privrec.errors import PrivrecError
    from privrec.federated.flower.node import check_round_spec

    task, rc, srv = _round_message()
    with pytest.raises(PrivrecError, match=match) as info:
        check_round_spec(_with(task, ddp, **fields), rc, "train", srv.n_items)
    assert isinstance(info.value, MessageRejected | ConfigError)


def test_a_huge_dimension_is_refused_by_what_the_node_derives_itself() -> None:
    """A server that makes the SecAgg round, the encoding and the payload length agree on an
    absurd dimension is still refused: a training payload is at most ``min(head_items,
    n_items)·factors + 1`` long (the node's own catalogue), a count vector exactly this
    catalogue's length — before the encoder (whose rotation is sized by it) exists."""
    from privrec.federated.flower.node import check_round_spec

    task, rc, srv = _round_message()
    huge = 2**40 + 1  # whole rows of 2 factors
    big_rc = RoundConfig.create(list(range(USERS)), 2**41, rc.bits, min_survivors=rc.min_survivors)
    with pytest.raises(MessageRejected, match="planned head's 12 rows"):
        check_round_spec(_with(task, {"dim": huge}, payload_dim=huge), big_rc, "train", 24)
    # the config's head_items is the server's word too; the node's catalogue still bounds it
    wide = _with(task, {"dim": huge}, payload_dim=huge)
    wide["mf-config"] = srv.config.model_copy(update={"head_items": 2**39}).model_dump_json()
    with pytest.raises(MessageRejected, match="planned head's 24 rows"):
        check_round_spec(wide, big_rc, "train", 24)
    count, crc, _ = _round_message("count")
    big_crc = RoundConfig.create(
        list(range(USERS)), 2**40, crc.bits, min_survivors=crc.min_survivors
    )
    with pytest.raises(MessageRejected, match="catalogue"):
        check_round_spec(_with(count, {"dim": 2**40}), big_crc, "count", 24)


class _LyingServer(LocalTransport):
    """The coordinator's masked-input messages of training rounds rewritten by ``edit``."""

    def __init__(self, edit: Any) -> None:
        super().__init__(3)
        self.edit = edit

    def exchange(self, action: str, contents: Any, *, timeout: float, group: str) -> Any:
        if action == "masked_input":
            out = {}
            for node, content in contents.items():
                task = content.config_records["task"]
                if int(task["payload-dim"]) > 0:  # a training round, not the counting round
                    content = RecordDict(
                        {**content.config_records, **content.array_records, "task": self.edit(task)}
                    )
                out[node] = content
            contents = out
        return super().exchange(action, contents, timeout=timeout, group=group)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: _with(t, {"noise_multiplier": 0.0}),
        lambda t: _with(t, value_scale=float("nan")),
        lambda t: _with(t, {"dim": 2**40}, payload_dim=2**40),
    ],
    ids=["no-noise", "nan-scale", "huge-dim"],
)
def test_nodes_refuse_a_lying_server_before_computing_or_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Any
) -> None:
    """Through the real handlers: every node refuses the training round's message (the round
    aborts, nothing is released) and never builds a distributed-DP encoder for it, nor
    computes an update."""
    import privrec.federated.client as client_module
    import privrec.privacy.distributed as ddp_module

    built: list[int] = []
    real = ddp_module.DistributedDPEncoder

    class Watched(real):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any) -> None:
            built.append(int(config.dim))
            super().__init__(config)

    def no_update(*a: Any, **k: Any) -> Any:
        raise AssertionError("an update was computed for a refused round")

    monkeypatch.setattr(ddp_module, "DistributedDPEncoder", Watched)  # what the node imports
    monkeypatch.setattr(client_module, "client_update", no_update)
    transport = _LyingServer(edit)
    with pytest.raises(ProtocolAbort):
        _train(tmp_path, transport, rounds=1, noise_multiplier=1.0)
    refused = [e for e in transport.errors if e.startswith("masked_input")]
    assert len(refused) == 3 * 3  # every node, every attempt
    assert all("round setting" in e or "dimension" in e for e in refused)
    assert max(built) < 2**20  # only the counting round's encoders were built
    assert round_log(tmp_path) and all(e["aborted"] for e in round_log(tmp_path))


# ----------------------------------------------------------------------------------------------
# What a node sends = what the simulation's device sends
# ----------------------------------------------------------------------------------------------


class _Recording(LocalTransport):
    """Keeps every message the coordinator sends, by phase and node."""

    def __init__(self) -> None:
        super().__init__(3)
        self.sent: list[tuple[str, dict[int, RecordDict]]] = []

    def exchange(self, action: str, contents: Any, *, timeout: float, group: str) -> Any:
        self.sent.append((action, dict(contents)))
        return super().exchange(action, contents, timeout=timeout, group=group)


def test_node_payloads_equal_the_simulated_devices_with_the_head_rule_firing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learnable-head rule fires for real (its floor lowered to 2 items for the tiny data
    set): the head is cut below the 12 planned rows. For every training round and every user,
    the float payload a Flower node computes from the message it received (before encoding and
    masking) equals the simulation's device payload for that user from the server state before
    the round (:meth:`FederatedSimulation._payloads`), zeros past the learnable head included;
    and the round's secure sum is exactly those payloads encoded with the nodes' seeded
    (test-mode) rounding and noise."""
    from privrec.federated import server_counting
    from privrec.federated.flower.node import (
        _mf_payloads,
        _user_rng,
        check_round_spec,
        load_node_data,
    )
    from privrec.federated.training import FederatedSimulation
    from privrec.privacy.distributed import DistributedDPEncoder

    from .local import node_config

    monkeypatch.setattr(server_counting, "HEAD_MINIMUM", 2)
    transport = _Recording()
    run = {**run_config(tmp_path, head_items=12, noise_multiplier=1.0, head_snr=14.0)}
    config, settings = parse_run_config({**run, "pipeline": False})
    Coordinator(transport, config, settings, say=lambda _: None).run()
    final = FederatedMFServer.load(tmp_path / "server.npz", population=USERS)
    assert final.head_items is not None and final.payload_rows == 12
    n_head, k = final.head_items.size, config.factors
    assert 2 <= n_head < 12  # the rule fired
    matrix = full_matrix()
    records = {  # (round, node) -> the round description the node got in phase 1
        (int(c["round"]["round"]), node): c["round"]
        for action, contents in transport.sent
        if action == "advertise_keys"
        for node, c in contents.items()
    }
    masked = [c for a, c in transport.sent if a == "masked_input"][1:]  # [0]: the count
    assert len(masked) == 2
    for r, contents in enumerate(masked, start=1):
        before = FederatedMFServer.load(tmp_path / f"round-{r - 1:04d}.npz", population=USERS)
        sim = FederatedSimulation(before.config, matrix, server=before)
        expected, _, _ = sim._payloads(np.arange(USERS), np.ones(USERS, dtype=bool))
        assert expected.shape == (USERS, 12 * k + 1) and not expected[:, n_head * k : -1].any()
        enc = DistributedDPEncoder(before.encoder().config)
        total = np.zeros(enc.encoded_dim, dtype=np.uint64)
        seen = 0
        for node, content in contents.items():
            data = load_node_data(node_config(node - 100, 3))
            rc, meta = round_from_record(records[(r, node)])
            task = content.config_records["task"]
            _, mf_config, spec = check_round_spec(task, rc, "train", data.n_items)
            users = [int(u) for u in data.user_ids]
            sent, _ = _mf_payloads(content, data, users, meta, True, mf_config=mf_config, spec=spec)
            for u, payload in sent.items():
                np.testing.assert_allclose(payload, expected[u], rtol=1e-9, atol=1e-12)
                total += enc.encode(payload, _user_rng(config.seed, r, meta["attempt"], u))
                seen += 1
        assert seen == USERS
        total &= np.uint64((1 << enc.bits) - 1)
        agg = np.load(tmp_path / f"aggregate-{r:04d}.npz")
        assert agg["survivors"].size == USERS
        np.testing.assert_array_equal(total, agg["sum_mod"])
