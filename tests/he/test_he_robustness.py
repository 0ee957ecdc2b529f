"""What a hostile client (or server) can send: other primes, compression bombs, broken headers.

Each of these once escaped as a plain ``ValueError``, ``OverflowError`` or ``RecursionError``
(HTTP 500), allocated gigabytes, or broke the server for every later client; all must now be a
:class:`~privrec.errors.MessageRejected` (HTTP 422) raised before SEAL parses anything large.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tenseal")

from privrec.errors import MessageRejected
from privrec.secure import he_backend as hb
from privrec.secure.he import (
    CKKSParams,
    Packing,
    PrivateScoringClient,
    PrivateScoringServer,
    ScoringRequest,
    ScoringResponse,
    TenSEALBackend,
    _pack,
)

PARAMS = CKKSParams()
N = PARAMS.poly_modulus_degree
K = len(PARAMS.coeff_mod_bit_sizes)
Y = np.random.default_rng(5).normal(0.0, 0.3, size=(50, 8))
U = np.linspace(-1.0, 1.0, 8)


@pytest.fixture(scope="module")
def client() -> PrivateScoringClient:
    return PrivateScoringClient(packing=Packing.COMPACT)


def _request(client: PrivateScoringClient, context: bytes) -> bytes:
    """A compact request carrying ``context`` (and the client's own ciphertext)."""
    cts = client.encrypt_query(U).ciphertexts
    cid = hashlib.sha256(context).hexdigest()
    return ScoringRequest(Packing.COMPACT, U.size, cid, cts, context).to_bytes()


def _blobs(context: bytes) -> tuple[dict[str, Any], list[bytes]]:
    return hb._unpack(hb._MAGIC_CONTEXT, context)


def _seal(kind_members: bytes, version: bytes, compr: int = 0) -> bytes:
    """A SEAL object: header (``compr`` mode, this version) in front of ``kind_members``."""
    head = struct.pack("<HBBBBHQ", 0xA15E, 16, *version, compr, 0, 16 + len(kind_members))
    return head + kind_members


def _version(context: bytes) -> bytes:
    """The SEAL version bytes of a context's objects (its first header)."""
    return _blobs(context)[1][0][3:5]


def _members(backend: TenSEALBackend, blob: bytes, kind: Any) -> bytes:
    return backend._uncompressed(blob, kind, PARAMS)[16:]


def _zstd_rle(n_bytes: int) -> bytes:
    """A zstd frame of RLE blocks (4 bytes per 128 KiB of zeros): a tiny decompression bomb.

    Built by hand so the test needs no zstd tool; no content size is declared."""
    block = 128 * 1024
    out = [struct.pack("<I", 0xFD2FB528), bytes([0x00, 11 << 3])]  # window 2 MiB
    blocks = -(-n_bytes // block)
    for i in range(blocks):
        last = int(i == blocks - 1)
        out.append(((block << 3) | (1 << 1) | last).to_bytes(3, "little") + b"\0")
    return b"".join(out)


# ------------------------------------------------------------- bug 1: other primes
def _other_primes_context(backend: TenSEALBackend, header: dict[str, Any]) -> bytes:
    """A public context with 60/40/60-bit NTT-friendly primes other than the standard ones."""
    s = backend._s
    p60a, _, p60c, _, q40b = s.CoeffModulus.Create(N, [60, 60, 60, 40, 40])
    parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(N)
    parms.set_coeff_modulus([p60c, q40b, p60a])
    std = [m.value() for m in s.CoeffModulus.Create(N, list(PARAMS.coeff_mod_bit_sizes))]
    assert [m.value() for m in parms.coeff_modulus()] != std
    ctx = backend._checked_context(parms)  # SEAL and the 128-bit bound accept them
    keygen = s.KeyGenerator(ctx)
    pk, gk = s.PublicKey(), s.GaloisKeys()
    keygen.create_public_key(pk)
    keygen.create_galois_keys([3], gk)
    blobs = [backend._dump(parms), backend._dump(pk), backend._dump(gk)]
    return hb._pack(hb._MAGIC_CONTEXT, header, blobs)


@pytest.mark.parametrize("prepared", [False, True])
def test_context_with_other_primes_is_refused_and_honest_clients_still_served(
    client: PrivateScoringClient, prepared: bool
) -> None:
    """A context with other primes of the standard sizes was scored (200) and its encoding of
    the item matrix cached, so every honest query after it failed with a ValueError (500)."""
    server = PrivateScoringServer(Y, max_sessions=0)  # like the HTTP route
    if prepared:
        server.prepare(Packing.COMPACT)
    header, _ = _blobs(client.public_context)
    evil = _other_primes_context(client.backend, header)  # type: ignore[arg-type]
    with pytest.raises(MessageRejected, match="primes"):
        server.score(_request(client, evil))
    assert server.queries_answered == 0
    assert set(server._encoded) <= {(PARAMS, Packing.COMPACT)}
    honest = PrivateScoringClient(packing=Packing.COMPACT)
    scores = honest.decrypt_scores(server.score(honest.encrypt_query(U).to_bytes()).to_bytes())
    np.testing.assert_allclose(scores, Y @ U, atol=1e-4)
    assert set(server._encoded) == {(PARAMS, Packing.COMPACT)}  # keyed by the server's own


def test_other_parameters_refused_before_any_key_is_parsed(
    client: PrivateScoringClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = TenSEALBackend()
    loaded: list[object] = []
    monkeypatch.setattr(backend, "_load_into", lambda *a: loaded.append(a))
    other = CKKSParams(16384, (60, 40, 60), 40)
    with pytest.raises(MessageRejected, match="differ"):
        backend.load_context(client.public_context, expected=other)
    assert loaded == []


# ---------------------------------------------------------- bug 2: compressed objects
def _spy(backend: TenSEALBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the type of every object SEAL is asked to load."""
    seen: list[str] = []
    real = backend._load_into

    def load(obj: Any, data: bytes, *args: Any) -> Any:
        seen.append(type(obj).__name__)
        return real(obj, data, *args)

    monkeypatch.setattr(backend, "_load_into", load)
    return seen


def test_compressed_key_bomb_refused_before_seal_inflates_it(
    client: PrivateScoringClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation key whose zstd stream inflates far beyond what a key needs: SEAL inflated such
    a 709 kB blob to 3 GB before refusing it. Here 64 MiB, refused with a ~1 MB buffer."""
    backend = TenSEALBackend()
    header, blobs = _blobs(client.public_context)
    bomb = _seal(_zstd_rle(64 << 20), _version(client.public_context), compr=2)
    assert len(bomb) < 3000
    context = hb._pack(hb._MAGIC_CONTEXT, header, [*blobs[:2], bomb])
    seen = _spy(backend, monkeypatch)
    with pytest.raises(MessageRejected, match="inflates beyond"):
        backend.load_context(context)
    assert "GaloisKeys" not in seen
    # the same over the wire, and a zlib bomb likewise
    zbomb = _seal(zlib.compress(bytes(16 << 20), 9), _version(client.public_context), compr=1)
    for blob in (bomb, zbomb):
        context = hb._pack(hb._MAGIC_CONTEXT, header, [*blobs[:2], blob])
        with pytest.raises(MessageRejected, match="inflates beyond"):
            PrivateScoringServer(Y, max_sessions=0).score(_request(client, context))


def test_nested_compressed_object_refused(
    client: PrivateScoringClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEAL inflates nested objects too: a bomb inside an honest-sized, uncompressed key."""
    backend = TenSEALBackend()
    header, blobs = _blobs(client.public_context)
    members = _members(backend, blobs[2], "galois_keys")
    at = 32 + 8 + 8 + 8  # parms_id, slot count, empty slot 0, slot 1's key count
    (size,) = struct.unpack_from("<Q", members, at + 8)
    inner = _seal(_zstd_rle(64 << 20), backend._version, compr=2)
    crafted = members[:at] + inner + members[at + size :]
    context = hb._pack(hb._MAGIC_CONTEXT, header, [*blobs[:2], _seal(crafted, backend._version)])
    seen = _spy(backend, monkeypatch)
    with pytest.raises(MessageRejected, match="nested object is compressed"):
        backend.load_context(context)
    assert "GaloisKeys" not in seen


def _set_u64(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("<Q", value) + data[at + 8 :]


@pytest.mark.parametrize(
    ("kind", "mutate", "why"),
    [
        # a ciphertext of 16 components (3 MB declared) with the data of 2
        ("ciphertext", lambda m: _set_u64(m, 33, 16), "two-component"),
        # a coefficient array declaring 2^40 words
        ("ciphertext", lambda m: _set_u64(m, 73 + 16, 1 << 40), "wrong length"),
        # key-slot and keys-per-slot counts SEAL would reserve() from
        ("galois_keys", lambda m: _set_u64(m, 32, 1 << 40), "slots"),
        ("galois_keys", lambda m: _set_u64(m, 40, 1 << 40), "one rotation key"),
        ("galois_keys", lambda m: m + bytes(8), "larger than"),
        ("galois_keys", lambda m: m[:-8], "truncated|size disagrees"),
        ("public_key", lambda m: _set_u64(m, 33 + 16, 1), "two-component"),
    ],
)
def test_declared_sizes_beyond_the_parameters_refused(
    client: PrivateScoringClient,
    monkeypatch: pytest.MonkeyPatch,
    kind: Any,
    mutate: Callable[[bytes], bytes],
    why: str,
) -> None:
    backend = TenSEALBackend()
    header, blobs = _blobs(client.public_context)
    ct = client.encrypt_query(U).ciphertexts[0]
    blob = {"ciphertext": ct, "public_key": blobs[1], "galois_keys": blobs[2]}[kind]
    crafted = _seal(mutate(_members(backend, blob, kind)), backend._version)
    seen = _spy(backend, monkeypatch)
    with pytest.raises(MessageRejected, match=why):
        if kind == "ciphertext":
            backend.deserialize(backend.load_context(client.public_context), crafted)
        else:
            at = 1 if kind == "public_key" else 2
            backend.load_context(hb._pack(hb._MAGIC_CONTEXT, header, _swap(blobs, at, crafted)))
    loaded = {"ciphertext": "Ciphertext", "public_key": "PublicKey", "galois_keys": "GaloisKeys"}
    assert loaded[kind] not in seen  # refused before SEAL parsed it


def _swap(blobs: list[bytes], at: int, blob: bytes) -> list[bytes]:
    return [blob if i == at else b for i, b in enumerate(blobs)]


def test_uncompressed_and_zlib_objects_of_the_right_size_still_load(
    client: PrivateScoringClient,
) -> None:
    """SEAL writes zstd; the same objects uncompressed or zlib-compressed are as good."""
    backend = TenSEALBackend()
    header, blobs = _blobs(client.public_context)
    kinds = ("parms", "public_key", "galois_keys")
    plain = [
        _seal(_members(backend, b, k), backend._version) for b, k in zip(blobs, kinds, strict=True)
    ]
    packed = [
        _seal(zlib.compress(_members(backend, b, k)), backend._version, compr=1)
        for b, k in zip(blobs, kinds, strict=True)
    ]
    server = PrivateScoringServer(Y, max_sessions=0)
    for variant in (plain, packed):
        scores = client.decrypt_scores(
            server.score(_request(client, hb._pack(hb._MAGIC_CONTEXT, header, variant)))
        )
        np.testing.assert_allclose(scores, Y @ U, atol=1e-4)


def test_response_bomb_refused_by_the_client(client: PrivateScoringClient) -> None:
    """A hostile server's response ciphertexts are bounded the same way."""
    bomb = _seal(_zstd_rle(64 << 20), _version(client.public_context), compr=2)
    with pytest.raises(MessageRejected, match="inflates beyond"):
        client.decrypt_scores(ScoringResponse(10, (bomb,)).to_bytes())
    with pytest.raises(MessageRejected, match="ciphertexts for"):
        client.decrypt_scores(ScoringResponse(10, (bomb, bomb)).to_bytes())


# ----------------------------------------------------------- bug 3: message headers
def _raw(magic: bytes, head: bytes) -> bytes:
    return magic + struct.pack("<I", len(head)) + head


def _request_head(**fields: Any) -> dict[str, Any]:
    base = {"packing": "compact", "n_factors": 8, "context_id": "0" * 64, "has_context": False}
    return {**base, "lengths": [], **fields}


_BAD_HEADS = [
    b'{"packing":"compact","n_factors":1e999,"context_id":"x","has_context":false,"lengths":[]}',
    b'{"lengths":[1e999]}',
    b'{"lengths":[],"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # too large
    b'{"lengths":[],"a":' + b"[" * 2_000 + b"]" * 2_000 + b"}",  # small, but 2000 deep
    b'{"lengths":[NaN]}',
    b'{"lengths":[Infinity]}',
    b'{"lengths":[true]}',
    b'{"lengths":[-1]}',
    b'{"lengths":["4"]}',
    b'{"lengths":[' + b"9" * 5000 + b"]}",  # more digits than int() parses
    b"[]",
    b"\xff\xfe",
    json.dumps(_request_head(n_factors=1e300)).encode(),
    json.dumps(_request_head(n_factors="8")).encode(),
    json.dumps(_request_head(n_factors=True)).encode(),
    json.dumps(_request_head(n_factors=10**30)).encode(),
    json.dumps(_request_head(n_factors=0)).encode(),
    json.dumps(_request_head(has_context="yes")).encode(),
    json.dumps(_request_head(packing=["compact"])).encode(),
    json.dumps(_request_head(packing={"a": 1})).encode(),
    json.dumps(_request_head(context_id=7)).encode(),
    json.dumps(_request_head(context_id="../" * 30)).encode(),
]


@pytest.mark.parametrize("head", _BAD_HEADS, ids=range(len(_BAD_HEADS)))
def test_malformed_headers_are_message_rejected(head: bytes) -> None:
    """``1e999`` raised OverflowError, 200,000 brackets RecursionError: now all refused."""
    server = PrivateScoringServer(np.ones((10, 8)), max_sessions=0)
    with pytest.raises(MessageRejected):
        server.score(_raw(b"PRHEQ1", head))
    with pytest.raises(MessageRejected):
        ScoringRequest.from_bytes(_raw(b"PRHEQ1", head))
    with pytest.raises(MessageRejected):  # the client parses the server's answer the same way
        ScoringResponse.from_bytes(_raw(b"PRHER1", head))


@pytest.mark.parametrize(
    "fields",
    [
        {"n_items": 1e999},
        {"n_items": 10.0},
        {"n_items": -1},
        {"noise_sigma": "0.1"},
        {"noise_sigma": True},
        {"noise_sigma": -1.0},
    ],
)
def test_malformed_response_fields_rejected(fields: dict[str, Any]) -> None:
    head = {"n_items": 10, "noise_sigma": 0.0, **fields}
    with pytest.raises(MessageRejected):
        ScoringResponse.from_bytes(_pack(b"PRHER1", head, []))


@pytest.mark.parametrize(
    "fields",
    [
        {"poly_modulus_degree": 1e999},
        {"poly_modulus_degree": "8192"},
        {"coeff_mod_bit_sizes": [60, 1e999, 60]},
        {"coeff_mod_bit_sizes": 60},
        {"scale_bits": 40.0},
        {"galois_keys": 1},
        {"public_key": "yes"},
        {"scheme": ["ckks"]},
    ],
)
def test_malformed_context_headers_rejected(
    client: PrivateScoringClient, fields: dict[str, Any]
) -> None:
    header, blobs = _blobs(client.public_context)
    context = hb._pack(hb._MAGIC_CONTEXT, {**header, **fields}, blobs)
    with pytest.raises(MessageRejected):
        TenSEALBackend().load_context(context)
    with pytest.raises(MessageRejected):
        PrivateScoringServer(Y, max_sessions=0).score(_request(client, context))


def test_refusals_do_not_echo_client_text(client: PrivateScoringClient) -> None:
    """Refusals go back to the caller (and into logs): none repeats what the client wrote."""
    marker = "<script>evil</script>"
    server = PrivateScoringServer(Y, max_sessions=0)
    heads = [
        _request_head(packing=marker),
        _request_head(context_id=marker),
        _request_head(n_factors=marker),
        _request_head(has_context=marker),
    ]
    for head in heads:
        with pytest.raises(MessageRejected) as info:
            server.score(_raw(b"PRHEQ1", json.dumps(head).encode()))
        assert marker not in str(info.value)
    header, blobs = _blobs(client.public_context)
    context = hb._pack(hb._MAGIC_CONTEXT, {**header, "scheme": marker}, blobs)
    with pytest.raises(MessageRejected) as info:
        server.score(_request(client, context))
    assert marker not in str(info.value)
