"""Hostile servers and links: the lying-server attack, key substitution, flipped bits.

The attack (issue 11): a server tells half of one client's neighbours that the client dropped
out (they reveal shares of its mask key) and the other half that it survived (they reveal
shares of its self-mask seed). With both secrets it removes every mask of that client's input.
Against the honest-but-curious parameters this works -- the test documents the limit of that
threat model -- and against ``threat_model="malicious"`` it does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from privrec.errors import ConfigError, MessageRejected, ProtocolAbort, ProtocolError
from privrec.federated import simulate_secagg
from privrec.secure import RoundConfig, SecAggClient, SecAggServer, generate_identities, shamir
from privrec.secure.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    KeyDirectory,
    MaskedInput,
    Signature,
    UnmaskRequest,
    decode,
)
from privrec.secure.prg import add_mask
from privrec.secure.round import commit, kdf, raw_public

N, DIM, BITS = 20, 8, 32
TARGET = 0


def _round(threat: str) -> tuple[RoundConfig, dict[int, SecAggClient], SecAggServer, Any]:
    """Clients and server after an honest ``masked_input`` phase (no dropouts)."""
    ids, public = generate_identities(range(N)) if threat == "malicious" else ({}, {})
    config = RoundConfig.create(N, DIM, BITS, threat_model=threat, identity_keys=public)  # type: ignore[arg-type]
    clients = {u: SecAggClient(config, u, identity_key=ids.get(u)) for u in config.client_ids}
    server = SecAggServer(config)
    directories = server.advertise_keys([c.advertise_keys() for c in clients.values()])
    deliveries = server.share_keys([clients[u].share_keys(d) for u, d in directories.items()])
    rng = np.random.default_rng(0)
    inputs = {u: rng.integers(0, 2**BITS, DIM, dtype=np.uint64) for u in clients}
    masked = {u: clients[u].masked_input(d, inputs[u]) for u, d in deliveries.items()}
    return config, clients, server, (inputs, masked)


def _lie(config: RoundConfig) -> tuple[list[int], list[int]]:
    """The target's neighbours told "survived" (reveal seed shares) and "dropped" (key shares)."""
    nbrs = sorted(config.neighbour_sets[TARGET])
    half = len(nbrs) // 2
    return nbrs[:half], nbrs[half:]


def _request(
    config: RoundConfig, v: int, target_dropped: bool, sigs: tuple[Signature, ...] = ()
) -> UnmaskRequest:
    survivors = [u for u in config.graph[v] if not (target_dropped and u == TARGET)]
    dropped = [TARGET] if target_dropped and TARGET in config.neighbour_sets[v] else []
    return UnmaskRequest(config.round_id, v, tuple(survivors), tuple(dropped), config.n, sigs)


def _unmask_target(
    config: RoundConfig,
    server: SecAggServer,
    masked: dict[int, MaskedInput],
    seed_shares: list[tuple[int, bytes]],
    key_shares: list[tuple[int, bytes]],
) -> np.ndarray:
    """What the lying server does with t shares of each secret: strip every mask of TARGET."""
    t = config.threshold

    def rebuild(pool: list[tuple[int, bytes]]) -> bytes:
        # With fewer than t shares the best a server can do is interpolate what it has.
        chosen = sorted(pool)[:t]
        arr = np.stack([np.frombuffer(s, dtype="<u4") for _, s in chosen])
        return shamir.reconstruct([x for x, _ in chosen], arr, min(t, len(chosen)))[0]

    seed, key_raw = rebuild(seed_shares), rebuild(key_shares)
    adverts = server._keys
    assert commit(config.round_id, TARGET, seed) == adverts[TARGET].seed_commitment
    key = X25519PrivateKey.from_private_bytes(key_raw)
    assert raw_public(key) == adverts[TARGET].mask_public_key
    y = masked[TARGET].array().astype(np.uint32).copy()
    add_mask(y, seed, subtract=True)
    for v in config.graph[TARGET]:
        peer = X25519PublicKey.from_public_bytes(adverts[v].mask_public_key)
        s = kdf(key.exchange(peer), b"mask", config.round_id, TARGET, v)
        add_mask(y, s, subtract=v > TARGET)  # TARGET added +mask for larger ids
    return y.astype(np.uint64)


