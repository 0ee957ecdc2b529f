"""Homomorphic private scoring: exact enough, same top-k, refuses weak or secret contexts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("tenseal")

from privrec.errors import ConfigError, InsecureParametersError, MessageRejected
from privrec.models.als import ImplicitALS
from privrec.privacy.accounting import calibrate
from privrec.privacy.budget import Budget
from privrec.privacy.mechanisms import gaussian_event
from privrec.secure import he_backend as he
from privrec.secure.he import (
    CKKSParams,
    HEBackend,
    Packing,
    PrivateScoringClient,
    PrivateScoringServer,
    ScoreNoise,
    ScoringRequest,
    ScoringResponse,
    TenSEALBackend,
    check_security,
    private_recommend,
)

SLOTS = CKKSParams().slot_count


@pytest.fixture(scope="module")
def factors() -> tuple[np.ndarray, np.ndarray]:
    """A catalogue spanning two ciphertext chunks and one user vector, k = 16."""
    rng = np.random.default_rng(7)
    y = rng.normal(0.0, 0.3, size=(SLOTS + 900, 16))
    u = rng.normal(0.0, 0.3, size=16)
    return y, u


@pytest.fixture(scope="module")
def clients() -> dict[Packing, PrivateScoringClient]:
    return {p: PrivateScoringClient(packing=p) for p in Packing}


def _server(y: np.ndarray, **kw: object) -> PrivateScoringServer:
    return PrivateScoringServer(y, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ parameters
def test_default_parameters_meet_128_bit_bound() -> None:
    p = CKKSParams()
    p.validate()
    assert p.total_bits == 160 <= he.HE_STANDARD_MAX_BITS[8192] == 218
    assert he.HE_STANDARD_MAX_BITS == {
        1024: 27,
        2048: 54,
        4096: 109,
        8192: 218,
        16384: 438,
        32768: 881,
    }


@pytest.mark.parametrize(
    ("degree", "bits"),
    [(4096, (60, 40, 60)), (8192, (60, 40, 40, 40, 60)), (3000, (40, 30, 40))],
)
def test_insecure_parameters_refused_at_creation(degree: int, bits: tuple[int, ...]) -> None:
    p = CKKSParams(degree, bits, 30)
    with pytest.raises(InsecureParametersError):
        p.validate()
    with pytest.raises(InsecureParametersError):
        PrivateScoringClient(params=p)
    with pytest.raises(InsecureParametersError):
        check_security(degree, sum(bits))


def test_scale_must_fit_the_chain() -> None:
    with pytest.raises(ConfigError):
        CKKSParams(8192, (60, 40, 60), 50).validate()


def test_backend_satisfies_protocol() -> None:
    assert isinstance(TenSEALBackend(), HEBackend)


# --------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("packing", list(Packing))
def test_decrypted_scores_equal_plaintext(
    factors: tuple[np.ndarray, np.ndarray],
    clients: dict[Packing, PrivateScoringClient],
    packing: Packing,
) -> None:
    y, u = factors
    client = clients[packing]
    server = _server(y)
    response = server.score(client.encrypt_query(u, resend_context=True))
    assert len(response.ciphertexts) == 2  # two chunks of slot_count items
    scores = client.decrypt_scores(response)
    exact = y @ u
    assert scores.shape == exact.shape
    assert np.max(np.abs(scores - exact)) <= 1e-5 * np.max(np.abs(exact))


def _same_top_k(
    private: tuple[np.ndarray, np.ndarray], plain: tuple[np.ndarray, np.ndarray]
) -> None:
    """Equal item lists; a swap is tolerated only between scores closer than CKKS error."""
    items, scores = private
    ref_items, ref_scores = plain
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5 * np.abs(ref_scores).max())
    for i, (a, b) in enumerate(zip(items, ref_items, strict=True)):
        if a != b:
            assert abs(float(ref_scores[i]) - float(scores[i])) < 1e-5


@pytest.mark.parametrize("packing", list(Packing))
def test_top_k_equals_plaintext_synthetic(packing: Packing) -> None:
    x = sp.random(120, 300, density=0.08, random_state=3, format="csr")
    x.data[:] = 1.0
    model = ImplicitALS(factors=8, iterations=5).fit(x)
    client = PrivateScoringClient(packing=packing)
    server = PrivateScoringServer.from_model(model)
    for user in range(6):
        hist = x[user].toarray()[0]
        got = private_recommend(model, hist, k=10, client=client, server=server)
        _same_top_k(got, model.recommend_history(hist, k=10))


@pytest.mark.realdata
def test_top_k_equals_plaintext_on_ml100k(dataset) -> None:  # type: ignore[no-untyped-def]
    from privrec.data import load

    data = load(dataset("ml-100k") / "u.data", format="ml-100k")
    model = ImplicitALS(factors=32, iterations=5).fit(data)
    client = PrivateScoringClient()
    server = PrivateScoringServer.from_model(model)
    assert server.n_items == data.n_items
    for user in range(0, 900, 90):
        hist = data.matrix[user].toarray()[0]
        got = private_recommend(model, hist, k=10, client=client, server=server)
        _same_top_k(got, model.recommend_history(hist, k=10))
        assert not np.isin(got[0], np.flatnonzero(hist)).any()


# ------------------------------------------------------------------- messages
def test_messages_round_trip(
    factors: tuple[np.ndarray, np.ndarray], clients: dict[Packing, PrivateScoringClient]
) -> None:
    y, u = factors
    client = clients[Packing.COMPACT]
    request = client.encrypt_query(u, resend_context=True)
    again = ScoringRequest.from_bytes(request.to_bytes())
    assert again == request
    response = _server(y).score(request.to_bytes())
    assert ScoringResponse.from_bytes(response.to_bytes()) == response
    np.testing.assert_allclose(
        client.decrypt_scores(response.to_bytes()), client.decrypt_scores(response)
    )
    # the public context round-trips to the same parameters and keeps its rotation key
    backend = TenSEALBackend()
    ctx = backend.load_context(client.public_context)
    assert backend.context_params(ctx) == client.params
    assert backend.has_rotation_keys(ctx) and not backend.is_private(ctx)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-10],
        lambda b: b"XXXX" + b[4:],
        lambda b: b + b"junk",
        lambda b: b[:12],
    ],
)
def test_malformed_request_rejected(
    factors: tuple[np.ndarray, np.ndarray],
    clients: dict[Packing, PrivateScoringClient],
    mutate: object,
) -> None:
    y, u = factors
    raw = clients[Packing.REPLICATED].encrypt_query(u[:16], resend_context=True).to_bytes()
    with pytest.raises(MessageRejected):
        _server(y).score(mutate(raw))  # type: ignore[operator]


def test_unknown_session_and_wrong_shape_rejected(
    factors: tuple[np.ndarray, np.ndarray], clients: dict[Packing, PrivateScoringClient]
) -> None:
    y, u = factors
    client = clients[Packing.REPLICATED]
    client.encrypt_query(u)  # marks the context as sent
    no_context = client.encrypt_query(u)
    assert no_context.context is None
    with pytest.raises(MessageRejected, match="unknown context"):
        _server(y).score(no_context)
    with pytest.raises(MessageRejected, match="factors"):
        _server(y[:, :8]).score(client.encrypt_query(u, resend_context=True))


# ------------------------------------------------------------------- security
def test_public_context_cannot_decrypt(
    factors: tuple[np.ndarray, np.ndarray], clients: dict[Packing, PrivateScoringClient]
) -> None:
    _, u = factors
    client = clients[Packing.REPLICATED]
    backend = TenSEALBackend()
    public = backend.load_context(client.public_context)
    assert not public.is_private()
    ct = backend.deserialize(public, client.encrypt_query(u).ciphertexts[0])
    with pytest.raises(InsecureParametersError, match="secret key"):
        backend.decrypt(public, ct)


def test_server_never_holds_a_secret_key(
    factors: tuple[np.ndarray, np.ndarray], clients: dict[Packing, PrivateScoringClient]
) -> None:
    y, u = factors
    server = _server(y)
    for client in clients.values():
        server.score(client.encrypt_query(u, resend_context=True))
    assert len(server.contexts()) == 2
    assert all(not ctx.is_private() for ctx in server.contexts())


def test_context_with_secret_key_refused(
    factors: tuple[np.ndarray, np.ndarray], clients: dict[Packing, PrivateScoringClient]
) -> None:
    y, u = factors
    client = clients[Packing.REPLICATED]
    secret = client.backend.context_bytes(client.context, include_secret_key=True)
    assert len(secret) > len(client.public_context)
    good = client.encrypt_query(u, resend_context=True)
    import hashlib

    bad = ScoringRequest(
        good.packing, good.n_factors, hashlib.sha256(secret).hexdigest(), good.ciphertexts, secret
    )
    server = _server(y)
    with pytest.raises(InsecureParametersError, match="secret key"):
        server.score(bad.to_bytes())
    assert server.contexts() == []


def _repack_context(raw: bytes, **header: object) -> bytes:
    head, blobs = he._unpack(he._MAGIC_CONTEXT, raw)
    head.update(header)
    return he._pack(he._MAGIC_CONTEXT, head, blobs)


def test_insecure_context_refused_on_load(clients: dict[Packing, PrivateScoringClient]) -> None:
    backend = TenSEALBackend()
    raw = clients[Packing.REPLICATED].public_context
    # a header claiming 240 bits at degree 8192 is refused before any key is parsed
    with pytest.raises(InsecureParametersError):
        backend.load_context(_repack_context(raw, coeff_mod_bit_sizes=[60, 60, 60, 60]))
    # a header that lies about the real parameters is caught against them
    for lie in ([60, 30, 60], [60, 40, 50]):
        with pytest.raises(MessageRejected):
            backend.load_context(_repack_context(raw, coeff_mod_bit_sizes=lie))
    with pytest.raises(MessageRejected):
        backend.load_context(b"not a context")


def test_security_bound_checked_on_real_parameters_at_load(
    clients: dict[Packing, PrivateScoringClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a stricter bound, the same bytes are refused: the load path runs the check."""
    raw = clients[Packing.REPLICATED].public_context
    monkeypatch.setitem(he.HE_STANDARD_MAX_BITS, 8192, 150)
    with pytest.raises(InsecureParametersError, match="128-bit"):
        TenSEALBackend().load_context(raw)


