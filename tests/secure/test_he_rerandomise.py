"""Re-randomised CKKS responses: the second component no longer gives the item factors away.

Before re-randomisation a response's second component was ``round(c1 · p / q1)``: the client's
own ``c1`` times the server's plaintext ``p``. A client that sends ``c1`` pre-multiplied by the
dropped prime ``q1`` (the request still looks fresh: two components, NTT form, top level, scale
2^40) gets ``c1 · p mod q0`` back exactly and divides its ``c1`` out: ``p``, i.e. the item
factors, bit for bit, while the DP noise sits in the first component only.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tenseal")

from privrec.errors import MessageRejected
from privrec.secure import he_backend
from privrec.secure.he import (
    CKKSParams,
    Packing,
    PrivateScoringClient,
    PrivateScoringServer,
    ScoreNoise,
    ScoringRequest,
    TenSEALBackend,
)

PARAMS = CKKSParams()
SLOTS = PARAMS.slot_count
N = PARAMS.poly_modulus_degree


class _NoRerandomise(TenSEALBackend):
    """The backend as it was: responses leave the server exactly as computed."""

    def rerandomise(self, context: Any, ciphertext: Any) -> Any:
        return ciphertext


@pytest.fixture(scope="module")
def factors() -> tuple[np.ndarray, np.ndarray]:
    """Two ciphertext chunks of items, k = 16, and one user vector."""
    rng = np.random.default_rng(11)
    return rng.normal(0.0, 0.3, size=(SLOTS + 900, 16)), rng.normal(0.0, 0.3, size=16)


@pytest.fixture(scope="module")
def clients() -> dict[Packing, PrivateScoringClient]:
    return {p: PrivateScoringClient(packing=p) for p in Packing}


def _poly(ct: Any, index: int, prime: int = 0) -> list[int]:
    """RNS component ``prime`` (NTT values) of polynomial ``index`` of a SEAL ciphertext."""
    data, width = ct.dyn_array(), int(ct.coeff_modulus_size())
    start = (index * width + prime) * N
    return [int(data.at(start + i)) for i in range(N)]


# ------------------------------------------------------------------ (a) the attack
def _malicious_request(client: PrivateScoringClient) -> tuple[ScoringRequest, list[int], int]:
    """A one-factor request whose components are multiplied by q1 (scale relabelled 2^40)."""
    be, ctx = client.backend, client.context
    s = be._s  # type: ignore[attr-defined]
    q0, q1 = (int(m.value()) for m in ctx.seal.first_context_data().parms().coeff_modulus())
    fresh = be.encrypt(ctx, np.full(SLOTS, 0.5))
    times_q1 = s.Plaintext()
    be._helper(ctx, "encoder").encode(1.0, fresh.parms_id(), float(q1), times_q1)  # type: ignore[attr-defined]
    crafted = s.Ciphertext()
    be._helper(ctx, "evaluator").multiply_plain(fresh, times_q1, crafted)  # type: ignore[attr-defined]
    crafted.scale = 2.0**PARAMS.scale_bits  # all check_fresh can see is metadata
    req = ScoringRequest(
        Packing.REPLICATED,
        1,
        client.context_id,
        (be.serialize(crafted),),
        client.public_context,
    )
    return req, _poly(fresh, 1), q0


def _recover_plaintext(
    client: PrivateScoringClient, blob: bytes, c1: list[int], q0: int
) -> list[int]:
    """The server's plaintext if the response's c1 is ``c1 · p mod q0``: divide c1 out."""
    resp = client.backend.deserialize(client.context, blob)
    return [r * pow(c, -1, q0) % q0 for r, c in zip(_poly(resp, 1), c1, strict=True)]


def test_c1_attack_recovers_item_factors_only_without_rerandomisation() -> None:
    y = np.random.default_rng(3).normal(0.0, 0.3, size=(100, 1))
    noise = ScoreNoise(epsilon=1.0, delta=1e-6, item_clip_norm=1.0, user_clip_norm=1.0)
    client = PrivateScoringClient(packing="replicated")
    be, ctx = client.backend, client.context
    req, c1, q0 = _malicious_request(client)
    # what the server multiplied by: its item column, encoded (one RNS prime at the response level)
    column = np.zeros(SLOTS)
    column[:100] = y[:, 0]

    def expected(blob: bytes) -> list[int]:
        plain = be._s.Plaintext()  # type: ignore[attr-defined]
        level = be.deserialize(ctx, blob).parms_id()
        be._helper(ctx, "encoder").encode(column.tolist(), level, 2.0**PARAMS.scale_bits, plain)  # type: ignore[attr-defined]
        return [int(plain.data(i)) for i in range(N)]

    old = PrivateScoringServer(y, noise=noise, backend=_NoRerandomise())
    blob = old.score(req).ciphertexts[0]
    assert _recover_plaintext(client, blob, c1, q0) == expected(blob)  # exact, despite σ ≈ 4

    new = PrivateScoringServer(y, noise=noise)
    blob = new.score(req).ciphertexts[0]
    got, want = _recover_plaintext(client, blob, c1, q0), expected(blob)
    assert sum(a == b for a, b in zip(got, want, strict=True)) == 0


# ------------------------------------------------------------- (b) fresh randomness
@pytest.mark.parametrize("packing", list(Packing))
def test_identical_requests_get_different_responses(
    packing: Packing, clients: dict[Packing, PrivateScoringClient]
) -> None:
    y = np.random.default_rng(4).normal(0.0, 0.3, size=(300, 8))
    client = clients[packing]
    req = client.encrypt_query(np.full(8, 0.2), resend_context=True).to_bytes()
    server = PrivateScoringServer(y)  # no DP noise: the product alone is deterministic
    first, second = server.score(req), server.score(req)
    assert first.ciphertexts != second.ciphertexts
    a, b = (client.backend.deserialize(client.context, r.ciphertexts[0]) for r in (first, second))
    c1a, c1b = _poly(a, 1), _poly(b, 1)
    assert sum(x == z for x, z in zip(c1a, c1b, strict=True)) == 0
    old = PrivateScoringServer(y, backend=_NoRerandomise())
    assert old.score(req).ciphertexts == old.score(req).ciphertexts  # what it was before
    assert server.last_timings["rerandomise"] > 0


# ------------------------------------------------------------------ (c) precision
@pytest.mark.parametrize("packing", list(Packing))
@pytest.mark.parametrize("with_noise", [False, True])
def test_rerandomised_scores_stay_exact(
    packing: Packing,
    with_noise: bool,
    factors: tuple[np.ndarray, np.ndarray],
    clients: dict[Packing, PrivateScoringClient],
) -> None:
    """Same tolerance as the plain HE tests; with noise, against the very draws the server made
    (a copy of its seeded generator: per chunk, real then imaginary halves of the slots)."""
    y, u = factors
    noise = ScoreNoise(epsilon=4.0, delta=1e-6, item_clip_norm=10.0, user_clip_norm=10.0)
    server = PrivateScoringServer(
        y, noise=noise if with_noise else None, rng=np.random.default_rng(5)
    )
    client = clients[packing]
    scores = client.decrypt_scores(server.score(client.encrypt_query(u, resend_context=True)))
    ref = y @ u  # rows and u are far inside the clip norms: nothing is clipped
    if with_noise:
        draws = np.random.default_rng(5)
        real = [draws.normal(0.0, noise.sigma, size=(2, SLOTS))[0] for _ in range(2)]
        ref = ref + np.concatenate(real)[: y.shape[0]]
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_fresh_zero_error_is_negligible(clients: dict[Packing, PrivateScoringClient]) -> None:
    """The encryption of zero moves a decrypted response by ~1e-9 (max ~1e-8: the rounding of
    the division by the dropped prime, times the secret key), like the product's own error."""
    client = clients[Packing.REPLICATED]
    be, ctx = client.backend, client.context
    ct = be.encrypt(ctx, np.linspace(-1.0, 1.0, SLOTS))
    plain = be.encode(ctx, np.full(SLOTS, 0.75))
    product = be.weighted_sum(ctx, [ct], [plain])  # one level down, as a response
    moved = be.decrypt(ctx, be.rerandomise(ctx, product)) - be.decrypt(ctx, product)
    assert np.abs(moved).max() < 1e-7