def test_lying_server_unmasks_a_client_under_honest_but_curious_parameters() -> None:
    """Documents the limit: the honest-but-curious threat model assumes the server does not lie."""
    config, clients, server, (inputs, masked) = _round("honest-but-curious")
    assert (config.neighbours, config.threshold) == (6, 2)  # the defaults at n = 20
    server.masked_input(masked.values())
    told_alive, told_dropped = _lie(config)
    x = shamir.x_coordinate
    seed_shares, key_shares = [], []
    for v in told_alive:
        resp = clients[v].unmask(_request(config, v, target_dropped=False))
        seed_shares += [(x(v), s.share) for s in resp.seed_shares if s.owner == TARGET]
    for v in told_dropped:
        resp = clients[v].unmask(_request(config, v, target_dropped=True))
        key_shares += [(x(v), s.share) for s in resp.key_shares if s.owner == TARGET]
    assert len(seed_shares) == len(key_shares) == 3 >= config.threshold
    recovered = _unmask_target(config, server, masked, seed_shares, key_shares)
    assert recovered.tolist() == inputs[TARGET].tolist()  # the client's private input


def test_lying_server_learns_nothing_under_the_malicious_threat_model() -> None:
    config, clients, server, (_, masked) = _round("malicious")
    assert config.malicious and 2 * config.threshold > config.neighbours
    checks = server.masked_input_consistency(masked.values())
    _told_alive, told_dropped = _lie(config)
    everyone = checks[TARGET].survivors
    without = tuple(u for u in everyone if u != TARGET)
    # The lie, consistently: the "dropped" group signs a survivor set without the target.
    signed = {}
    for v in config.client_ids:
        view = without if v in told_dropped else everyone
        signed[v] = (
            view,
            clients[v].consistency_check(ConsistencyRequest(config.round_id, v, view)),
        )
    x = shamir.x_coordinate
    seed_shares, key_shares, refused = [], [], []
    for v in config.client_ids:
        view = signed[v][0]
        sigs = tuple(
            Signature(u, signed[u][1].signature) for u in config.graph[v] if signed[u][0] == view
        )
        try:
            resp = clients[v].unmask(_request(config, v, view is without, sigs))
        except ProtocolAbort:
            refused.append(v)
            continue
        seed_shares += [(x(v), s.share) for s in resp.seed_shares if s.owner == TARGET]
        key_shares += [(x(v), s.share) for s in resp.key_shares if s.owner == TARGET]
    # Every honest neighbour revealed at most one of the two shares, and t > k/2:
    assert min(len(seed_shares), len(key_shares)) < config.threshold
    # and clients whose neighbours signed different sets notice and reveal nothing at all
    assert TARGET in refused
    with pytest.raises((AssertionError, MessageRejected)):  # fewer than t shares: no secret
        _unmask_target(config, server, masked, seed_shares, key_shares)


def test_forwarding_signatures_of_another_survivor_set_makes_clients_refuse() -> None:
    config, clients, server, (_, masked) = _round("malicious")
    checks = server.masked_input_consistency(masked.values())
    everyone = checks[TARGET].survivors
    without = tuple(u for u in everyone if u != TARGET)
    v = sorted(config.neighbour_sets[TARGET])[0]
    sigs = {}
    for u in config.client_ids:  # v and the target sign the full set, everyone else the other
        view = everyone if u in (v, TARGET) else without
        sigs[u] = clients[u].consistency_check(ConsistencyRequest(config.round_id, u, view))
    forwarded = tuple(Signature(u, sigs[u].signature) for u in config.graph[v])
    with pytest.raises(ProtocolAbort, match="not on the survivor set"):
        clients[v].unmask(_request(config, v, False, forwarded))
    with pytest.raises(ProtocolError, match="aborted"):  # and it answers nothing more
        clients[v].unmask(_request(config, v, False, ()))


