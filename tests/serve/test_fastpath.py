"""The lean recommendation path answers exactly as the model and the full FastAPI route do.

* :class:`~privrec.serve.foldin.DPALSKernel` (precomputed fold-in) returns the same items and
  the same float32 scores as ``DPALS.recommend_history``, and is replaced by the model's own path
  when it does not;
* :class:`~privrec.serve.fastpath.RecommendFastPath` answers well-formed requests with the same
  bytes as the route (forced by disabling the fast path), errors included, and hands everything
  else to the route — before it takes a rate-limit token;
* :func:`~privrec.serve.fastpath.parse_recommend` accepts only what the schema accepts as it is.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from privrec.models import load_model
from privrec.serve import fastpath, foldin
from privrec.serve.app import create_app
from privrec.serve.demo import DemoWorld
from privrec.serve.schemas import RecommendRequest

from .conftest import ITEM_TOKENS, auth, settings_for


def _histories(n_items: int, head: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [np.zeros(0, dtype=np.int64), np.arange(n_items), head.copy()]
    for size in (1, 2, 5, 12, 30, 60):
        for _ in range(8):
            out.append(np.unique(rng.choice(n_items, size=min(size, n_items), replace=False)))
    return out


@pytest.mark.parametrize(
    ("blend", "shrink"), [(None, None), (0.0, None), (0.5, 0.0), (0.5, 2.5), (0.3, 40.0)]
)
def test_dpals_kernel_is_the_models_own_answer(
    world: DemoWorld, model_id: str, blend: float | None, shrink: float | None
) -> None:
    model = load_model(world.models_dir / f"{model_id}.npz")
    if blend is not None:  # 0: the raw-factor branch (cold users get the noisy-count ranking)
        model = copy.deepcopy(model)
        model.popularity_blend_ = blend
    if shrink is not None:  # the per-user blend β + s / n_u (s = 0: the same β for everyone)
        model.popularity_shrinkage_ = shrink
    kernel = foldin.kernel_for(model)
    assert isinstance(kernel, foldin.DPALSKernel)
    generic = foldin.GenericKernel(model)
    n = model.n_items_
    for known in _histories(n, np.asarray(model.head_items_)):
        for k in (1, 3, 10, n, n + 7):
            gi, gs = generic(known, k)
            fi, fs = kernel(known, k)
            assert np.array_equal(gi, fi) and np.array_equal(gs, fs), (known, k)
            assert fi.dtype == np.int64 and fs.dtype == np.float32


def test_a_neighbour_blend_is_served_by_the_models_own_path(
    world: DemoWorld, model_id: str
) -> None:
    model = copy.deepcopy(load_model(world.models_dir / f"{model_id}.npz"))
    model.set_params(neighbour_blend=0.5)
    kernel = foldin.kernel_for(model)
    assert isinstance(kernel, foldin.GenericKernel)  # the fast kernel mirrors the plain ranking
    n = model.n_items_
    for known in _histories(n, np.asarray(model.head_items_)):
        items, _ = kernel(known, 5)
        row = sp.csr_matrix(
            (np.ones(len(known), np.float32), (np.zeros(len(known), int), known)), shape=(1, n)
        )
        want, _ = model.recommend_history(row, k=5)
        assert np.array_equal(items, want[0][: len(items)])


def test_a_kernel_that_differs_is_not_used(
    world: DemoWorld,
    model_id: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = load_model(world.models_dir / f"{model_id}.npz")
    real = foldin.DPALSKernel.__call__

    def off_by_a_little(self: foldin.DPALSKernel, known: np.ndarray, k: int) -> Any:
        items, scores = real(self, known, k)
        return items, np.nextafter(scores, np.float32(np.inf))

    monkeypatch.setattr(foldin.DPALSKernel, "__call__", off_by_a_little)
    with caplog.at_level(logging.WARNING, logger="privrec.serve"):
        kernel = foldin.kernel_for(model)
    assert isinstance(kernel, foldin.GenericKernel)
    assert "fast fold-in disabled" in caplog.text


def test_other_models_use_their_own_path(tmp_path: Path) -> None:
    from privrec.data import synthetic
    from privrec.models.popularity import Popularity

    model = Popularity().fit(synthetic(n_users=30, n_items=20, seed=0))
    assert isinstance(foldin.kernel_for(model), foldin.GenericKernel)


# ------------------------------------------------------------------------------ the ASGI path
def _both(
    c: TestClient, monkeypatch: pytest.MonkeyPatch, body: Any, headers: dict[str, str]
) -> tuple[Any, Any]:
    """The same request answered by the fast path, then by the full route."""
    raw = json.dumps(body).encode()
    h = {"Content-Type": "application/json", **headers}
    fast = c.post("/v1/recommend", headers=h, content=raw)
    with monkeypatch.context() as m:
        m.setattr(fastpath, "parse_recommend", lambda _body: None)
        full = c.post("/v1/recommend", headers=h, content=raw)
    return fast, full


def _same(fast: Any, full: Any) -> None:
    assert fast.status_code == full.status_code
    assert fast.content == full.content  # byte for byte
    for name in ("content-type", "www-authenticate", "retry-after"):
        assert (name in fast.headers) == (name in full.headers), name
    assert fast.headers["content-type"] == full.headers["content-type"]


def test_fast_path_answers_byte_for_byte_as_the_route(
    world: DemoWorld, model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(world.models_dir / f"{model_id}.npz")
    n = model.n_items_
    h = auth(world, "ann")
    bodies: list[dict[str, Any]] = [
        {"model": model_id, "history": ITEM_TOKENS[:6], "k": 10},
        {"model": model_id, "history": [*ITEM_TOKENS[10:40], "unknown", 12345]},
        {"model": model_id, "history": [], "k": 3},
        {"model": model_id, "history": ITEM_TOKENS[:3] * 3, "k": n + 10 if n < 990 else 1000},
        {"k": 1, "history": ITEM_TOKENS[50:52], "model": model_id},
        {"model": "no-such-model", "history": ITEM_TOKENS[:2]},  # 404
    ]
    with TestClient(create_app(settings_for(world, rate_limit=0))) as c:
        for body in bodies:
            fast, full = _both(c, monkeypatch, body, h)
            assert fast.status_code in (200, 404)
            _same(fast, full)
        # keys: unknown secret (401) and the X-API-Key header
        key = world.keys["ann"]
        wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        fast, full = _both(c, monkeypatch, bodies[0], {"Authorization": f"Bearer {wrong}"})
        assert fast.status_code == 401
        _same(fast, full)
        fast, full = _both(c, monkeypatch, bodies[0], {"X-API-Key": world.keys["ann"]})
        assert fast.status_code == 200
        _same(fast, full)
        # a lone surrogate parses in Python's json but not in the schema's: refused by both
        lone = {"model": model_id, "history": ["\ud800"]}
        fast, full = _both(c, monkeypatch, lone, h)
        assert fast.status_code == 422
        _same(fast, full)
        # a body the framework cannot parse at all: the documented 422, not a bare 400
        for raw in (b'{"model": "\xff\xfe"}', b"[" * 3000 + b"]" * 3000):
            r = c.post(
                "/v1/recommend", headers={"Content-Type": "application/json", **h}, content=raw
            )
            assert r.status_code == 422 and r.json()["error"]["code"] == "malformed_request"


def test_fast_path_rate_limits_and_refuses_non_private_models(
    world: DemoWorld, model_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from privrec.data import synthetic
    from privrec.models.popularity import Popularity

    d = tmp_path / "models"
    shutil.copytree(world.models_dir, d)
    Popularity().fit(synthetic(n_users=30, n_items=20, seed=0)).save(d / "plain-pop.npz")
    with pytest.warns(Warning, match="no private release"):
        app = create_app(settings_for(world, models_dir=d, rate_limit=0))
    with TestClient(app) as c:
        fast, full = _both(
            c, monkeypatch, {"model": "plain-pop", "history": []}, auth(world, "ann")
        )
        assert fast.status_code == 403 and fast.json()["error"]["code"] == "not_private"
        _same(fast, full)
    body = {"model": model_id, "history": ITEM_TOKENS[:4]}
    with TestClient(create_app(settings_for(world, rate_limit=0.01, burst=2))) as c:
        codes = [
            c.post("/v1/recommend", headers=auth(world, "ben"), json=body).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        r = c.post("/v1/recommend", headers=auth(world, "ben"), json=body)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"
    # someone who knows ben's key id but not the secret cannot drain ben's bucket
    key = world.keys["ben"]
    wrong = {
        "Authorization": "Bearer " + key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    }
    with TestClient(create_app(settings_for(world, rate_limit=0.01, burst=2))) as c:
        assert [
            c.post("/v1/recommend", headers=wrong, json=body).status_code for _ in range(3)
        ] == [
            401,
            401,
            429,
        ]
        assert c.post("/v1/recommend", headers=auth(world, "ben"), json=body).status_code == 200


def test_fast_path_is_taken_and_hands_over_the_rest(
    client: TestClient, world: DemoWorld, model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from privrec.serve import routes

    def route_called(*_: Any) -> Any:
        raise AssertionError("the full route answered")

    monkeypatch.setattr(routes, "recommendation", route_called)
    h = auth(world, "ann")
    ok = client.post("/v1/recommend", headers=h, json={"model": model_id, "history": []})
    assert ok.status_code == 200  # answered without the route
    # a JSON media type other than application/json: not the fast path's business, the route
    # answers (here: fails); the schema is strict, so "k": "5" is the route's 422
    r = client.post(
        "/v1/recommend",
        headers={**h, "Content-Type": "application/merge-patch+json"},
        content=json.dumps({"model": model_id, "history": []}).encode(),
    )
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    r = client.post("/v1/recommend", headers=h, json={"model": model_id, "history": [], "k": "5"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "malformed_request"
    # malformed: the route's own 422, and no rate-limit token was taken by the fast path first
    r = client.post("/v1/recommend", headers=h, json={"model": model_id, "history": [1.5]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "malformed_request"
    # no key at all: the route's 401
    r = client.post("/v1/recommend", json={"model": model_id, "history": []})
    assert r.status_code == 401


def test_a_malformed_request_spends_one_token_like_on_the_route(
    world: DemoWorld, model_id: str
) -> None:
    """Falling back happens before the fast path takes a token: one request, one token."""
    with TestClient(create_app(settings_for(world, rate_limit=0.001, burst=2))) as c:
        h = auth(world, "ben")
        bad = {"model": model_id, "history": [1.5]}
        good = {"model": model_id, "history": []}
        assert c.post("/v1/recommend", headers=h, json=bad).status_code == 422
        assert c.post("/v1/recommend", headers=h, json=good).status_code == 200
        assert c.post("/v1/recommend", headers=h, json=good).status_code == 429


ACCEPTED = [
    b'{"model": "m", "history": []}',
    b'{"model": "m-1.x_y", "history": ["a", 1, -7, 123456789012345678901234567890], "k": 1000}',
    b'{"history": ["' + b"x" * 256 + b'"], "model": "M"}',
    b'{"model": "m", "history": [], "k": 1}',
]
REFUSED = [
    b"",
    b"[]",
    b"null",
    b'{"model": "m"}',
    b'{"history": []}',
    b'{"model": "m", "history": [], "extra": 1}',
    b'{"model": "m\\n", "history": []}',
    b'{"model": "../x", "history": []}',
    b'{"model": "' + b"m" * 129 + b'", "history": []}',
    b'{"model": 5, "history": []}',
    b'{"model": "m", "history": "abc"}',
    b'{"model": "m", "history": [true]}',
    b'{"model": "m", "history": [1.0]}',
    b'{"model": "m", "history": [""]}',
    b'{"model": "m", "history": ["' + b"x" * 257 + b'"]}',
    b'{"model": "m", "history": [null]}',
    b'{"model": "m", "history": [["a"]]}',
    b'{"model": "m", "history": [], "k": 0}',
    b'{"model": "m", "history": [], "k": 1001}',
    b'{"model": "m", "history": [], "k": true}',
    b'{"model": "m", "history": [], "k": "5"}',
    b'{"model": "m", "history": [], "k": 5.0}',
    b'{"model": "m", "history": [' + b",".join([b"1"] * 10_001) + b"]}",
    b"{oops",
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_parse_accepts_what_the_schema_accepts_as_it_is(body: bytes) -> None:
    parsed = fastpath.parse_recommend(body)
    assert parsed is not None
    req = RecommendRequest.model_validate_json(body)
    assert parsed == (req.model, req.history, req.k)
    assert [type(v) for v in parsed[1]] == [type(v) for v in req.history]


@pytest.mark.parametrize("body", REFUSED)
def test_parse_hands_everything_else_to_the_route(body: bytes) -> None:
    assert fastpath.parse_recommend(body) is None
