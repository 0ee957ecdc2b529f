"""What stands before the routes, under abuse: junk keys, key variants, wrong secrets, old paths.

* Malformed keys are refused before rate limiting, so they cannot fill the limiter's table, and
  the table itself stays bounded and O(1) per request.
* One key is one rate-limit bucket: whitespace around it (``\\xa0`` and ``\\x85`` pass HTTP as
  obs-text and ``str.strip`` removes them) is refused, not a fresh bucket.
* Wrong secrets cost a bounded amount of scrypt work for the whole process (a global budget,
  at most two hashes at once), never a per-id lockout: spraying a real key id does not lock
  its holder out. An unknown or revoked id costs the same hash as a real one (no timing oracle).
* Refused model files are listed without the server's paths.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from privrec.errors import AuthenticationError
from privrec.governance import Ledger
from privrec.governance.auth import SCRYPT_N, SCRYPT_P, SCRYPT_R
from privrec.serve import guard
from privrec.serve.app import create_app
from privrec.serve.demo import DemoWorld
from privrec.serve.guard import (
    HASH_CONCURRENCY,
    AuthThrottledError,
    KeyCache,
    RateLimiter,
    key_ident,
    well_formed,
)

from .conftest import Analyst, LiveServer, auth, settings_for


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(guard.time, "monotonic", c)
    return c


def _junk(i: int) -> str:
    return ["junk", "prk_short_x", "prk_" + "z" * 12, "Bearer", ""][i % 5] + secrets.token_hex(8)


def test_malformed_keys_are_refused_before_they_take_a_bucket(world: DemoWorld) -> None:
    with TestClient(create_app(settings_for(world))) as c:
        limiter = c.app.state.ctx.limiter  # type: ignore[attr-defined]
        codes = {c.get("/v1/me", headers={"X-API-Key": _junk(i)}).status_code for i in range(200)}
        codes |= {
            c.get("/v1/me", headers={"Authorization": f"Bearer {_junk(i)}"}).status_code
            for i in range(50)
        }
        assert codes == {401}
        assert len(limiter) == 0  # no bucket for any of them
        assert c.get("/v1/me", headers=auth(world, "ann")).status_code == 200
        assert len(limiter) == 1


def test_the_limiter_forgets_full_buckets_and_stays_bounded(clock: _Clock) -> None:
    rl = RateLimiter(rate=10.0, burst=5, max_entries=1000)
    assert [rl.allow("a") for _ in range(5)] == [0.0] * 5 and rl.allow("a") > 0  # still limits
    for i in range(5000):
        rl.allow(f"x{i}")
    assert len(rl) == 1000  # the cap, least recently used dropped first
    clock.now += rl.refill_seconds  # every bucket is full again: the same as none
    rl.allow("b")
    assert len(rl) == 1
    # O(1) per request even with a full table
    big = RateLimiter(rate=50.0, burst=100)
    for i in range(100_000):
        big.allow(f"y{i}")
    t0 = time.perf_counter()
    for i in range(2000):
        big.allow(f"z{i}")
    assert time.perf_counter() - t0 < 0.5 and len(big) == 100_000


def test_one_key_is_one_bucket_whitespace_variants_are_refused(
    world: DemoWorld, model_id: str
) -> None:
    """A real server (the test client would re-encode the header bytes): ``key\\xa0`` must not
    verify as ``key`` in a bucket of its own."""
    import httpx

    key = world.keys["ben"]
    app = create_app(settings_for(world, rate_limit=0.01, burst=2))
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        plain = [c.get("/v1/me", headers={"X-API-Key": key}).status_code for _ in range(3)]
        assert plain == [200, 200, 429]
        body = b'{"model": "%s", "history": [], "k": 3}' % model_id.encode()
        for i in range(6):
            raw = (key + ("\xa0" if i % 2 else "\x85") * (i + 1)).encode("latin-1")
            assert c.get("/v1/me", headers=[(b"x-api-key", raw)]).status_code == 401
            r = c.post(  # the recommendation fast path takes keys the same way
                "/v1/recommend",
                headers=[(b"x-api-key", raw), (b"content-type", b"application/json")],
                content=body,
            )
            assert r.status_code == 401, r.text
        # the limiter only ever saw the one key
        assert len(app.state.ctx.limiter) == 1
    assert well_formed(key) and key_ident(key) == key_ident(key)
    for pad in ("\xa0", "\x85", " ", "\t", "\u2003"):
        assert not well_formed(key + pad) and not well_formed(pad + key)
        with pytest.raises(AuthenticationError):
            key_ident(key + pad)


def test_whitespace_after_bearer_is_the_same_key_in_the_same_bucket(
    world: DemoWorld, model_id: str
) -> None:
    """``Authorization: Bearer  <key>`` (two spaces), or a bearer key padded with ``\xa0`` /
    ``\x85``: HTTP's bearer parser strips whitespace around the credentials, so what reaches the
    guard is exactly the key — the same principal and the same rate-limit bucket, never a fresh
    one (docs/serve.md). Only the raw ``X-API-Key`` value is taken as sent, and refused when
    padded (the test above)."""
    import httpx

    key = world.keys["ben"].encode("latin-1")
    app = create_app(settings_for(world, rate_limit=0.01, burst=4))
    padded = [b"Bearer  " + key, b"Bearer " + key + b"\xa0", b"Bearer \x85" + key]
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        plain = c.get("/v1/me", headers=[(b"x-api-key", key)])
        assert plain.status_code == 200
        for value in padded:
            r = c.get("/v1/me", headers=[(b"authorization", value)])
            assert r.status_code == 200 and r.json() == plain.json(), r.text
        # the burst of 4 is spent: a fifth request is refused whichever way the key is sent,
        # on the recommendation fast path too — every form counted against one bucket
        body = b'{"model": "%s", "history": [], "k": 3}' % model_id.encode()
        r = c.post(
            "/v1/recommend",
            headers=[(b"authorization", padded[0]), (b"content-type", b"application/json")],
            content=body,
        )
        assert r.status_code == 429, r.text
        assert c.get("/v1/me", headers=[(b"x-api-key", key)]).status_code == 429
        assert len(app.state.ctx.limiter) == 1


def _wrong(key_id: str) -> str:
    return f"prk_{key_id}_{secrets.token_urlsafe(32)}"


def test_wrong_secrets_sprayed_at_a_key_id_do_not_lock_its_holder_out(
    world: DemoWorld, fresh_analyst: Analyst
) -> None:
    """A key id is not secret: spraying wrong secrets at it (well past what the old per-id limit
    allowed, and on while the holder signs in) must not lock the real key out — not even for a
    holder this process has never verified (after a restart, in another worker)."""
    key_id = fresh_analyst.key.split("_")[1]
    # key_ttl=0: every request verifies again, so the holder is checked during the attack too
    app = create_app(settings_for(world, rate_limit=0, key_ttl=0.0))
    with (
        TestClient(app, client=("10.0.0.2", 40000)) as c,
        TestClient(app, client=("10.0.0.66", 40000)) as bad,
    ):
        keys = c.app.state.ctx.keys  # type: ignore[attr-defined]
        codes = [
            bad.get("/v1/me", headers={"X-API-Key": _wrong(key_id)}).status_code for _ in range(30)
        ]
        # the attacker's own address runs out first (per-source budget), then it gets 429s
        assert codes[:10] == [401] * 10 and set(codes) == {401, 429}
        stop = threading.Event()

        def spray() -> None:  # the attacker keeps going, at 2 requests a second
            while not stop.wait(0.5):
                codes.append(bad.get("/v1/me", headers={"X-API-Key": _wrong(key_id)}).status_code)

        attacker = threading.Thread(target=spray, daemon=True)
        attacker.start()
        try:
            for _ in range(4):
                keys._good.clear()  # as in a fresh process: the holder is not known yet
                r = c.get("/v1/me", headers=fresh_analyst.headers)
                assert r.status_code == 200, r.text
                time.sleep(0.6)
            r = c.post(
                "/v1/datasets/ratings/queries/top-k",
                headers=fresh_analyst.headers,
                json={"epsilon": 0.05, "k": 3, "purpose": "analytics"},
            )
            assert r.status_code == 200, r.text
        finally:
            stop.set()
            attacker.join(10)
        assert len(codes) > 32 and set(codes) <= {401, 429}


class _Scrypt:
    """Counts scrypt hashes (and their parameters, and how many ran at once)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()
        self._real = hashlib.scrypt
        self.delay = delay
        monkeypatch.setattr(hashlib, "scrypt", self)

    def __call__(self, password: bytes, *, salt: bytes, n: int, r: int, p: int, **kw: Any) -> bytes:
        with self._lock:
            self.calls.append((n, r, p))
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.delay)
            return self._real(password, salt=salt, n=n, r=r, p=p, **kw)
        finally:
            with self._lock:
                self.running -= 1