def test_noise_covers_the_imaginary_half(clients: dict[Packing, PrivateScoringClient]) -> None:
    """A query in the imaginary half of the slots comes back as ``Y v`` there: it must be as
    noisy as the real half, or a client reads ``Y`` through it."""
    n = SLOTS
    y = np.random.default_rng(6).normal(0.0, 0.3, size=(n, 1))
    noise = ScoreNoise(epsilon=2.0, delta=1e-6, item_clip_norm=10.0, user_clip_norm=1.0)
    client = clients[Packing.REPLICATED]
    be, ctx = client.backend, client.context
    s = be._s  # type: ignore[attr-defined]
    plain, ct = s.Plaintext(), s.Ciphertext()
    be._helper(ctx, "encoder").encode([1j] * SLOTS, 2.0**PARAMS.scale_bits, plain)  # type: ignore[attr-defined]
    be._helper(ctx, "encryptor").encrypt(plain, ct)  # type: ignore[attr-defined]
    req = ScoringRequest(
        Packing.REPLICATED, 1, client.context_id, (be.serialize(ct),), client.public_context
    )
    server = PrivateScoringServer(y, noise=noise, rng=np.random.default_rng(7))
    out = be.deserialize(ctx, server.score(req).ciphertexts[0])
    decoded = s.Plaintext()
    be._helper(ctx, "decryptor").decrypt(out, decoded)  # type: ignore[attr-defined]
    slots = np.asarray(be._helper(ctx, "encoder").decode_complex(decoded))  # type: ignore[attr-defined]
    resid = slots.imag - y[:, 0]
    assert abs(float(np.std(resid)) / noise.sigma - 1.0) < 0.08
    assert abs(float(np.std(slots.real)) / noise.sigma - 1.0) < 0.08