def test_server_refuses_other_parameters(factors: tuple[np.ndarray, np.ndarray]) -> None:
    """Other parameters are a bad client message (4xx over HTTP), refused before any key."""
    y, u = factors
    client = PrivateScoringClient(params=CKKSParams(16384, (60, 40, 60), 40))
    with pytest.raises(MessageRejected, match="differ"):
        _server(y).score(client.encrypt_query(u))


def test_compact_packing_needs_rotation_key(
    factors: tuple[np.ndarray, np.ndarray], clients: dict[Packing, PrivateScoringClient]
) -> None:
    y, u = factors
    client = clients[Packing.REPLICATED]  # its context has no rotation key
    req = client.encrypt_query(u, resend_context=True)
    forged = ScoringRequest(
        Packing.COMPACT, req.n_factors, req.context_id, req.ciphertexts[:1], req.context
    )
    with pytest.raises(MessageRejected, match="rotation"):
        _server(y).score(forged)


def test_header_fields_are_plain_json(clients: dict[Packing, PrivateScoringClient]) -> None:
    head, _ = he._unpack(he._MAGIC_CONTEXT, clients[Packing.REPLICATED].public_context)
    json.dumps(head)
    assert head["secret_key"] is False and head["galois_keys"] is False


# --------------------------------------------------------------------- DP noise
def test_score_noise_calibration() -> None:
    noise = ScoreNoise(epsilon=1.0, delta=1e-6, item_clip_norm=0.5, user_clip_norm=2.0)
    assert noise.sensitivity == pytest.approx(1.0)
    assert noise.noise_multiplier == pytest.approx(calibrate(Budget(1.0, 1e-6), gaussian_event))
    assert noise.epsilon_after(1) <= 1.0 + 1e-9
    assert noise.epsilon_after(10) > 1.0
    with pytest.raises(ConfigError):
        ScoreNoise(epsilon=1.0, delta=1e-6, item_clip_norm=0.0, user_clip_norm=1.0)


