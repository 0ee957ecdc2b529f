"""SecAgg+ secure aggregation over Z_{2^b} as transport-agnostic client/server state machines.

The server learns the sum modulo ``2**bits`` of the surviving clients' vectors and
nothing else about any single vector (Bonawitz et al., CCS 2017; the sparse-graph
variant SecAgg+ of Bell et al., CCS 2020). Each method is one protocol phase: it takes
the messages of the previous phase and returns the messages of the next, so the same
objects drive the in-process simulator (:func:`privrec.federated.simulate_secagg`) and
a networked deployment, where the transport only moves ``to_bytes()`` payloads.

Round, in four phases (``U1 ⊇ U2 ⊇ U3 ⊇ U4`` are the clients still present):

1. ``advertise_keys`` -- each client makes two X25519 key pairs (one to encrypt shares,
   one for pairwise masks), a 256-bit self-mask seed and a hash commitment to it.
   The server forwards to every client its neighbours' public keys.
2. ``share_keys`` -- each client Shamir-shares (``t`` of ``k``) its self-mask seed and its
   mask private key to its neighbours; each neighbour's pair of shares is encrypted with
   AES-256-GCM under ``HKDF-SHA256(X25519(enc keys))``, with the round id, sender and
   receiver as associated data. The server routes ciphertexts it cannot read.
3. ``masked_input`` -- each client sends ``y = x + PRG(b_u) + Σ_v ±PRG(s_uv) mod 2**bits``,
   ``+`` when ``u < v``; ``s_uv`` is the HKDF of the X25519 agreement of mask keys, so the
   pairwise masks cancel in the sum.
   The masked vector carries an HMAC-SHA256 tag keyed from the X25519 agreement of the
   client's encryption key with the server's round key (sent in the key directory): the
   server rejects a vector with a changed bit instead of summing it.
4. ``unmask`` -- for each neighbour, a surviving client reveals *either* its share of the
   neighbour's self-mask seed (neighbour survived) *or* of its mask private key (neighbour
   dropped), never both. The server rebuilds the seeds and keys, checks them against the
   commitments and public keys, and removes all remaining masks.

Against a **malicious server** (``RoundConfig.threat_model = "malicious"``) three things
change (Bonawitz et al. 2017, §6; Bell et al. 2020): the threshold follows ``t > (k + c)/2``
so that no server strategy collects ``t`` shares of *both* secrets of a client from honest
neighbours (each reveals one); advertisements are signed with each client's long-term
Ed25519 identity key (from ``RoundConfig.identity_keys``, a PKI the server does not control),
so the server cannot slip its own keys between neighbours; and before ``unmask`` a
``consistency_check`` phase has every survivor sign the full survivor set, and a client
reveals shares only if at least ``t`` of its neighbours signed the very set it signed.

A client's in-round state can leave the process between phases
(:meth:`SecAggClient.export_state` / :meth:`SecAggClient.restore_state`) for transports
that run each phase in a fresh process, such as a Flower SuperNode. That state is secret
key material: it must stay on the device.

Modules: :mod:`privrec.secure.round` (the public :class:`RoundConfig` and the derivations
both sides share), :mod:`privrec.secure.client`, :mod:`privrec.secure.server`,
:mod:`privrec.secure.client_state` (the exported-state format); this module gathers them.

Failure semantics: the result is the exact sum of the inputs of the clients in ``U3``,
or :class:`~privrec.errors.ProtocolAbort` (with the phase and the reason). Malformed,
misaddressed, replayed or tampered messages (including a masked input failing its HMAC)
raise :class:`~privrec.errors.MessageRejected`; bad inputs raise
:class:`~privrec.errors.InvalidInputError`.
"""

from __future__ import annotations

from privrec.secure.client import SecAggClient
from privrec.secure.round import MALICIOUS_PHASES, PHASES, RoundConfig, generate_identities
from privrec.secure.server import AggregateResult, SecAggServer

__all__ = [
    "MALICIOUS_PHASES",
    "PHASES",
    "AggregateResult",
    "RoundConfig",
    "SecAggClient",
    "SecAggServer",
    "generate_identities",
]