def test_unknown_revoked_and_real_key_ids_cost_the_same_hash(
    world: DemoWorld, fresh_analyst: Analyst, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a key id exists must not show in the time of the 401: an unknown or revoked id
    costs one scrypt hash of the ledger's parameters, as a wrong secret for a real id does."""
    owner = Ledger.connect(world.url, world.keys["olga"])
    revoked = owner.create_key(f"r{secrets.token_hex(4)}", "analyst")
    owner.revoke_key(revoked.split("_")[1])
    scrypt = _Scrypt(monkeypatch)
    keys = KeyCache(world.url, ttl=0.0)
    stored = (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    for presented in (
        _wrong(secrets.token_hex(6)),  # an id that does not exist
        _wrong(fresh_analyst.key.split("_")[1]),  # a real id, a wrong secret
        revoked,  # a revoked key, its right secret
        _wrong(revoked.split("_")[1]),
    ):
        scrypt.calls.clear()
        with pytest.raises(AuthenticationError) as info:
            keys.principal(presented)
        assert str(info.value) == "unknown or revoked API key"
        assert scrypt.calls == [stored], presented
    scrypt.calls.clear()
    assert keys.principal(fresh_analyst.key).name == fresh_analyst.name
    assert len(scrypt.calls) <= 1


def test_failed_verifications_are_bounded_for_the_whole_process(
    world: DemoWorld, fresh_analyst: Analyst, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong secrets (any id, known or not) draw on one budget and at most HASH_CONCURRENCY
    hashes run at once; past the budget every id gets the same 429 without a hash, and a
    holder this process already verified still gets in."""
    keys = KeyCache(world.url, ttl=0.0)
    assert keys.principal(fresh_analyst.key).name == fresh_analyst.name  # known from now on
    keys.failures = RateLimiter(rate=1e-6, burst=6)  # no refill during the test
    scrypt = _Scrypt(monkeypatch, delay=0.05)
    ids = [fresh_analyst.key.split("_")[1], secrets.token_hex(6)]
    outcomes: list[str] = []

    def attack(i: int) -> None:
        for j in range(6):
            try:
                keys.principal(_wrong(ids[(i + j) % 2]))
            except AuthThrottledError:
                outcomes.append("throttled")
            except AuthenticationError:
                outcomes.append("refused")

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["refused"] * 6 + ["throttled"] * 24
    assert len(scrypt.calls) == 6  # the budget, not one hash per request
    assert scrypt.most <= HASH_CONCURRENCY
    for key_id in ids:  # once spent, the same answer whatever the id
        with pytest.raises(AuthThrottledError):
            keys.principal(_wrong(key_id))
    scrypt.calls.clear()
    assert keys.principal(fresh_analyst.key).name == fresh_analyst.name
    assert scrypt.calls == []


def test_refused_model_files_are_listed_without_server_paths(
    world: DemoWorld, tmp_path: Path
) -> None:
    import shutil

    d = tmp_path / "deep" / "models"
    shutil.copytree(world.models_dir, d)
    (d / "broken.npz").write_bytes(b"not a model")
    (d / "bad name!.npz").write_bytes(b"")
    with TestClient(create_app(settings_for(world, models_dir=d))) as c:
        for who in ("ann", "olga"):
            listing = c.get("/v1/models", headers=auth(world, who)).json()
            reasons = {r["file"]: r["reason"] for r in listing["rejected"]}
            assert set(reasons) == {"broken.npz", "bad name!.npz"}
            text = str(listing["rejected"])
            assert str(tmp_path) not in text and "/deep/" not in text, text
            assert reasons["broken.npz"].startswith(("ModelFileError", "DataError"))


def test_one_source_spraying_random_keys_does_not_lock_out_other_sign_ins(
    world: DemoWorld, fresh_analyst: Analyst
) -> None:
    """A reviewer drained the process-wide failure budget from one client (random key ids at
    ~12/s) and every not-yet-verified key got 429; the caller's address now has its own
    allowance in front of the shared one, so the flood stops at its source."""
    app = create_app(settings_for(world, rate_limit=0, key_ttl=0.0))
    with (
        TestClient(app, client=("10.0.0.7", 40000)) as good,
        TestClient(app, client=("10.0.0.99", 40000)) as bad,
    ):
        keys = good.app.state.ctx.keys  # type: ignore[attr-defined]
        flood = [
            bad.get("/v1/me", headers={"X-API-Key": _wrong(secrets.token_hex(6))}).status_code
            for _ in range(guard.FAILURE_BURST + 10)
        ]
        assert flood.count(401) == guard.SOURCE_FAILURE_BURST and set(flood) == {401, 429}
        keys._good.clear()  # the holder is not known to this process yet
        r = good.get("/v1/me", headers=fresh_analyst.headers)
        assert r.status_code == 200, r.text