def test_malicious_round_refuses_too_few_signatures_and_being_left_out() -> None:
    import dataclasses

    config, clients, server, (_, masked) = _round("malicious")
    checks = server.masked_input_consistency(masked.values())
    sigs = [clients[u].consistency_check(c) for u, c in checks.items() if u != 0]
    requests = server.consistency_check(sigs)
    v = 3
    short = dataclasses.replace(
        requests[v], signatures=requests[v].signatures[: config.threshold - 1]
    )
    with pytest.raises(ProtocolAbort, match="threshold"):
        clients[v].unmask(short)
    # a server that leaves a client out of the set it asks it to sign is refused
    leave_out = tuple(u for u in checks[0].survivors if u != 0)
    with pytest.raises(ProtocolAbort, match="leaves it out"):
        clients[0].consistency_check(ConsistencyRequest(config.round_id, 0, leave_out))


def test_a_client_never_counts_its_own_signature() -> None:
    """On the complete graph with 2t > n − 1 + c this is what stops two survivor sets, each
    signed by t clients (colluders signing both), from both being unmasked: a client's own
    signature never counts towards its threshold."""
    import dataclasses

    config, clients, server, (_, masked) = _round("malicious")
    checks = server.masked_input_consistency(masked.values())
    sigs = [clients[u].consistency_check(c) for u, c in checks.items() if u != 0]
    requests = server.consistency_check(sigs)
    v = 3
    own = next(sg for sg in sigs if sg.sender == v)
    padded = dataclasses.replace(
        requests[v],
        signatures=(Signature(v, own.signature), *requests[v].signatures[: config.threshold - 1]),
    )
    with pytest.raises(ProtocolAbort, match="not a surviving neighbour"):
        clients[v].unmask(padded)


def test_full_malicious_round_sums_exactly_and_server_checks_signatures() -> None:
    config, clients, server, (inputs, masked) = _round("malicious")
    checks = server.masked_input_consistency(masked.values())
    sigs = [clients[u].consistency_check(decode(c.to_bytes())) for u, c in checks.items()]  # type: ignore[arg-type]
    forged = sigs[1].__class__(config.round_id, 2, sigs[1].signature)  # client 1's signature as 2's
    with pytest.raises(MessageRejected, match="invalid"):
        server.consistency_check([*sigs[:2], forged])
    requests = server.consistency_check(sigs)
    result = server.unmask([clients[u].unmask(decode(r.to_bytes())) for u, r in requests.items()])  # type: ignore[arg-type]
    expected = np.sum([inputs[u] for u in config.client_ids], axis=0) % (1 << BITS)
    assert result.sum.tolist() == expected.tolist()


def test_server_cannot_substitute_a_neighbours_keys_against_a_malicious_threat_model() -> None:
    ids, public = generate_identities(range(6))
    config = RoundConfig.create(6, 4, 16, threat_model="malicious", identity_keys=public)
    clients = {u: SecAggClient(config, u, identity_key=ids[u]) for u in range(6)}
    adverts = [c.advertise_keys() for c in clients.values()]
    server = SecAggServer(config)
    directories = server.advertise_keys(adverts)
    d = directories[0]
    fake = X25519PrivateKey.generate()
    swapped = tuple(
        AdvertiseKeys(
            e.round_id,
            e.sender,
            raw_public(fake),
            e.mask_public_key,
            e.seed_commitment,
            e.signature,
        )
        if i == 0
        else e
        for i, e in enumerate(d.entries)
    )
    with pytest.raises(MessageRejected, match="not signed"):
        clients[0].share_keys(KeyDirectory(d.round_id, 0, swapped, d.server_key))
    clients[0].share_keys(d)  # the genuine directory still works
    # and the server itself drops an unsigned advertisement
    bare = AdvertiseKeys(
        *[
            getattr(adverts[1], f)
            for f in ("round_id", "sender", "enc_public_key", "mask_public_key", "seed_commitment")
        ]
    )
    with pytest.raises(MessageRejected, match="not signed"):
        SecAggServer(config).advertise_keys([adverts[0], bare])


