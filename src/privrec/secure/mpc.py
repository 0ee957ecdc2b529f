"""Secure top-k with MPyC: three parties score a secret-shared user; only the ids come out.

The HE path (:mod:`privrec.secure.he`) hides the user from the server but hands the client
every score, and with them the item matrix (k well-chosen queries recover it). Here three
parties run an MPC protocol (MPyC: Shamir secret sharing with threshold 1, honest majority)
in which the scores stay secret-shared and **only the ids of the top-k items are revealed,
to the client alone**.

Roles (one process each; :func:`run_party` is the body of a party)
    * party ``0`` — :data:`CLIENT` (the user's device or its proxy): inputs its folded-in
      user vector ``u`` and a 0/1 mask of items to leave out (its seen items, items the model
      did not release); it is the only receiver of the output.
    * party ``1`` — :data:`MODEL_HOLDER`: inputs the item factor matrix ``Y`` (n_items ×
      factors) as a secret, or — when the item factors are already public (e.g. DP-released)
      — every party holds ``Y`` and nobody inputs it (``public_items=True``).
    * party ``2`` — :data:`HELPER`: inputs nothing; it only holds shares. MPyC needs a third
      party because Shamir sharing with two parties has no honest majority (t < m/2).

Protocol (all arithmetic on Shamir shares of fixed-point numbers, ``SecFxp(l, f)``)
    1. Inputs are secret-shared (``mpc.input``); the parties first check that they agree on
       the public parameters (a SHA-256 digest exchanged by every party), so a mismatch
       aborts instead of desynchronising.
    2. ``s = Y u`` (one secure matrix-vector product and one truncation),
       ``s ← s − C · mask`` with the public constant ``C = ⌈2S⌉ + 1``, ``S`` the public
       score bound (below): every excluded item falls below every other item, a linear
       operation (no interaction).
    3. A bitonic selection network on the secret ``(score, id)`` pairs: rows of
       ``w = 2^⌈log₂ k⌉`` items are sorted by Batcher's bitonic sorter, then merged
       pairwise (``max(A, reversed(B))`` keeps the top ``w`` of two sorted rows as a
       bitonic sequence, which one bitonic merge sorts) until one row is left. Every
       compare-exchange is one secure comparison and two multiplications, all pairs of a
       stage at once. Depth for n = 1000, k = 10: 40 comparison levels (k successive argmax
       tournaments would need 100).
    4. The first ``k`` ids of that row are opened to party 0 only
       (``mpc.output(..., receivers=[0])``); parties 1 and 2 receive nothing.

Fixed point and bounds
    ``S = user_norm_bound · item_norm_bound + 1`` bounds every score (Cauchy–Schwarz, plus
    slack for rounding). Each party checks its own input: the client ``‖u‖₂ ≤
    user_norm_bound``, the model holder ``max_i ‖y_i‖₂ ≤ item_norm_bound``. Excluded items
    sit in ``[−S − C, S − C]`` and padding at ``−S − C − 1``, so a comparison needs only
    ``f + ⌈log₂(2S + C + 2)⌉ + 1`` bits (:attr:`MPCParams.compare_bits`, 24 with the
    defaults) instead of MPyC's default ``l`` — comparisons dominate the cost. Inputs are
    rounded to ``2^-f`` (f = 16): scores are exact to about ``factors · 2^-f``; items whose
    plaintext scores differ by less than that may come out in either order.

Threat model
    Semi-honest (honest-but-curious) parties, at most **one** corrupted: any single party
    learns nothing beyond its own input and output (statistical security ``2^-sec_param``
    for comparisons). The client learns the top-k ids and nothing else (no scores, no
    ranks below k), which still reveals something about ``Y`` per query (which items win
    for its ``u``). Two colluding parties can reconstruct every secret (threshold 1). A
    malicious party can make the output wrong (no integrity) and, worse, read the others'
    secrets: an out-of-range input (rows like ``2^40 · e_f``) is read back off MPyC's masked
    openings, and a party that deviates in MPyC's own steps (its random-bit inputs, its
    reshares) makes those masks known. The norm bounds are checked by each input's owner;
    every party must run this code unmodified (semi-honest). Traffic between parties is
    MPyC's plain TCP
    unless ``tls`` is given (:func:`make_tls_material`): then every link is TLS with mutual
    certificate authentication — required across machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from privrec.errors import (
    ConfigError,
    InvalidInputError,
    PeerUnavailable,
    PrivrecError,
    ProtocolAbort,
)
from privrec.secure.channel import free_ports
from privrec.secure.mpc_select import _select_top
from privrec.secure.mpc_tls import N_PARTIES, TLSFiles, make_tls_material, tls_name
from privrec.secure.mpc_wire import buffer_cap, until_refused

__all__ = [
    "CLIENT",
    "HELPER",
    "MODEL_HOLDER",
    "N_PARTIES",
    "MPCParams",
    "PartyResult",
    "SecureTopKResult",
    "TLSFiles",
    "free_ports",
    "make_tls_material",
    "run_party",
    "tls_name",
]

#: Party 0: holds the user vector and the exclusion mask, receives the top-k ids.
CLIENT = 0
#: Party 1: holds the item factor matrix (secret input unless ``public_items``).
MODEL_HOLDER = 1
#: Party 2: holds shares only; needed for an honest majority.
HELPER = 2
_ROLE = {CLIENT: "client", MODEL_HOLDER: "model holder", HELPER: "helper"}


@dataclass(frozen=True)
class MPCParams:
    """Public parameters every party must agree on.

    Parameters
    ----------
    bit_length, frac_length
        MPyC fixed-point type ``SecFxp(bit_length, frac_length)``: values are
        ``round(x · 2^frac_length)`` and must stay below ``2^(bit_length-1)``.
    user_norm_bound, item_norm_bound
        Public bounds on ``‖u‖₂`` and on every ``‖y_i‖₂``; their product bounds the scores
        and sets the comparison width. Each owner checks its own input against its bound.
    sec_param
        Statistical security parameter of MPyC's comparisons (leakage ``2^-sec_param``).
    """

    bit_length: int = 32
    frac_length: int = 16
    user_norm_bound: float = 4.0
    item_norm_bound: float = 4.0
    sec_param: int = 30

    @property
    def score_bound(self) -> float:
        """``S``: |score| ≤ S for in-bound inputs, with one unit of slack for rounding."""
        return self.user_norm_bound * self.item_norm_bound + 1.0

    @property
    def exclusion_offset(self) -> int:
        """``C = ⌈2S⌉ + 1``: subtracted from excluded items, so they fall below all others."""
        return math.ceil(2 * self.score_bound) + 1

    @property
    def padding_value(self) -> float:
        """``−S − C − 1``: the public score of padding slots, below every excluded item."""
        return -self.score_bound - self.exclusion_offset - 1.0

    @property
    def compare_bits(self) -> int:
        """Bits a comparison needs (sign bit included).

        Items stay in ``[−S, S]``, excluded ones in ``[−S − C, S − C]`` and padding is at
        ``−S − C − 1``, so every difference is within ``±(2S + C + 1)``.
        """
        width = 2 * self.score_bound + self.exclusion_offset + 1  # largest |difference|
        return self.frac_length + math.ceil(math.log2(width + 1)) + 1

    def validate(self) -> None:
        """Refuse parameters that would overflow or leak (typed :class:`ConfigError`)."""
        if not 8 <= self.frac_length <= 32:
            raise ConfigError(f"frac_length must be in 8..32, found {self.frac_length}")
        if not self.frac_length < self.bit_length <= 128:
            raise ConfigError(
                f"bit_length must be in {self.frac_length + 1}..128, found {self.bit_length}"
            )
        for name in ("user_norm_bound", "item_norm_bound"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be positive and finite, found {v!r}")
        if not 20 <= self.sec_param <= 128:
            raise ConfigError(f"sec_param must be in 20..128, found {self.sec_param}")
        if self.compare_bits > self.bit_length:
            raise ConfigError(
                f"score bound {self.score_bound:g} needs {self.compare_bits}-bit comparisons "
                f"but bit_length is {self.bit_length}: raise bit_length or lower the norm bounds"
            )


@dataclass(frozen=True)
class PartyResult:
    """What one party ends with: the ids for the client, ``None`` for everybody else.

    ``bytes_sent`` counts this party's protocol messages to its peers (MPyC's counter);
    ``seconds`` is the wall time from all parties connected to the output, ``cpu_seconds``
    this process's CPU time over the same span.
    """

    party_id: int
    items: npt.NDArray[np.int64] | None
    bytes_sent: int
    seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class SecureTopKResult:
    """Result of :func:`secure_top_k_local`.

    ``items``: the client's top-k item indices, best first, padded with ``-1`` when fewer
    than k items are not excluded. Per-party statistics are indexed by party id;
    ``wall_seconds`` includes starting the three processes and connecting them.
    """

    items: npt.NDArray[np.int64]
    bytes_sent: tuple[int, ...]
    party_seconds: tuple[float, ...]
    party_cpu_seconds: tuple[float, ...]
    wall_seconds: float

    @property
    def total_bytes(self) -> int:
        return int(sum(self.bytes_sent))

    @property
    def seconds(self) -> float:
        """The protocol's latency: the slowest party's compute span."""
        return float(max(self.party_seconds))


# --------------------------------------------------------------------------- validation
def _check_k(k: int, n_items: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n_items:
        raise ConfigError(f"k must be an integer in 1..n_items={n_items}, found {k!r}")
    return int(k)


def _check_shape(n_items: int, n_factors: int) -> None:
    for name, v in (("n_items", n_items), ("n_factors", n_factors)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, found {v!r}")


#: A vector scaled to exactly its bound can compute a norm one ulp above it; the score bound's
#: unit of slack covers far more than this relative 1e-9.
_NORM_SLACK = 1.0 + 1e-9


def _user_vector(u: npt.ArrayLike, n_factors: int, params: MPCParams) -> npt.NDArray[np.float64]:
    arr = np.asarray(u, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != (n_factors,):
        raise InvalidInputError(f"user vector must have shape ({n_factors},), found {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError("user vector holds NaN or infinite values")
    norm = float(np.linalg.norm(arr))
    if norm > params.user_norm_bound * _NORM_SLACK:
        raise InvalidInputError(
            f"‖u‖₂ = {norm:.4g} exceeds user_norm_bound = {params.user_norm_bound:g} "
            "(scores could overflow the fixed-point range): raise the bound for every party"
        )
    return arr


def _item_matrix(
    y: npt.ArrayLike, n_items: int, n_factors: int, params: MPCParams
) -> npt.NDArray[np.float64]:
    arr = np.asarray(y, dtype=np.float64)
    if arr.shape != (n_items, n_factors):
        raise InvalidInputError(
            f"item factors must have shape ({n_items}, {n_factors}), found {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InvalidInputError("item factors hold NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1)
    worst = int(np.argmax(norms))
    if norms[worst] > params.item_norm_bound * _NORM_SLACK:
        raise InvalidInputError(
            f"item {worst} has ‖y‖₂ = {norms[worst]:.4g} > item_norm_bound = "
            f"{params.item_norm_bound:g}: raise the bound for every party"
        )
    return arr


def _exclusion_mask(exclude: npt.ArrayLike | None, n_items: int) -> npt.NDArray[np.int64]:
    mask = np.zeros(n_items, dtype=np.int64)
    if exclude is None:
        return mask
    idx = np.asarray(exclude).reshape(-1)
    if idx.size == 0:
        return mask
    if not np.issubdtype(idx.dtype, np.integer):
        raise InvalidInputError(f"excluded items must be integer indices, found dtype {idx.dtype}")
    bad = (idx < 0) | (idx >= n_items)
    if bad.any():
        raise InvalidInputError(
            f"excluded item {int(idx[bad][0])} is outside the catalogue 0..{n_items - 1}"
        )
    mask[idx] = 1
    return mask


def _addresses(addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    out = [(str(h), int(p)) for h, p in addresses]
    if len(out) != N_PARTIES:
        raise ConfigError(
            f"secure top-k runs exactly {N_PARTIES} parties (MPyC is insecure with 2), "
            f"found {len(out)} addresses"
        )
    for host, port in out:
        if not host or not 0 < port < 65536:
            raise ConfigError(f"bad party address {host}:{port}")
    return out


def _public_digest(
    n_items: int,
    n_factors: int,
    k: int,
    params: MPCParams,
    public_y: npt.NDArray[np.float64] | None,
) -> str:
    """What all parties must agree on, hashed (the public item matrix included)."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"n_items": n_items, "n_factors": n_factors, "k": k, "params": asdict(params)},
            sort_keys=True,
        ).encode()
    )
    h.update(b"public" if public_y is not None else b"secret")
    if public_y is not None:
        h.update(np.ascontiguousarray(public_y, dtype="<f8").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- runtime
def _runtime(party_id: int, addresses: Sequence[tuple[str, int]], params: MPCParams) -> Any:
    """A fresh MPyC runtime for this party, built from an explicit command line.

    MPyC configures itself from ``sys.argv`` when imported (and may even spawn parties for
    ``-M``), so the real command line is swapped for a clean one while it is imported and
    while :func:`mpyc.runtime.setup` runs; ``--no-prss`` makes random bits come from
    products of the parties' random ±1 inputs instead of one modular square root per bit.
    """
    argv = sys.argv
    base = [argv[0] if argv else "privrec-mpc", "--no-log"]
    try:
        sys.argv = list(base)
        import mpyc.runtime as mpyc_runtime  # first import runs MPyC's setup on ``base``

        from privrec.secure.mpc_wire import install

        install(mpyc_runtime)  # a peer's pickle can build plain data only, never run code
        from mpyc import thresha

        from privrec.secure.mpc_shares import install as vectorise

        vectorise(thresha)  # MPyC's per-element share loops, as numpy (same values)

        sys.argv = [
            *base,
            "--no-prss",
            # share arrays travel as field elements (to_bytes/from_bytes), never as pickled
            # numpy arrays: a forged numpy dtype in a peer's pickle crashed the honest parties
            # and could read attacker-chosen addresses (mpc_wire)
            "--mix32-64bit",
            "-I",
            str(party_id),
            "-L",
            str(params.bit_length),
            "-K",
            str(params.sec_param),
            *[a for host, port in addresses for a in ("-P", f"{host}:{port}")],
        ]
        return mpyc_runtime.setup()
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("secure top-k needs MPyC: pip install 'privrec[mpc]'") from exc
    finally:
        sys.argv = argv


async def _start(rt: Any, bind_host: str, tls: TLSFiles | None, cap: int) -> None:
    """Connect the parties like ``Runtime.start`` does, but listen on ``bind_host`` only.

    MPyC's own ``start`` listens on every interface; party ``i`` listens for parties
    ``< i`` and connects to parties ``> i``. With ``tls`` every link is TLS with mutual
    certificate authentication, and a party connecting to ``j`` checks ``j``'s name; a
    certificate that fails verification aborts at once instead of being retried.
    """
    from mpyc import asyncoro

    from privrec.secure.mpc_wire import bounded_exchanger

    exchanger = bounded_exchanger(asyncoro.MessageExchanger, cap)
    server_ctx, client_ctx = tls.contexts() if tls is not None else (None, None)
    loop = rt._loop
    for peer in rt.parties:
        peer.protocol = asyncio.Future(loop=loop) if peer.pid == rt.pid else None
    server = None
    if rt.pid:
        server = await loop.create_server(
            lambda: exchanger(rt),
            host=bind_host,
            port=rt.parties[rt.pid].port,
            ssl=server_ctx,
        )
    for peer in rt.parties[rt.pid + 1 :]:
        while True:
            try:
                await loop.create_connection(
                    lambda pid=peer.pid: exchanger(rt, pid),
                    peer.host,
                    peer.port,
                    ssl=client_ctx,
                    server_hostname=tls_name(peer.pid) if client_ctx is not None else None,
                )
                break
            except ssl.SSLError as exc:
                raise ProtocolAbort(
                    "connect", f"TLS with party {peer.pid} at {peer.host}:{peer.port} failed: {exc}"
                ) from None
            except OSError:
                await asyncio.sleep(0.05)
    await rt.parties[rt.pid].protocol
    if server is not None:
        server.close()
    rt.start_time = time.time()


async def _protocol(
    rt: Any,
    party_id: int,
    n_items: int,
    n_factors: int,
    k: int,
    params: MPCParams,
    digest: str,
    user_vector: npt.NDArray[np.float64] | None,
    mask: npt.NDArray[np.int64] | None,
    item_factors: npt.NDArray[np.float64] | None,
    public_items: bool,
    bind_host: str,
    tls: TLSFiles | None,
) -> PartyResult:
    await _start(rt, bind_host, tls, buffer_cap(n_items, n_factors))
    t0, c0 = time.perf_counter(), time.process_time()
    digests = await rt.transfer(digest)
    if any(not isinstance(d, str) or d != digest for d in digests):
        bad = [i for i, d in enumerate(digests) if not isinstance(d, str) or d != digest]
        raise ProtocolAbort(
            "setup",
            f"parties {bad} disagree with party {party_id} on the public parameters "
            "(n_items, n_factors, k, MPCParams, public item matrix)",
        )
    secfxp = rt.SecFxp(params.bit_length, params.frac_length)
    zeros_u = np.zeros(n_factors)
    su = rt.input(
        secfxp.array(user_vector if party_id == CLIENT else zeros_u, integral=False),
        senders=CLIENT,
    )
    smask = rt.input(
        secfxp.array(mask if party_id == CLIENT else np.zeros(n_items, np.int64), integral=True),
        senders=CLIENT,
    )
    if public_items:
        assert item_factors is not None
        scores = item_factors @ su
    else:
        local = item_factors if party_id == MODEL_HOLDER else np.zeros((n_items, n_factors))
        sy = rt.input(secfxp.array(local, integral=False), senders=MODEL_HOLDER)
        scores = sy @ su
    scores = scores - smask * params.exclusion_offset
    ids = _select_top(rt, secfxp, scores, k, params.padding_value, params.compare_bits)
    opened = await rt.output(ids, receivers=[CLIENT])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    sent = sum(p.protocol.nbytes_sent for p in rt.parties if p.pid != rt.pid and p.protocol)
    rt._privrec_closing = True  # links closing from here on are MPyC's own shutdown
    await rt.shutdown()
    items = None
    if party_id == CLIENT:
        assert mask is not None
        items = np.rint(np.asarray(opened, dtype=np.float64)).astype(np.int64)
        if items.size != k or items.min() < 0 or items.max() >= n_items:
            raise ProtocolAbort("output", f"the opened ids {items.tolist()} are not item indices")
        items[mask[items] == 1] = -1  # excluded items only surface when too few remain
    return PartyResult(party_id, items, int(sent), seconds, cpu)


def run_party(
    party_id: int,
    addresses: Sequence[tuple[str, int]],
    *,
    n_items: int,
    n_factors: int,
    k: int,
    user_vector: npt.ArrayLike | None = None,
    exclude: npt.ArrayLike | None = None,
    item_factors: npt.ArrayLike | None = None,
    public_items: bool = False,
    params: MPCParams | None = None,
    bind_host: str | None = None,
    tls: TLSFiles | None = None,
    timeout: float = 120.0,
) -> PartyResult:
    """Run one party of the secure top-k protocol in this process (blocking).

    Meant as the body of a party's process (``privrec mpc party``; the local launcher
    spawns three): it builds a fresh MPyC runtime for this process.

    Parameters
    ----------
    party_id
        :data:`CLIENT` (0), :data:`MODEL_HOLDER` (1) or :data:`HELPER` (2).
    addresses
        ``(host, port)`` of the three parties, in party order; party ``i`` listens on its
        port for parties ``< i`` (party 0 never listens) and connects to parties ``> i``.
    n_items, n_factors, k
        Public shape of the item matrix and the list length (every party the same).
    user_vector, exclude
        Client only: its factors (``‖u‖₂ ≤ user_norm_bound``) and the item indices never
        to recommend (seen, unreleased). Both stay secret-shared.
    item_factors
        The model holder's secret ``Y`` — or, with ``public_items=True``, the public ``Y``
        that every party passes (then nobody inputs it).
    params
        :class:`MPCParams` (defaults); must be equal at every party.
    bind_host
        Interface to listen on (default: this party's own host in ``addresses``).
    tls
        This party's :class:`TLSFiles` (from :func:`make_tls_material`): every link then runs
        TLS with mutual authentication. Without it the links are MPyC's plain TCP, fit only
        for loopback or a network that is already protected.
    timeout
        Seconds for the whole run, connection included; then :class:`PeerUnavailable`.

    Returns
    -------
    PartyResult
        ``items`` (best first, ``-1`` padding) for the client, ``None`` for the others.

    Raises
    ------
    ConfigError, InvalidInputError
        Bad public parameters or a bad own input — before any connection is made.
    ProtocolAbort
        The parties disagree on the public parameters, or a TLS handshake failed.
    PeerUnavailable
        The protocol did not finish within ``timeout`` (a peer absent, dead or stuck).
    """
    params = params or MPCParams()
    params.validate()
    addrs = _addresses(addresses)
    _check_shape(n_items, n_factors)
    k = _check_k(k, n_items)
    if party_id not in _ROLE:
        raise ConfigError(f"party_id must be 0, 1 or 2, found {party_id!r}")
    if not timeout > 0:
        raise ConfigError(f"timeout must be positive, found {timeout!r}")
    u = mask = y = None
    if party_id == CLIENT:
        if user_vector is None:
            raise ConfigError("the client (party 0) must provide its user vector")
        u = _user_vector(user_vector, n_factors, params)
        mask = _exclusion_mask(exclude, n_items)
    elif user_vector is not None or exclude is not None:
        raise ConfigError(
            f"only the client (party 0) inputs a user vector, not the {_ROLE[party_id]}"
        )
    if public_items or party_id == MODEL_HOLDER:
        if item_factors is None:
            who = "every party" if public_items else "the model holder (party 1)"
            raise ConfigError(f"{who} must provide the item factors")
        y = _item_matrix(item_factors, n_items, n_factors, params)
    elif item_factors is not None:
        raise ConfigError(
            f"the {_ROLE[party_id]} must not hold the secret item factors "
            "(pass public_items=True if they are public)"
        )
    digest = _public_digest(n_items, n_factors, k, params, y if public_items else None)
    rt = _runtime(party_id, addrs, params)
    coro = _protocol(
        rt,
        party_id,
        n_items,
        n_factors,
        k,
        params,
        digest,
        u,
        mask,
        y,
        public_items,
        bind_host or addrs[party_id][0],
        tls,
    )
    try:
        result: PartyResult = rt.run(asyncio.wait_for(until_refused(coro, rt), timeout))
    except TimeoutError:
        raise PeerUnavailable(
            f"party {party_id} ({_ROLE[party_id]}): secure top-k did not finish within "
            f"{timeout:g} s (a peer is absent, dead or stuck)"
        ) from None
    except PrivrecError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError, MemoryError) as exc:
        # MPyC stops its event loop when a peer disconnects mid-protocol or sends bytes this
        # party refuses (mpc_wire): an abort, not an untyped crash
        raise ProtocolAbort(
            "protocol",
            f"party {party_id} ({_ROLE[party_id]}): a peer disconnected or sent data this party "
            f"refused ({type(exc).__name__}); nothing was output",
        ) from None
    return result


