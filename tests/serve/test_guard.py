"""What stands before the routes, under abuse: junk keys, key variants, wrong secrets, old paths.

* Malformed keys are refused before rate limiting, so they cannot fill the limiter's table, and
  the table itself stays bounded and O(1) per request.
* One key is one rate-limit bucket: whitespace around it (``\\xa0`` and ``\\x85`` pass HTTP as
  obs-text and ``str.strip`` removes them) is refused, not a fresh bucket.
* Wrong secrets against a real key id cost at most a burst of scrypt hashes, and do not lock
  out a holder already known to the process.
* Refused model files are listed without the server's paths.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from privrec.errors import AuthenticationError
from privrec.serve import guard
from privrec.serve.app import create_app
from privrec.serve.demo import DemoWorld
from privrec.serve.guard import FAILURE_BURST, RateLimiter, key_ident, well_formed

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


def test_wrong_secrets_against_a_real_key_id_cost_at_most_a_burst_of_scrypt(
    world: DemoWorld, fresh_analyst: Analyst, monkeypatch: pytest.MonkeyPatch
) -> None:
    import privrec.governance.ledger as ledger_module

    hashed = []
    real = ledger_module.verify_secret

    def counting(*args: Any) -> bool:
        hashed.append(1)
        return bool(real(*args))

    monkeypatch.setattr(ledger_module, "verify_secret", counting)
    key_id = fresh_analyst.key.split("_")[1]
    # key_ttl=0: every request verifies again, so the holder is checked during the attack too
    with TestClient(create_app(settings_for(world, rate_limit=0, key_ttl=0.0))) as c:
        assert c.get("/v1/me", headers=fresh_analyst.headers).status_code == 200
        hashed.clear()
        codes = []
        for _ in range(3 * FAILURE_BURST):
            wrong = f"prk_{key_id}_{secrets.token_urlsafe(32)}"
            codes.append(c.get("/v1/me", headers={"X-API-Key": wrong}).status_code)
        assert codes[:FAILURE_BURST] == [401] * FAILURE_BURST
        assert set(codes[FAILURE_BURST:]) == {429}
        assert len(hashed) <= FAILURE_BURST + 1  # the throttled ones were never hashed
        r = c.get("/v1/me", headers={"X-API-Key": f"prk_{key_id}_{secrets.token_urlsafe(32)}"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"
        # the holder, known to this process, is not locked out by the attack on their id
        assert c.get("/v1/me", headers=fresh_analyst.headers).status_code == 200
        r = c.post(
            "/v1/datasets/ratings/queries/top-k",
            headers=fresh_analyst.headers,
            json={"epsilon": 0.05, "k": 3, "purpose": "analytics"},
        )
        assert r.status_code == 200, r.text


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
