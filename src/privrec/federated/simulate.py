"""Run a whole SecAgg+ round in one process, with seeded dropouts, and measure it.

The simulator drives the real client and server state machines of
:mod:`privrec.secure.secagg`, and passes every message through its byte encoding, so
the byte counts are what a network would carry and the cryptography is the real one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from privrec.errors import ConfigError, InvalidInputError
from privrec.secure.graph import ThreatModel, check_threat_model, resolve_count
from privrec.secure.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    Message,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)
from privrec.secure.prg import word_dtype
from privrec.secure.secagg import (
    MALICIOUS_PHASES,
    PHASES,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    generate_identities,
)

__all__ = ["SecAggResult", "simulate_secagg"]

T = TypeVar("T", bound=Message)


@dataclass(frozen=True)
class SecAggResult:
    """What a simulated round produced and cost.

    Attributes
    ----------
    sum
        ``uint64`` array: the sum modulo ``2**bits`` of the survivors' inputs, as returned
        by the server.
    bits
        The modulus exponent ``b``.
    survivors
        Ids of the clients whose inputs are in ``sum``.
    dropped
        Phase -> ids of the clients that dropped out in that phase (including clients the
        server excluded because their neighbourhood was already too small).
    neighbours, threshold
        The graph degree ``k`` and Shamir threshold ``t`` used.
    bytes_up, bytes_down
        Per client (indexed by id), the bytes it sent / received, as encoded on the wire.
    timings
        Role (``"client"``, ``"server"``, ``"transport"``) -> phase -> seconds, summed over
        all clients for the client role; ``"total"`` sums the phases.
    server_stats
        The server's own breakdown (Shamir reconstruction time, mask regeneration time,
        reconstruction counts), see :class:`privrec.secure.AggregateResult`.
    exact
        Whether ``sum`` equals the plaintext sum of the survivors' inputs (a check only a
        simulator can make).
    threat_model
        The server the round was secured against.
    """

    sum: NDArray[np.uint64]
    bits: int
    survivors: tuple[int, ...]
    dropped: Mapping[str, tuple[int, ...]]
    neighbours: int
    threshold: int
    bytes_up: NDArray[np.int64]
    bytes_down: NDArray[np.int64]
    timings: Mapping[str, Mapping[str, float]]
    server_stats: Mapping[str, float]
    exact: bool
    threat_model: str = "honest-but-curious"


def _schedule(
    dropout: float | int | Mapping[str, float | int],
    ids: list[int],
    rng: np.random.Generator,
    phases: tuple[str, ...] = PHASES,
) -> dict[str, set[int]]:
    if isinstance(dropout, Mapping):
        unknown = set(dropout) - set(phases)
        if unknown:
            raise ConfigError(f"unknown dropout phase(s) {sorted(unknown)}; phases are {phases}")
        spec = dict(dropout)
    else:
        spec = {"masked_input": dropout}
    alive = list(ids)
    out: dict[str, set[int]] = {}
    for phase in phases:
        value = spec.get(phase, 0)
        if isinstance(value, float):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"dropout fraction for {phase} must be in [0, 1], got {value}")
            count = round(value * len(alive))
        else:
            count = resolve_count(value, len(alive), f"dropout[{phase!r}]")
        chosen = rng.choice(np.asarray(alive, dtype=np.int64), size=count, replace=False)
        out[phase] = {int(c) for c in chosen.tolist()}
        alive = [u for u in alive if u not in out[phase]]
    return out


def simulate_secagg(
    n_clients: int,
    dim: int,
    bits: int = 32,
    dropout: float | int | Mapping[str, float | int] = 0.0,
    neighbours: int | float | None = None,
    threshold: int | float | None = None,
    seed: int = 0,
    inputs: ArrayLike | Callable[[int], ArrayLike] | None = None,
    *,
    corrupt_fraction: int | float = 0.05,
    min_survivors: int | float | None = None,
    threat_model: ThreatModel = "honest-but-curious",
) -> SecAggResult:
    """Simulate one SecAgg+ round with ``n_clients`` clients holding ``dim``-vectors.

    Parameters
    ----------
    n_clients, dim, bits
        Number of clients (ids ``0 .. n-1``), vector length, modulus exponent ``b``.
    dropout
        Per phase (``"advertise_keys"``, ``"share_keys"``, ``"masked_input"``, ``"unmask"``):
        ``float`` = fraction of the clients still present that drop out before sending
        that phase's message (rounded to a count), ``int`` = exact count. A single value
        applies to ``"masked_input"`` -- the costly case, where the server must rebuild the
        dropped clients' mask keys.
    neighbours, threshold
        ``k`` and ``t`` (``int`` = count, ``float`` = fraction of the other clients / of
        ``k``). ``None``: :func:`~privrec.secure.graph.choose_parameters` for the scheduled
        number of dropouts and ``corrupt_fraction``.
    seed
        Drives only the **simulation's** choices -- who drops out and the synthetic inputs.
        Every key, seed and mask of the protocol comes from ``os.urandom``/``cryptography``
        and is fresh in each call, whatever ``seed`` is.
    inputs
        ``(n_clients, dim)`` integers in ``[0, 2**bits)``, or a function ``client id ->
        vector`` (avoids holding all vectors at once), or ``None`` for uniform synthetic
        vectors drawn from ``seed``.
    corrupt_fraction, min_survivors
        Passed to the parameter choice / round configuration.
    threat_model
        ``"honest-but-curious"`` or ``"malicious"`` (Bell et al.'s threshold, signed
        advertisements and the signed consistency check, which adds the phase
        ``"consistency_check"`` before ``"unmask"``; the simulation plays the PKI and gives
        every client a fresh Ed25519 identity).

    Returns
    -------
    SecAggResult

    Raises
    ------
    ProtocolAbort
        The dropouts exceeded what the threshold tolerates (never a wrong sum).
    InvalidInputError
        An input of the wrong shape, dtype or range.
    """
    if not isinstance(n_clients, int) or n_clients < 2:
        raise ConfigError(f"n_clients must be an integer >= 2, got {n_clients!r}")
    threat = check_threat_model(threat_model)
    phases = MALICIOUS_PHASES if threat == "malicious" else PHASES
    rng = np.random.default_rng(seed)
    ids = list(range(n_clients))
    plan = _schedule(dropout, ids, rng, phases)
    n_drop = sum(len(v) for v in plan.values())
    identities, public = generate_identities(ids) if threat == "malicious" else ({}, {})
    config = RoundConfig.create(
        ids,
        dim,
        bits,
        neighbours=neighbours,
        threshold=threshold,
        min_survivors=min_survivors,
        dropout_rate=min(n_drop, max(0, n_clients - 3)),
        corrupt_fraction=corrupt_fraction,
        threat_model=threat,
        identity_keys=public,
    )
    dtype = word_dtype(bits)
    if inputs is None:
        hi = (1 << bits) - 1

        def input_of(u: int) -> NDArray[np.unsignedinteger]:
            # A per-client generator keeps the synthetic data independent of dropouts.
            gen = np.random.default_rng([seed, u])
            return gen.integers(0, hi, size=dim, dtype=dtype, endpoint=True)

        get_input: Callable[[int], ArrayLike] = input_of
    elif callable(inputs):
        get_input = inputs
    else:
        matrix = np.asarray(inputs)
        if matrix.ndim != 2 or matrix.shape != (n_clients, dim):
            raise InvalidInputError(
                f"inputs must have shape ({n_clients}, {dim}), got {matrix.shape}"
            )
        get_input = matrix.__getitem__

    client_time = dict.fromkeys(phases, 0.0)
    server_time = dict.fromkeys(phases, 0.0)
    wire_time = dict.fromkeys(phases, 0.0)
    up = np.zeros(n_clients, dtype=np.int64)
    down = np.zeros(n_clients, dtype=np.int64)

    def wire(msg: T, kind: type[T], who: int, upward: bool, phase: str) -> T:
        t0 = time.perf_counter()
        raw = msg.to_bytes()
        (up if upward else down)[who] += len(raw)
        out = decode(raw)
        wire_time[phase] += time.perf_counter() - t0
        assert isinstance(out, kind)
        return out

    clients = {u: SecAggClient(config, u, identity_key=identities.get(u)) for u in ids}
    server = SecAggServer(config)

    # Phase 1
    phase = "advertise_keys"
    adverts = []
    for u in ids:
        if u in plan[phase]:
            continue
        t0 = time.perf_counter()
        msg1 = clients[u].advertise_keys()
        client_time[phase] += time.perf_counter() - t0
        adverts.append(wire(msg1, AdvertiseKeys, u, True, phase))
    t0 = time.perf_counter()
    directories = server.advertise_keys(adverts)
    server_time[phase] += time.perf_counter() - t0

    # Phase 2
    phase = "share_keys"
    share_msgs = []
    for u, directory in directories.items():
        d_in = wire(directory, KeyDirectory, u, False, phase)
        if u in plan[phase]:
            continue
        t0 = time.perf_counter()
        msg2 = clients[u].share_keys(d_in)
        client_time[phase] += time.perf_counter() - t0
        share_msgs.append(wire(msg2, ShareKeys, u, True, phase))
    t0 = time.perf_counter()
    deliveries = server.share_keys(share_msgs)
    server_time[phase] += time.perf_counter() - t0

    # Phase 3
    phase = "masked_input"
    masked = []
    expected = np.zeros(dim, dtype=dtype)
    for u, delivery in deliveries.items():
        s_in = wire(delivery, ShareDelivery, u, False, phase)
        if u in plan[phase]:
            continue
        x = get_input(u)
        t0 = time.perf_counter()
        msg3 = clients[u].masked_input(s_in, x)
        client_time[phase] += time.perf_counter() - t0
        expected += np.asarray(x).astype(dtype)
        masked.append(wire(msg3, MaskedInput, u, True, phase))
    t0 = time.perf_counter()
    if config.malicious:
        checks = server.masked_input_consistency(masked)
        server_time[phase] += time.perf_counter() - t0
        phase = "consistency_check"
        signatures = []
        for u, check in checks.items():
            c_in = wire(check, ConsistencyRequest, u, False, phase)
            if u in plan[phase]:
                continue
            t0 = time.perf_counter()
            msg_c = clients[u].consistency_check(c_in)
            client_time[phase] += time.perf_counter() - t0
            signatures.append(wire(msg_c, ConsistencySignature, u, True, phase))
        t0 = time.perf_counter()
        requests = server.consistency_check(signatures)
    else:
        requests = server.masked_input(masked)
    server_time[phase] += time.perf_counter() - t0
    del masked

    # Phase 4
    phase = "unmask"
    responses = []
    for u, request in requests.items():
        r_in = wire(request, UnmaskRequest, u, False, phase)
        if u in plan[phase]:
            continue
        t0 = time.perf_counter()
        msg4 = clients[u].unmask(r_in)
        client_time[phase] += time.perf_counter() - t0
        responses.append(wire(msg4, UnmaskResponse, u, True, phase))
    t0 = time.perf_counter()
    result = server.unmask(responses)
    server_time[phase] += time.perf_counter() - t0

    expected_sum = expected.astype(np.uint64)
    if bits < 64:
        expected_sum &= np.uint64((1 << bits) - 1)
    timings = {
        role: {**per, "total": sum(per.values())}
        for role, per in (
            ("client", client_time),
            ("server", server_time),
            ("transport", wire_time),
        )
    }
    return SecAggResult(
        sum=result.sum,
        bits=bits,
        survivors=result.survivors,
        dropped=result.dropped,
        neighbours=config.neighbours,
        threshold=config.threshold,
        bytes_up=up,
        bytes_down=down,
        timings=timings,
        server_stats=result.stats,
        exact=bool(np.array_equal(result.sum, expected_sum)),
        threat_model=threat,
    )
