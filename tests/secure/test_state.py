"""SecAgg+ client state export/restore: resumable between processes, refuses anything foreign."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from privrec.errors import ConfigError, MessageRejected, ProtocolAbort, ProtocolError
from privrec.secure import RoundConfig, SecAggClient, SecAggServer, client_state
from privrec.secure.messages import KeyDirectory, UnmaskRequest
from privrec.secure.round import id_bytes

ROUND = bytes(range(16))
KEY = bytes(range(32))
HEADER = 46  # magic 3, version 1, mode 1, round digest 32, client id 8, step 1


def _config(**kw: Any) -> RoundConfig:
    base: dict[str, Any] = {"neighbours": 4, "threshold": 3, "round_id": ROUND}
    base.update(kw)
    return RoundConfig.create(6, dim=7, bits=20, **base)


def _inputs(config: RoundConfig) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        u: rng.integers(0, 1 << config.bits, size=config.dim, dtype=np.uint64)
        for u in config.client_ids
    }


def _run(
    config: RoundConfig,
    inputs: dict[int, np.ndarray],
    hop: Callable[[SecAggClient], SecAggClient],
    drop: int | None = None,
) -> Any:
    """One round; ``hop`` is applied to every client before each phase (a process boundary)."""
    server = SecAggServer(config)
    clients = {u: hop(SecAggClient(config, u)) for u in config.client_ids}
    adverts = [clients[u].advertise_keys() for u in sorted(clients)]
    clients = {u: hop(c) for u, c in clients.items()}
    directories = server.advertise_keys(adverts)
    shares = [clients[u].share_keys(d) for u, d in directories.items()]
    clients = {u: hop(c) for u, c in clients.items()}
    deliveries = server.share_keys(shares)
    if drop is not None:
        del deliveries[drop]
    masked = [clients[u].masked_input(d, inputs[u]) for u, d in deliveries.items()]
    clients = {u: hop(c) for u, c in clients.items()}
    requests = server.masked_input(masked)
    responses = [clients[u].unmask(r) for u, r in requests.items()]
    clients = {u: hop(c) for u, c in clients.items()}
    return server.unmask(responses), clients


def _hop_plain(client: SecAggClient) -> SecAggClient:
    return SecAggClient.restore_state(client.export_state(), client.config)


def _hop_sealed(client: SecAggClient) -> SecAggClient:
    data = client.export_state(key=KEY)
    return SecAggClient.restore_state(data, client.config, key=KEY, client_id=client.client_id)


@pytest.mark.parametrize("hop", [_hop_plain, _hop_sealed], ids=["plain", "sealed"])
@pytest.mark.parametrize("drop", [None, 4])
def test_round_through_state_at_every_phase_gives_the_uninterrupted_sum(
    hop: Callable[[SecAggClient], SecAggClient], drop: int | None
) -> None:
    config = _config()
    inputs = _inputs(config)
    reference, _ = _run(config, inputs, lambda c: c, drop)
    resumed, clients = _run(config, inputs, hop, drop)
    survivors = [u for u in config.client_ids if u != drop]
    expected = np.sum([inputs[u] for u in survivors], axis=0) % (1 << config.bits)
    assert resumed.survivors == reference.survivors == tuple(survivors)
    assert resumed.sum.tolist() == reference.sum.tolist() == expected.tolist()
    with pytest.raises(ProtocolError, match="out of order"):  # finished: answers nothing more
        clients[0].unmask(UnmaskRequest(config.round_id, 0, (), (), 6))


def test_restored_client_behaves_exactly_like_the_original() -> None:
    """Masking and unmasking are deterministic given the state: a restored copy answers alike."""
    config = _config()
    inputs = _inputs(config)
    server = SecAggServer(config)
    clients = {u: SecAggClient(config, u) for u in config.client_ids}
    directories = server.advertise_keys([c.advertise_keys() for c in clients.values()])
    deliveries = server.share_keys([clients[u].share_keys(d) for u, d in directories.items()])
    copies = {u: _hop_sealed(c) for u, c in clients.items()}
    masked = {u: clients[u].masked_input(d, inputs[u]) for u, d in deliveries.items()}
    for u, d in deliveries.items():
        assert copies[u].masked_input(d, inputs[u]).to_bytes() == masked[u].to_bytes()
    requests = server.masked_input(masked.values())
    copies = {u: _hop_plain(c) for u, c in clients.items()}
    for u, r in requests.items():
        assert copies[u].unmask(r).to_bytes() == clients[u].unmask(r).to_bytes()


def test_state_holds_only_what_later_phases_need() -> None:
    config = _config()
    server = SecAggServer(config)
    clients = {u: SecAggClient(config, u) for u in config.client_ids}
    fresh = clients[0].export_state()
    directories = server.advertise_keys([c.advertise_keys() for c in clients.values()])
    c0 = clients[0]
    assert c0._mask_key is not None
    secrets = [c0._seed, c0._mask_key.private_bytes_raw()]
    after_adv = c0.export_state()
    assert all(s in after_adv for s in secrets)
    deliveries = server.share_keys([clients[u].share_keys(d) for u, d in directories.items()])
    after_share = c0.export_state()
    assert all(s in after_share for s in secrets)
    c0.masked_input(deliveries[0], np.zeros(config.dim, dtype=np.uint32))
    after_mask = c0.export_state()
    assert not any(s in after_mask for s in secrets)  # own secrets no longer needed
    restored = SecAggClient.restore_state(after_mask, config)
    assert restored._mask_key is None and restored._seed == b""
    # header + checksum only, before any secret exists
    assert len(fresh) == len(SecAggClient(config, 1).export_state()) == HEADER + 32
    # 3 keys/seeds + the server's round key + 4 neighbours * (id + 3 * 32 bytes): compact, no pickle
    assert len(after_share) == HEADER + 96 + 32 + 4 + 4 * 104 + 32


def test_aborted_client_state_carries_no_secrets_and_stays_aborted() -> None:
    config = _config()
    client = SecAggClient(config, 0)
    client.advertise_keys()
    with pytest.raises(ProtocolAbort):
        client.share_keys(KeyDirectory(config.round_id, 0, ()))
    data = client.export_state()
    assert len(data) == HEADER + 32
    restored = SecAggClient.restore_state(data, config)
    with pytest.raises(ProtocolError, match="aborted"):
        restored.share_keys(KeyDirectory(config.round_id, 0, ()))


def _state_at_share_keys(key: bytes | None = None) -> tuple[RoundConfig, bytes]:
    config = _config()
    server = SecAggServer(config)
    clients = {u: SecAggClient(config, u) for u in config.client_ids}
    directories = server.advertise_keys([c.advertise_keys() for c in clients.values()])
    clients[2].share_keys(directories[2])
    return config, clients[2].export_state(key=key)


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "sealed"])
def test_every_tampered_byte_is_refused(key: bytes | None) -> None:
    config, data = _state_at_share_keys(key)
    SecAggClient.restore_state(data, config, key=key)
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(MessageRejected):
            SecAggClient.restore_state(bytes(bad), config, key=key)
    for cut in (0, 3, HEADER - 1, HEADER, len(data) - 1):
        with pytest.raises(MessageRejected):
            SecAggClient.restore_state(data[:cut], config, key=key)
    with pytest.raises(MessageRejected):
        SecAggClient.restore_state(data + b"\0", config, key=key)


def test_foreign_round_client_key_and_version_are_refused() -> None:
    config, data = _state_at_share_keys()
    other_round = dataclasses.replace(config, round_id=bytes(range(1, 17)))
    with pytest.raises(MessageRejected, match="another round"):
        SecAggClient.restore_state(data, other_round)
    other_threshold = dataclasses.replace(config, threshold=2)
    with pytest.raises(MessageRejected, match="another round"):
        SecAggClient.restore_state(data, other_threshold)
    with pytest.raises(MessageRejected, match="expected 3"):
        SecAggClient.restore_state(data, config, client_id=3)
    with pytest.raises(MessageRejected, match="version"):
        SecAggClient.restore_state(data[:3] + b"\x01" + data[4:], config)
    with pytest.raises(MessageRejected, match="magic"):
        SecAggClient.restore_state(b"PSA" + data[3:], config)
    # no downgrade: a plain state is refused where a sealed one is expected, and vice versa
    with pytest.raises(MessageRejected, match="sealed"):
        SecAggClient.restore_state(data, config, key=KEY)
    _, sealed = _state_at_share_keys(KEY)
    with pytest.raises(MessageRejected, match="sealed"):
        SecAggClient.restore_state(sealed, config)
    with pytest.raises(MessageRejected, match="authentication"):
        SecAggClient.restore_state(sealed, config, key=AESGCM.generate_key(bit_length=256))
    with pytest.raises(ConfigError, match="32 bytes"):
        SecAggClient(config, 0).export_state(key=b"short")
    with pytest.raises(MessageRejected, match="bytes"):
        SecAggClient.restore_state("not bytes", config)  # type: ignore[arg-type]


def _frame(config: RoundConfig, client_id: int, step: int, body: bytes) -> bytes:
    header = client_state.HEADER.pack(b"PSS", 2, 0, config.digest, client_id, step)
    return client_state.seal_state(header, body, None)


def test_well_framed_but_inconsistent_state_is_refused() -> None:
    """A correct checksum is not enough: the content must fit the round."""
    assert client_state.HEADER.size == HEADER
    config, data = _state_at_share_keys()
    body = data[HEADER:-32]
    assert SecAggClient.restore_state(_frame(config, 2, 2, body), config).client_id == 2
    with pytest.raises(MessageRejected, match="not in this round"):
        SecAggClient.restore_state(_frame(config, 99, 2, body), config)
    with pytest.raises(MessageRejected, match="unknown step"):
        SecAggClient.restore_state(_frame(config, 2, 7, body), config)
    with pytest.raises(MessageRejected, match="trailing"):
        SecAggClient.restore_state(_frame(config, 2, 1, body), config)
    nbrs = sorted(config.neighbour_sets[2])
    outsider = next(u for u in config.client_ids if u != 2 and u not in nbrs)
    # keys and seed (96 bytes), the server's round key (32), then the neighbour count (4)
    swapped = body[:132] + id_bytes(outsider) + body[140:]  # first record's id
    with pytest.raises(MessageRejected, match="unknown ids"):
        SecAggClient.restore_state(_frame(config, 2, 2, swapped), config)
    few = body[:128] + (2).to_bytes(4, "little") + body[132 : 132 + 2 * 104]
    with pytest.raises(MessageRejected, match="entries, expected"):
        SecAggClient.restore_state(_frame(config, 2, 2, few), config)


@settings(max_examples=200, deadline=None)
@given(step=st.sampled_from([0, 1, 2, 3, 4, 5, 255]), body=st.binary(max_size=600))
def test_arbitrary_well_framed_bodies_raise_only_message_rejected(step: int, body: bytes) -> None:
    config = _config()
    try:
        client = SecAggClient.restore_state(_frame(config, 1, step, body), config)
    except MessageRejected:
        return
    assert client.client_id == 1
