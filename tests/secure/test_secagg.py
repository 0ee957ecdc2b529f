"""SecAgg+ protocol: exact sums under dropouts, aborts beyond the threshold, refusals, tampering."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privrec.errors import (
    ConfigError,
    DuplicateClientError,
    InvalidInputError,
    MessageRejected,
    ProtocolAbort,
    ProtocolError,
)
from privrec.secure import RoundConfig, SecAggClient, SecAggServer
from privrec.secure.messages import (
    EncryptedShare,
    RevealedShare,
    ShareDelivery,
    UnmaskRequest,
    decode,
)

from .driver import PHASES, expected_outcome, plain_sum, run_round

ROUND = bytes(range(16))


def _inputs(config: RoundConfig, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = (1 << config.bits) - 1
    return rng.integers(0, hi, size=(config.n, config.dim), dtype=np.uint64, endpoint=True)


@pytest.mark.parametrize("bits", [1, 8, 13, 16, 32, 40, 64])
def test_exact_sum_without_dropout(bits: int) -> None:
    config = RoundConfig.create(8, 50, bits, neighbours=4, threshold=3, round_id=ROUND)
    x = _inputs(config)
    result = run_round(config, x)
    assert result.sum.dtype == np.uint64
    assert result.survivors == tuple(range(8))
    np.testing.assert_array_equal(result.sum, plain_sum(config, x, set(range(8))))


def test_arbitrary_client_ids_and_complete_graph() -> None:
    ids = [3, 17, 400, 1_000_000, 9]
    config = RoundConfig.create(ids, 20, 16, neighbours=1.0, threshold=2)
    assert config.neighbours == 4
    x = _inputs(config, 1)
    result = run_round(config, x, {17: "masked_input"})
    expected = expected_outcome(config, {17: "masked_input"})
    assert expected is not None
    np.testing.assert_array_equal(result.sum, plain_sum(config, x, expected))


def _check_pattern(config: RoundConfig, x: np.ndarray, drops: dict[int, str]) -> bool:
    """Run one round; assert exact sum or abort as the protocol prescribes. True if summed."""
    expected = expected_outcome(config, drops)
    late = len(drops)
    if late <= config.neighbours - config.threshold and config.n - late >= config.min_survivors:
        assert expected is not None  # within the threshold the round must not abort
    if expected is None:
        with pytest.raises(ProtocolAbort):
            run_round(config, x, drops)
        return False
    result = run_round(config, x, drops)
    assert set(result.survivors) == expected
    np.testing.assert_array_equal(result.sum, plain_sum(config, x, expected))
    return True


@pytest.mark.parametrize("threshold", [2, 3])
def test_every_dropout_pattern_up_to_two_clients(threshold: int) -> None:
    # Exhaustive: 5 clients, k = 4, every choice of <= 2 clients and of their drop phases.
    config = RoundConfig.create(5, 4, 16, neighbours=4, threshold=threshold, round_id=ROUND)
    x = _inputs(config)
    outcomes = []
    for size in range(3):
        for who in itertools.combinations(range(5), size):
            for phases in itertools.product(PHASES, repeat=size):
                outcomes.append(_check_pattern(config, x, dict(zip(who, phases, strict=True))))
    assert len(outcomes) == 1 + 5 * 4 + 10 * 16
    assert all(outcomes) if threshold == 2 else 0 < sum(outcomes) < len(outcomes)


@settings(max_examples=120)
@given(
    n=st.integers(4, 12),
    k_frac=st.floats(0.3, 1.0),
    t_frac=st.floats(0.0, 1.0),
    bits=st.sampled_from([8, 20, 32, 64]),
    data=st.data(),
)
def test_every_dropout_pattern_gives_exact_sum_or_abort(
    n: int, k_frac: float, t_frac: float, bits: int, data: st.DataObject
) -> None:
    k = max(2, round(k_frac * (n - 1)))
    if k % 2 and n % 2:
        k = min(k + 1, n - 1)
    t = max(2, min(k, 2 + round(t_frac * (k - 2))))
    config = RoundConfig.create(n, 6, bits, neighbours=k, threshold=t, round_id=ROUND)
    drops = data.draw(
        st.dictionaries(st.integers(0, n - 1), st.sampled_from(PHASES), max_size=k - t + 2)
    )
    _check_pattern(config, _inputs(config, n), drops)


def test_abort_not_wrong_sum_beyond_threshold() -> None:
    config = RoundConfig.create(6, 10, 32, neighbours=5, threshold=4, round_id=ROUND)
    x = _inputs(config)
    # Two clients drop in the unmask phase: only 3 shares of each survivor remain.
    with pytest.raises(ProtocolAbort) as info:
        run_round(config, x, {0: "unmask", 1: "unmask"})
    assert info.value.phase == "unmask"
    assert "threshold" in info.value.reason
    # Too few masked inputs.
    config = RoundConfig.create(6, 10, 32, neighbours=5, threshold=2, min_survivors=4)
    with pytest.raises(ProtocolAbort) as info:
        run_round(config, x, {0: "masked_input", 1: "masked_input", 2: "masked_input"})
    assert info.value.phase == "masked_input"


def test_clients_refuse_to_reveal_both_shares() -> None:
    config = RoundConfig.create(6, 10, 32, neighbours=5, threshold=3, round_id=ROUND)
    x = _inputs(config)
    clients = {u: SecAggClient(config, u) for u in config.client_ids}
    server = SecAggServer(config)
    dirs = server.advertise_keys([c.advertise_keys() for c in clients.values()])
    deliveries = server.share_keys([clients[u].share_keys(d) for u, d in dirs.items()])
    masked = [clients[u].masked_input(d, x[u]) for u, d in deliveries.items()]
    requests = server.masked_input(masked)
    # A malicious server claims client 0 both survived and dropped, to unmask x_0:
    # it would need t shares of 0's self-mask seed AND of 0's mask key.
    revealed = []
    for v, req in requests.items():
        if v == 0:
            continue
        forged = dataclasses.replace(req, dropped=(0, *req.dropped))
        with pytest.raises(ProtocolAbort) as info:
            clients[v].unmask(forged)
        assert info.value.phase == "unmask"
        assert "refuses" in info.value.reason
        # Having refused, the client stays out of the round: no second chance to ask.
        with pytest.raises(ProtocolError):
            revealed.append(clients[v].unmask(req))
    assert revealed == []
    with pytest.raises(ProtocolAbort, match="threshold"):
        server.unmask([clients[0].unmask(requests[0])])


def test_client_refuses_inconsistent_view_and_tiny_survivor_count() -> None:
    config = RoundConfig.create(5, 4, 16, neighbours=4, threshold=2, min_survivors=3)
    clients = {u: SecAggClient(config, u) for u in config.client_ids}
    server = SecAggServer(config)
    dirs = server.advertise_keys([c.advertise_keys() for c in clients.values()])
    deliveries = server.share_keys([clients[u].share_keys(d) for u, d in dirs.items()])
    masked = [clients[u].masked_input(d, np.zeros(4, np.uint16)) for u, d in deliveries.items()]
    requests = server.masked_input(masked)
    req = requests[0]
    with pytest.raises(ProtocolAbort, match="survivors"):
        clients[0].unmask(dataclasses.replace(req, n_survivors=2))
    with pytest.raises(ProtocolAbort, match="inconsistent"):
        clients[1].unmask(dataclasses.replace(requests[1], survivors=requests[1].survivors[1:]))


def _deliveries(config: RoundConfig) -> tuple[dict[int, SecAggClient], dict[int, ShareDelivery]]:
    clients = {u: SecAggClient(config, u) for u in config.client_ids}
    server = SecAggServer(config)
    dirs = server.advertise_keys([c.advertise_keys() for c in clients.values()])
    return clients, server.share_keys([clients[u].share_keys(d) for u, d in dirs.items()])


def test_tampered_share_is_rejected() -> None:
    config = RoundConfig.create(5, 4, 16, neighbours=4, threshold=2)
    clients, deliveries = _deliveries(config)
    d = deliveries[2]
    first = d.shares[0]
    flipped = bytearray(first.ciphertext)
    flipped[5] ^= 0x01
    bad = dataclasses.replace(first, ciphertext=bytes(flipped))
    with pytest.raises(MessageRejected, match="authentication"):
        clients[2].masked_input(
            dataclasses.replace(d, shares=(bad, *d.shares[1:])), np.zeros(4, np.uint16)
        )


def test_share_replayed_into_another_round_is_rejected() -> None:
    config_a = RoundConfig.create(5, 4, 16, neighbours=4, threshold=2)
    config_b = dataclasses.replace(config_a, round_id=bytes(16))
    _, deliveries_a = _deliveries(config_a)
    clients_b, deliveries_b = _deliveries(config_b)
    old = deliveries_a[2].shares[0]
    # Relabel the old share as if it belonged to round B: the AEAD still binds round A.
    replayed = dataclasses.replace(old, round_id=config_b.round_id)
    d = deliveries_b[2]
    forged = dataclasses.replace(d, shares=(replayed, *d.shares[1:]))
    with pytest.raises(MessageRejected, match="authentication"):
        clients_b[2].masked_input(forged, np.zeros(4, np.uint16))
    # Unrelabelled, the round id alone gives it away.
    with pytest.raises(MessageRejected, match="another round"):
        clients_b[3].masked_input(
            dataclasses.replace(deliveries_b[3], round_id=config_a.round_id), np.zeros(4, np.uint16)
        )


def test_share_resent_to_another_receiver_is_rejected() -> None:
    config = RoundConfig.create(5, 4, 16, neighbours=4, threshold=2)
    clients, deliveries = _deliveries(config)
    # Client 0's share for client 1, relabelled and given to client 2 instead of 0's share.
    stolen = next(s for s in deliveries[1].shares if s.sender == 0)
    moved = dataclasses.replace(stolen, receiver=2)
    d = deliveries[2]
    shares = tuple(moved if s.sender == 0 else s for s in d.shares)
    with pytest.raises(MessageRejected, match="authentication"):
        clients[2].masked_input(dataclasses.replace(d, shares=shares), np.zeros(4, np.uint16))
    # Without relabelling, the receiver field mismatch is caught.
    shares = tuple(stolen if s.sender == 0 else s for s in d.shares)
    with pytest.raises(MessageRejected, match="addressed"):
        clients[2].masked_input(dataclasses.replace(d, shares=shares), np.zeros(4, np.uint16))
    # A rejected delivery leaves the client's state untouched: the genuine one still works.
    clients[2].masked_input(d, np.zeros(4, np.uint16))


def test_low_order_public_key_is_rejected() -> None:
    config = RoundConfig.create(4, 4, 8, neighbours=3, threshold=2)
    clients = {u: SecAggClient(config, u) for u in config.client_ids}
    server = SecAggServer(config)
    adverts = [c.advertise_keys() for c in clients.values()]
    adverts[1] = dataclasses.replace(adverts[1], enc_public_key=bytes(32))
    directories = server.advertise_keys(adverts)
    with pytest.raises(MessageRejected, match="invalid"):
        clients[0].share_keys(directories[0])


def test_bad_revealed_share_aborts() -> None:
    config = RoundConfig.create(5, 4, 16, neighbours=4, threshold=2, round_id=ROUND)
    x = _inputs(config)

    def corrupt(phase: str, msgs: dict[int, Any]) -> dict[int, Any]:
        if phase != "unmask":
            return msgs
        out = dict(msgs)
        for v in out:
            resp = out[v]
            share = resp.seed_shares[0]
            raw = bytearray(share.share)
            raw[0] ^= 0x01
            seed_shares = (RevealedShare(share.owner, bytes(raw)), *resp.seed_shares[1:])
            out[v] = dataclasses.replace(resp, seed_shares=seed_shares)
        return out

    with pytest.raises(ProtocolAbort, match="bad share"):
        run_round(config, x, to_server=corrupt)


def test_one_lying_neighbour_among_more_than_t_does_not_abort_the_round() -> None:
    """A reviewer's single neighbour revealing a wrong share aborted every round (the server
    rebuilt from the first t shares only); with more than t shares the server tries other
    t-subsets until the commitment checks, and the sum is exact. With only t shares a wrong one
    still aborts (nothing else could rebuild the secret)."""
    config = RoundConfig.create(6, 4, 16, neighbours=5, threshold=3, round_id=ROUND)
    x = _inputs(config, 3)

    def one_liar(phase: str, msgs: dict[int, Any]) -> dict[int, Any]:
        if phase != "unmask":
            return msgs
        out = dict(msgs)
        liar = min(out)
        resp = out[liar]
        shares = tuple(
            RevealedShare(s.owner, bytes(b ^ 0x5A for b in s.share)) for s in resp.seed_shares
        )
        out[liar] = dataclasses.replace(resp, seed_shares=shares)
        return out

    result = run_round(config, x, to_server=one_liar)
    np.testing.assert_array_equal(result.sum, plain_sum(config, x, set(range(6))))
    exact = RoundConfig.create(4, 4, 16, neighbours=3, threshold=3, round_id=ROUND)
    with pytest.raises(ProtocolAbort, match="bad share"):
        run_round(exact, _inputs(exact, 4), to_server=one_liar)


def test_server_rejects_duplicates_and_strangers() -> None:
    with pytest.raises(DuplicateClientError):
        RoundConfig.create([1, 2, 2, 3], 4)
    config = RoundConfig.create(4, 4, 8, neighbours=3, threshold=2)
    clients = [SecAggClient(config, u) for u in config.client_ids]
    adverts = [c.advertise_keys() for c in clients]
    server = SecAggServer(config)
    with pytest.raises(DuplicateClientError):
        server.advertise_keys([*adverts, adverts[0]])
    # the rejected batch left the server where it was: the clean batch is accepted
    assert set(server.advertise_keys(adverts)) == set(config.client_ids)
    stranger = dataclasses.replace(adverts[0], sender=99)
    with pytest.raises(MessageRejected, match="unknown client"):
        SecAggServer(config).advertise_keys([stranger])
    with pytest.raises(ConfigError):
        SecAggClient(config, 99)


def test_masked_input_replayed_to_another_round_rejected() -> None:
    config = RoundConfig.create(4, 4, 8, neighbours=3, threshold=2, round_id=ROUND)
    other = dataclasses.replace(config, round_id=bytes(16))
    clients, deliveries = _deliveries(config)
    msg = clients[0].masked_input(deliveries[0], np.ones(4, np.uint8))
    server_b = SecAggServer(other)
    server_b._phase = 2  # jump straight to the masked-input phase
    with pytest.raises(MessageRejected, match="another round"):
        server_b.masked_input([msg])


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros(5, np.uint8), "shape"),
        (np.zeros((2, 2), np.uint8), "shape"),
        (np.zeros(4, np.float64), "dtype"),
        (np.array([0, 1, 2, 256]), r"\[0, 2\*\*8\)"),
        (np.array([0, -1, 2, 3]), r"\[0, 2\*\*8\)"),
    ],
)
def test_bad_inputs_are_rejected(x: np.ndarray, match: str) -> None:
    config = RoundConfig.create(4, 4, 8, neighbours=3, threshold=2)
    clients, deliveries = _deliveries(config)
    with pytest.raises(InvalidInputError, match=match):
        clients[0].masked_input(deliveries[0], x)
    # Nothing was sent and the client can still take a valid input.
    clients[0].masked_input(deliveries[0], np.zeros(4, np.uint8))


def test_out_of_order_calls_fail() -> None:
    config = RoundConfig.create(4, 4, 8, neighbours=3, threshold=2)
    client = SecAggClient(config, 0)
    with pytest.raises(ProtocolError):
        client.unmask(UnmaskRequest(config.round_id, 0, (), (), 4))
    client.advertise_keys()
    with pytest.raises(ProtocolError):
        client.advertise_keys()


def test_masked_input_looks_uniform() -> None:
    # A constant input must be hidden: the masked words should be uniform over Z_{2^8}.
    config = RoundConfig.create(4, 200_000, 8, neighbours=3, threshold=2)
    clients, deliveries = _deliveries(config)
    msg = clients[1].masked_input(deliveries[1], np.full(200_000, 255, np.uint8))
    counts = np.bincount(msg.array(), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-6
    # and bit-level for a 32-bit modulus: every bit is 1 about half the time
    config = RoundConfig.create(4, 50_000, 32, neighbours=3, threshold=2)
    clients, deliveries = _deliveries(config)
    y = clients[0].masked_input(deliveries[0], np.zeros(50_000, np.uint32)).array()
    ones = np.unpackbits(y.view(np.uint8)).reshape(-1, 32).sum(axis=0).astype(np.int64)
    z = (ones - 25_000) / np.sqrt(50_000 / 4)
    assert np.abs(z).max() < 5.5


def test_messages_survive_the_wire() -> None:
    config = RoundConfig.create(4, 4, 8, neighbours=3, threshold=2)
    _, deliveries = _deliveries(config)
    raw = deliveries[0].to_bytes()
    assert decode(raw) == deliveries[0]
    assert ShareDelivery.from_bytes(raw) == deliveries[0]
    with pytest.raises(MessageRejected):
        EncryptedShare.from_bytes(raw)
    with pytest.raises(MessageRejected, match="truncated"):
        decode(raw[:-3])
    with pytest.raises(MessageRejected, match="trailing"):
        decode(raw + b"\x00")
    with pytest.raises(MessageRejected, match="magic"):
        decode(b"XXXX" + raw[4:])


def test_protocol_abort_carries_phase_and_reason_through_pickle() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ProtocolAbort("unmask", "too few shares")))
    assert (err.phase, err.reason) == ("unmask", "too few shares")
    assert isinstance(err, ProtocolError) and "unmask" in str(err)