def test_dp_noise_variance(clients: dict[Packing, PrivateScoringClient]) -> None:
    """Zero user vector → the decrypted scores are the noise alone: check mean and variance."""
    noise = ScoreNoise(epsilon=2.0, delta=1e-6, item_clip_norm=1.0, user_clip_norm=1.0)
    n = 2 * SLOTS
    y = np.random.default_rng(1).normal(0.0, 3.0, size=(n, 16))  # rows get clipped to norm 1
    server = _server(y, noise=noise, rng=np.random.default_rng(2))
    client = clients[Packing.REPLICATED]
    response = server.score(client.encrypt_query(np.zeros(16), resend_context=True))
    assert response.noise_sigma == pytest.approx(noise.sigma)
    s = client.decrypt_scores(response)
    var = float(np.var(s))
    # the sample variance has relative s.d. sqrt(2/n) ≈ 1.6%: a ±8% band is ~5 s.d.
    assert abs(var / noise.sigma**2 - 1.0) < 0.08
    assert abs(float(np.mean(s))) < 5 * noise.sigma / np.sqrt(n)


def test_noisy_scores_keep_signal_with_clipping(
    factors: tuple[np.ndarray, np.ndarray], clients: dict[Packing, PrivateScoringClient]
) -> None:
    y, u = factors
    noise = ScoreNoise(epsilon=8.0, delta=1e-6, item_clip_norm=0.5, user_clip_norm=1.0)
    server = _server(y, noise=noise, rng=np.random.default_rng(3))
    client = PrivateScoringClient(user_clip_norm=1.0)
    s = client.decrypt_scores(server.score(client.encrypt_query(u * 10)))
    norms = np.linalg.norm(y, axis=1, keepdims=True)
    clipped_y = y * np.minimum(1.0, 0.5 / norms)
    exact = clipped_y @ (u * 10 / np.linalg.norm(u * 10))
    resid = s - exact
    assert abs(float(np.std(resid)) / noise.sigma - 1.0) < 0.1