def test_malicious_configuration_is_checked() -> None:
    ids, public = generate_identities(range(8))
    with pytest.raises(ConfigError, match="t > k/2"):
        RoundConfig.create(
            8, 4, 16, neighbours=4, threshold=2, threat_model="malicious", identity_keys=public
        )
    with pytest.raises(ConfigError, match="identity key"):
        RoundConfig.create(8, 4, 16, threat_model="malicious")
    with pytest.raises(ConfigError, match="threat_model"):
        RoundConfig.create(8, 4, 16, threat_model="paranoid")  # type: ignore[arg-type]
    config = RoundConfig.create(
        8, 4, 16, neighbours=4, threat_model="malicious", identity_keys=public
    )
    assert 2 * config.threshold > config.neighbours
    with pytest.raises(ConfigError, match="identity key"):
        SecAggClient(config, 0)
    with pytest.raises(ConfigError, match="not the one"):
        SecAggClient(config, 0, identity_key=ids[1])
    hbc = RoundConfig.create(8, 4, 16)
    with pytest.raises(ProtocolError, match="malicious"):
        SecAggServer(hbc).masked_input_consistency([])


def test_default_malicious_parameters_follow_bell_et_al() -> None:
    from privrec.secure import choose_parameters

    _, public = generate_identities(range(50))
    config = RoundConfig.create(50, 4, 16, threat_model="malicious", identity_keys=public)
    p = choose_parameters(50, malicious_server=True)
    assert (config.neighbours, config.threshold) == (p.neighbours, p.threshold)
    assert "t > (k + c) / 2" in p.explanation


@pytest.mark.parametrize("threat", ["honest-but-curious", "malicious"])
def test_flipped_bit_in_a_masked_input_is_rejected_not_summed(threat: str) -> None:
    config, clients, server, (inputs, masked) = _round(threat)
    victim = masked[5]
    flipped = bytearray(victim.values)
    flipped[3] ^= 0x04
    bad = MaskedInput(victim.round_id, victim.sender, victim.bits, bytes(flipped), victim.tag)
    batch = [m if u != 5 else bad for u, m in masked.items()]
    step = server.masked_input_consistency if config.malicious else server.masked_input
    with pytest.raises(MessageRejected, match="integrity"):
        step(batch)
    with pytest.raises(MessageRejected, match="integrity"):
        server.check_masked_input(bad)
    untagged = MaskedInput(victim.round_id, victim.sender, victim.bits, victim.values)
    with pytest.raises(MessageRejected, match="integrity"):
        server.check_masked_input(untagged)
    # without it the round goes on: client 5 counts as dropped and the sum is exact
    out = step([m for u, m in masked.items() if u != 5])
    if config.malicious:
        sigs = [clients[u].consistency_check(c) for u, c in out.items()]  # type: ignore[arg-type]
        out = server.consistency_check(sigs)
    result = server.unmask([clients[u].unmask(r) for u, r in out.items()])  # type: ignore[arg-type]
    survivors = [u for u in config.client_ids if u != 5]
    assert result.survivors == tuple(survivors)
    expected = np.sum([inputs[u] for u in survivors], axis=0) % (1 << BITS)
    assert result.sum.tolist() == expected.tolist()


def test_simulator_runs_malicious_rounds_with_dropouts_in_every_phase() -> None:
    res = simulate_secagg(
        30,
        16,
        bits=20,
        dropout={"masked_input": 1, "consistency_check": 1, "unmask": 1},
        seed=3,
        threat_model="malicious",
    )
    assert res.exact and res.threat_model == "malicious"
    assert len(res.survivors) == 29
    assert 2 * res.threshold > res.neighbours
    assert "consistency_check" in res.timings["client"]
    with pytest.raises(ConfigError, match="unknown dropout phase"):
        simulate_secagg(10, 4, dropout={"consistency_check": 1})