# ------------------------------------------------------------- (d) no public key
def test_context_without_public_key_is_refused(
    clients: dict[Packing, PrivateScoringClient],
) -> None:
    client = clients[Packing.COMPACT]
    be = client.backend
    bare = be.context_bytes(client.context, include_public_key=False)
    head, _ = he_backend._unpack(he_backend._MAGIC_CONTEXT, bare)
    assert head["public_key"] is False
    loaded = be.load_context(bare)
    assert not be.has_public_key(loaded)
    req = client.encrypt_query(np.full(8, 0.1))
    req = ScoringRequest(
        req.packing, req.n_factors, hashlib.sha256(bare).hexdigest(), req.ciphertexts, bare
    )
    server = PrivateScoringServer(np.ones((10, 8)))
    with pytest.raises(MessageRejected, match="public key"):
        server.score(req)
    assert server.queries_answered == 0 and server.contexts() == []
    product = be.weighted_sum(
        loaded, [be.deserialize(loaded, req.ciphertexts[0])], [be.encode(loaded, np.ones(SLOTS))]
    )
    with pytest.raises(MessageRejected, match="public key"):
        be.rerandomise(loaded, product)


def test_contexts_without_the_flag_still_carry_their_public_key(
    clients: dict[Packing, PrivateScoringClient],
) -> None:
    """Contexts serialised before the ``public_key`` header field still load, key and all."""
    client = clients[Packing.REPLICATED]
    head, blobs = he_backend._unpack(he_backend._MAGIC_CONTEXT, client.public_context)
    del head["public_key"]
    old = he_backend._pack(he_backend._MAGIC_CONTEXT, head, blobs)
    assert client.backend.has_public_key(client.backend.load_context(old))