# --------------------------------------------------------------------------- processes
def _party_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a party process spawned by :func:`secure_top_k_local`.

    ``argv``: the spec JSON path and the party id. Inputs come from the party's own
    ``.npz`` (mode 0600 in a private directory); the result or the error goes to
    ``result-<id>.json``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    spec_path, party_id = Path(args[0]), int(args[1])
    spec = json.loads(spec_path.read_text())
    out = spec_path.parent / f"result-{party_id}.json"
    try:
        inputs: dict[str, Any] = {}
        own = spec_path.parent / f"party-{party_id}.npz"
        if own.exists():
            with np.load(own) as data:
                inputs = {name: data[name] for name in data.files}
        if spec["public_items"]:
            with np.load(spec_path.parent / "public.npz") as data:
                inputs["item_factors"] = data["item_factors"]
        res = run_party(
            party_id,
            [(h, p) for h, p in spec["addresses"]],
            n_items=spec["n_items"],
            n_factors=spec["n_factors"],
            k=spec["k"],
            public_items=spec["public_items"],
            params=MPCParams(**spec["params"]),
            timeout=spec["timeout"],
            tls=TLSFiles.in_dir(spec["tls_dir"], party_id) if spec.get("tls_dir") else None,
            **inputs,
        )
        payload: dict[str, Any] = {
            "items": None if res.items is None else res.items.tolist(),
            "bytes_sent": res.bytes_sent,
            "seconds": res.seconds,
            "cpu_seconds": res.cpu_seconds,
        }
        rc = 0
    except Exception as exc:  # reported to the launcher, which raises a typed error
        payload = {"error": type(exc).__name__, "message": str(exc)}
        rc = 1
    out.write_text(json.dumps(payload))
    return rc


# Loads this file directly: importing ``privrec.secure`` would pull in scipy.stats (seconds
# of start-up per party) for nothing the party needs.
_PARTY_CODE = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_privrec_mpc_party', {path!r})\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "sys.exit(mod._party_main())\n"
)