def test_only_fresh_ciphertexts_are_scored() -> None:
    """A client that lowers its ciphertext's scale made the server's noise round away (column 0
    of Y came back to 3e-9 under σ = 4.2); a response sent back as a request, a malformed header:
    all MessageRejected before anything is computed."""
    rng = np.random.default_rng(0)
    y = rng.normal(0, 0.3, size=(50, 4))
    noise = ScoreNoise(1.0, 1e-6, item_clip_norm=1.0, user_clip_norm=1.0)
    server = PrivateScoringServer(y, noise=noise)
    client = PrivateScoringClient(packing="replicated", user_clip_norm=1.0)
    u = np.array([1.0, 0.0, 0.0, 0.0])
    honest = server.score(client.encrypt_query(u))  # also registers the context
    be, ctx = client.backend, client.context
    cts = [be.encrypt(ctx, np.full(SLOTS, x)) for x in u]
    for c in cts:
        c.scale = 1.0
    stripped = ScoringRequest(
        Packing.REPLICATED, 4, client.context_id, tuple(be.serialize(c) for c in cts)
    )
    with pytest.raises(MessageRejected, match="fresh"):
        server.score(stripped)
    echoed = ScoringRequest(Packing.REPLICATED, 4, client.context_id, honest.ciphertexts * 4)
    with pytest.raises(MessageRejected, match="fresh"):
        server.score(echoed)
    from privrec.secure.he import _MAGIC_RESPONSE, _pack

    for header in ({"n_items": None, "noise_sigma": 0.0}, {"n_items": -1, "noise_sigma": 0.0}):
        with pytest.raises(MessageRejected):
            ScoringResponse.from_bytes(_pack(_MAGIC_RESPONSE, header, list(honest.ciphertexts)))
    assert server.queries_answered == 1
