"""The /v1 API through FastAPI's TestClient: every answer, and every error path, as JSON."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from privrec.governance import Ledger
from privrec.serve.app import create_app
from privrec.serve.demo import DemoWorld

from .conftest import ITEM_TOKENS, Analyst, auth, settings_for


def _err(r, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["status"] == status and body["code"] == code and body["message"]
    return body


def test_health_me_and_openapi(client: TestClient, world: DemoWorld) -> None:
    assert client.get("/v1/health").json()["status"] == "ok"
    assert client.get("/v1/me", headers=auth(world, "ann")).json() == {
        "name": "ann",
        "role": "analyst",
    }
    assert (
        client.get("/v1/me", headers={"X-API-Key": world.keys["dora"]}).json()["role"] == "auditor"
    )
    spec = client.get("/v1/openapi.json").json()
    assert all(p.startswith("/v1/") for p in spec["paths"])
    assert client.get("/docs").status_code == 404  # no CDN-backed docs page


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "no API key"),
        ({"Authorization": "Bearer not-a-key"}, "malformed"),
        ({"Authorization": "Bearer prk_0123456789ab_" + "x" * 43}, "unknown or revoked"),
        ({"X-API-Key": "prk_zzzzzzzzzzzz_secret"}, "unknown or revoked"),
    ],
)
def test_bad_keys_get_401(client: TestClient, headers: dict[str, str], why: str) -> None:
    body = _err(client.get("/v1/budgets", headers=headers), 401, "unauthenticated")
    assert why in body["message"]


def test_wrong_secret_and_revoked_key(
    client: TestClient, world: DemoWorld, fresh_analyst: Analyst
) -> None:
    key_id = fresh_analyst.key.split("_")[1]
    forged = f"prk_{key_id}_{secrets.token_urlsafe(32)}"
    _err(
        client.get("/v1/me", headers={"Authorization": f"Bearer {forged}"}), 401, "unauthenticated"
    )
    assert client.get("/v1/me", headers=fresh_analyst.headers).status_code == 200
    Ledger.connect(world.url, world.keys["olga"]).revoke_key(key_id)
    # spending re-checks the key in the ledger at once (reads may reuse it for key_ttl seconds)
    r = client.post(
        "/v1/datasets/ratings/queries/top-k",
        headers=fresh_analyst.headers,
        json={"epsilon": 0.1, "k": 3},
    )
    _err(r, 401, "unauthenticated")


def test_wrong_roles_get_403(client: TestClient, world: DemoWorld) -> None:
    body = {"epsilon": 0.1, "k": 3}
    for who in ("dora", "olga"):  # auditors and owners do not spend
        r = client.post("/v1/datasets/ratings/queries/top-k", headers=auth(world, who), json=body)
        assert "analyst role" in _err(r, 403, "forbidden")["message"]
    for path in ("/v1/audit", "/v1/governance", "/v1/artifacts"):  # analysts do not read all
        _err(client.get(path, headers=auth(world, "ann")), 403, "forbidden")
        assert client.get(path, headers=auth(world, "dora")).status_code == 200


def test_query_answer_charge_and_exhausted_budget(
    client: TestClient, world: DemoWorld, fresh_analyst: Analyst
) -> None:
    h = fresh_analyst.headers
    owner = Ledger.connect(world.url, world.keys["olga"])
    before = {b.scope_value: b for b in owner.status("ratings") if b.scope == "analyst"}[
        fresh_analyst.name
    ]
    assert before.composed_epsilon == 0
    r = client.post(
        "/v1/datasets/ratings/queries/item-counts",
        headers=h,
        json={"epsilon": 0.6, "items": ITEM_TOKENS[:4]},
    )
    assert r.status_code == 200, r.text
    ans = r.json()
    assert [c["item"] for c in ans["counts"]] == ITEM_TOKENS[:4]
    assert ans["privacy"]["sensitivity_l2"] == pytest.approx(2.0)  # √min(B=32, m=4)
    mine = next(b for b in ans["budgets"] if b["scope"] == "analyst")
    assert mine["composed_epsilon"] == pytest.approx(0.6, rel=1e-4)
    # the ledger holds exactly one committed charge for it, with the released answer as its result
    (charge,) = Ledger.connect(world.url, fresh_analyst.key).history("ratings")
    assert charge.status == "committed" and charge.id == ans["charge"]["id"]
    assert charge.result["counts"] == ans["counts"]
    # 0.6 composed with 0.8 exceeds the analyst's cap of 1 (composition, not the sum, decides:
    # 0.6 with 0.6 would still fit): refused with 403 naming the remaining budget
    r = client.post("/v1/datasets/ratings/queries/top-k", headers=h, json={"epsilon": 0.8, "k": 5})
    body = _err(r, 403, "budget_exceeded")
    assert body["remaining_epsilon"] == pytest.approx(0.4, abs=1e-3)
    assert body["cap_epsilon"] == 1.0 and body["requested_epsilon"] == pytest.approx(0.8, rel=1e-4)
    assert (
        len(Ledger.connect(world.url, fresh_analyst.key).history("ratings")) == 1
    )  # nothing written


def test_idempotent_retry_returns_the_same_noisy_answer_without_a_second_charge(
    client: TestClient, world: DemoWorld, fresh_analyst: Analyst
) -> None:
    h = {**fresh_analyst.headers, "Idempotency-Key": "req-42"}
    body = {"epsilon": 0.3, "k": 5}
    a = client.post("/v1/datasets/ratings/queries/top-k", headers=h, json=body).json()
    b = client.post("/v1/datasets/ratings/queries/top-k", headers=h, json=body).json()
    assert b["charge"] == {"id": a["charge"]["id"], "replayed": True}
    assert b["items"] == a["items"]
    assert len(Ledger.connect(world.url, fresh_analyst.key).history("ratings")) == 1
    other = client.post(
        "/v1/datasets/ratings/queries/top-k", headers=h, json={"epsilon": 0.3, "k": 6}
    )
    assert "different request" in _err(other, 409, "conflict")["message"]


def test_segment_and_cooccurrence_queries(
    client: TestClient, world: DemoWorld, fresh_analyst: Analyst
) -> None:
    h = fresh_analyst.headers
    seg = client.post(
        "/v1/datasets/ratings/queries/segment-counts",
        headers=h,
        json={"epsilon": 0.2, "column": "region"},
    ).json()
    assert [s["value"] for s in seg["segments"]] == ["north", "south", "east", "west"]
    co = client.post(
        "/v1/datasets/ratings/queries/cooccurrence",
        headers=h,
        json={"epsilon": 0.2, "items": ITEM_TOKENS[:3]},
    ).json()
    assert [p["items"] for p in co["pairs"]] == [
        [ITEM_TOKENS[0], ITEM_TOKENS[1]],
        [ITEM_TOKENS[0], ITEM_TOKENS[2]],
        [ITEM_TOKENS[1], ITEM_TOKENS[2]],
    ]
    r = client.post(
        "/v1/datasets/ratings/queries/segment-counts",
        headers=h,
        json={"epsilon": 0.2, "column": "income"},
    )
    assert "not a declared segment column" in _err(r, 422, "invalid_request")["message"]


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/datasets/ratings/queries/top-k", {"epsilon": -1, "k": 5}, "malformed_request"),
        ("/v1/datasets/ratings/queries/top-k", {"epsilon": 0.1}, "malformed_request"),
        (
            "/v1/datasets/ratings/queries/top-k",
            {"epsilon": 0.1, "k": 5, "extra": 1},
            "malformed_request",
        ),
        (
            "/v1/datasets/ratings/queries/item-counts",
            {"epsilon": 0.1, "items": []},
            "malformed_request",
        ),
        (
            "/v1/datasets/ratings/queries/cooccurrence",
            {"epsilon": 0.1, "items": ["a"] * 21},
            "malformed_request",
        ),
        (
            "/v1/datasets/ratings/queries/item-counts",
            {"epsilon": 0.1, "items": ["nope"]},
            "unknown_item",
        ),
        ("/v1/recommend", {"model": "x", "history": "not a list"}, "malformed_request"),
        ("/v1/recommend", {"model": "../etc/passwd", "history": []}, "malformed_request"),
        ("/v1/recommend", {"model": "x", "history": [], "k": 0}, "malformed_request"),
        # no coercion: JSON true is not the item id 1 nor k = 1 nor ε = 1; "0.1" is not a number
        ("/v1/recommend", {"model": "x", "history": [True]}, "malformed_request"),
        ("/v1/recommend", {"model": "x", "history": [50.0]}, "malformed_request"),
        ("/v1/recommend", {"model": "x", "history": [], "k": True}, "malformed_request"),
        ("/v1/datasets/ratings/queries/top-k", {"epsilon": True, "k": 3}, "malformed_request"),
        ("/v1/datasets/ratings/queries/top-k", {"epsilon": "0.1", "k": 3}, "malformed_request"),
        ("/v1/datasets/ratings/queries/top-k", {"epsilon": 0.1, "k": True}, "malformed_request"),
    ],
)
def test_malformed_bodies_get_422(
    client: TestClient, world: DemoWorld, fresh_analyst: Analyst, path: str, body: dict, code: str
) -> None:  # type: ignore[type-arg]
    _err(client.post(path, headers=fresh_analyst.headers, json=body), 422, code)
    assert not Ledger.connect(world.url, fresh_analyst.key).history("ratings")  # nothing charged


def test_not_json_and_unknown_things(client: TestClient, world: DemoWorld) -> None:
    h = auth(world, "ann")
    r = client.post(
        "/v1/recommend", headers={**h, "Content-Type": "application/json"}, content=b"{oops"
    )
    _err(r, 422, "malformed_request")
    _err(
        client.post("/v1/recommend", headers=h, json={"model": "no-such-model", "history": []}),
        404,
        "unknown_model",
    )
    _err(client.get("/v1/models/no-such-model", headers=h), 404, "unknown_model")
    _err(
        client.post("/v1/datasets/nope/queries/top-k", headers=h, json={"epsilon": 0.1, "k": 1}),
        404,
        "unknown_dataset",
    )
    _err(client.get("/v1/nothing-here", headers=h), 404, "not_found")
    _err(client.delete("/v1/models", headers=h), 405, "method_not_allowed")


def test_error_answers_do_not_echo_the_callers_input(
    client: TestClient, world: DemoWorld, fresh_analyst: Analyst
) -> None:
    h = fresh_analyst.headers
    marker = "SECRET-7f3a"
    answers = [
        client.post(
            "/v1/datasets/ratings/queries/item-counts",
            headers=h,
            json={"epsilon": 0.1, "items": [ITEM_TOKENS[0], marker]},
        ),
        client.post(
            "/v1/datasets/ratings/queries/segment-counts",
            headers=h,
            json={"epsilon": 0.1, "column": marker},
        ),
        client.post("/v1/recommend", headers=h, json={"model": marker, "history": []}),
        client.post("/v1/recommend", headers=h, json={"model": "m", "history": [], marker: 1}),
        client.get(f"/v1/models/{marker}", headers=h),
        client.post(
            f"/v1/datasets/{marker}/queries/top-k", headers=h, json={"epsilon": 0.1, "k": 1}
        ),
    ]
    assert [r.status_code for r in answers] == [422, 422, 404, 422, 404, 404]
    for r in answers:
        assert marker not in r.text, r.text
    # not even the unknown item's place in the list: which of the items is unknown is not said
    message = answers[0].json()["error"]["message"]
    assert "an item of the query" in message and "number" not in message and "2" not in message


def test_oversized_requests_get_413(client: TestClient, world: DemoWorld) -> None:
    h = auth(world, "ann")
    big = {"model": "m", "history": ["x" * 200] * 400}  # ~ 85 kB > 64 kB
    _err(client.post("/v1/recommend", headers=h, json=big), 413, "request_too_large")

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b" " * 1024  # streamed without Content-Length

    _err(
        client.post(
            "/v1/recommend", headers={**h, "Content-Type": "application/json"}, content=chunks()
        ),
        413,
        "request_too_large",
    )


def test_rate_limit_per_key(world: DemoWorld) -> None:
    with TestClient(create_app(settings_for(world, rate_limit=1.0, burst=3))) as c:
        codes = [c.get("/v1/me", headers=auth(world, "ben")).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        r = c.get("/v1/me", headers=auth(world, "ben"))
        assert int(r.headers["Retry-After"]) >= 1
        assert c.get("/v1/me", headers=auth(world, "dora")).status_code == 200  # per key


def test_recommend_from_history(client: TestClient, world: DemoWorld, model_id: str) -> None:
    history = [*ITEM_TOKENS[:6], "not-in-catalogue"]
    r = client.post(
        "/v1/recommend",
        headers=auth(world, "ann"),
        json={"model": model_id, "history": history, "k": 10},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    items = [i["item"] for i in out["items"]]
    assert out["unknown_history_items"] == 1 and 0 < len(items) <= 10
    assert not set(items) & set(history)  # seen items are never recommended
    assert all(np.isfinite(i["score"]) for i in out["items"])
    from privrec.models import load_model

    m = load_model(world.models_dir / f"{model_id}.npz")
    head = {m.item_ids_[j] for j in m.head_items_}
    assert set(items) <= head  # only items the private model released
    assert out["guarantee"]["unit"] == "user" and out["guarantee"]["epsilon"] <= 1.0


def test_models_listing_has_guarantee_lineage_and_evaluation(
    client: TestClient, world: DemoWorld
) -> None:
    models = client.get("/v1/models", headers=auth(world, "dora")).json()["models"]
    assert {m["id"] for m in models} == {"dpals-eps1", "dpals-eps4"}
    for m in models:
        g = m["guarantee"]
        assert m["private"] and m["served"] and g["unit"] == "user" and g["delta"] == 1e-6
        assert (
            "differentially private" in m["plain_language"]
            and m["plain_language"] == g["explanation"]
        )
        assert m["lineage"]["recorded"] and m["lineage"]["trained_by"] == "trainer"
        assert m["lineage"]["charge_ids"] and m["lineage"]["dataset"] == "ratings"
        ev = m["evaluation"]
        assert [g["group"] for g in ev["per_group"]] == ["Q1", "Q2", "Q3", "Q4"]
        assert "n_users" not in json.dumps(ev) and "max_history" not in json.dumps(ev)
    # an analyst sees the models but not the lineage of someone else's artifact
    other = client.get("/v1/models", headers=auth(world, "ann")).json()["models"]
    assert all("another analyst" in m["lineage"]["note"] for m in other)
    ev = client.get("/v1/evaluations", headers=auth(world, "ann")).json()
    assert sorted(p["epsilon"] for p in ev["points"]) == pytest.approx([1.0, 4.0], rel=1e-4)
    # every metric to two decimals: a full-precision mean over n users gives n away
    values = [v for p in ev["points"] for m in p["metrics"].values() for v in m.values()]
    values += [
        v for p in ev["points"] for g in p["per_group"] for k, v in g.items() if k != "group"
    ]
    assert values and all(v is None or round(v, 2) == v for v in values)


def test_non_private_models_are_listed_but_not_served(world: DemoWorld, tmp_path: Path) -> None:
    import shutil

    from privrec.data import synthetic
    from privrec.models.dp_popularity import DPPopularity
    from privrec.models.popularity import Popularity

    d = tmp_path / "models"
    shutil.copytree(world.models_dir, d)
    data = synthetic(n_users=30, n_items=20, seed=0)
    Popularity().fit(data).save(d / "plain-pop.npz")
    # a real (unseeded) ε, but the file also stores the training users: no private release
    with pytest.warns(Warning, match="does not cover"):
        DPPopularity(epsilon=1.0, delta=1e-5, unit="user").fit(data).save(
            d / "with-users.npz", include_user_data=True
        )
    (d / "broken.npz").write_bytes(b"not a model")
    with pytest.warns(Warning, match="no private release"):
        app = create_app(settings_for(world, models_dir=d))
    with TestClient(app) as c:
        listing = c.get("/v1/models", headers=auth(world, "ann")).json()
        plain = next(m for m in listing["models"] if m["id"] == "plain-pop")
        assert (
            not plain["private"]
            and not plain["served"]
            and "no differential-privacy" in plain["plain_language"]
        )
        users = next(m for m in listing["models"] if m["id"] == "with-users")
        assert not users["private"] and not users["served"]
        assert "training users" in users["plain_language"]
        assert listing["rejected"][0]["file"] == "broken.npz"
        for mid in ("plain-pop", "with-users"):
            r = c.post(
                "/v1/recommend", headers=auth(world, "ann"), json={"model": mid, "history": []}
            )
            _err(r, 403, "not_private")


def test_budgets_are_role_aware(client: TestClient, world: DemoWorld) -> None:
    mine = client.get("/v1/budgets", headers=auth(world, "ann")).json()["budgets"]
    assert {(b["scope"], b["scope_value"]) for b in mine} == {
        ("dataset", ""),
        ("analyst", "ann"),
        ("purpose", "analytics"),
    }
    everyone = client.get("/v1/budgets?series=true", headers=auth(world, "dora")).json()["budgets"]
    assert ("analyst", "ben") in {(b["scope"], b["scope_value"]) for b in everyone}
    ledger = Ledger.connect(world.url, world.keys["dora"])
    for b, s in zip(everyone, ledger.status(), strict=True):
        assert b["composed_epsilon"] == s.composed_epsilon and b["naive_epsilon"] == s.naive_epsilon
        if b["series"]:
            assert b["series"][-1]["composed"] == pytest.approx(s.composed_epsilon)
    charges = client.get("/v1/charges", headers=auth(world, "ann")).json()["charges"]
    assert charges and {c["actor"] for c in charges} == {"ann"}


def test_audit_and_governance_views(client: TestClient, world: DemoWorld) -> None:
    audit = client.get("/v1/audit?limit=5", headers=auth(world, "dora")).json()
    assert audit["verification"]["ok"] and len(audit["rows"]) == 5
    gov = client.get("/v1/governance", headers=auth(world, "olga")).json()
    (ds,) = gov["datasets"]
    assert ds["deletion_requests"] == 1 and ds["retrain_within_days"] == 30
    assert {r["artifact_id"] for r in ds["retrains_due"]} == {
        1,
        2,
    }  # both trained before the deletion
    assert ds["latest_version"]["steps"][0]["step"] == "deletion"
    assert all(m["window"] for m in gov["monitors"])  # drift monitors' windows, if any


def test_dashboard_files_are_served_offline(client: TestClient) -> None:
    page = client.get("/dashboard/")
    assert page.status_code == 200 and "/dashboard/static/plotly-basic.min.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    js = client.get("/dashboard/static/plotly-basic.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000
    assert b"plotly.js (basic - minified) v" in js.content[:200]
    lic = client.get("/dashboard/static/plotly-basic.LICENSE.txt")
    assert lic.status_code == 200 and lic.text.startswith("MIT License")
    assert client.get("/dashboard/static/../../etc/passwd").status_code == 404
    assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard/"


def test_api_responses_hold_no_user_ids_or_exact_counts(
    client: TestClient,
    world: DemoWorld,
    fresh_analyst: Analyst,
    model_id: str,
    no_user_data,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """What an analyst can read back holds no training user's id and no exact user or interaction
    count (the owner/auditor-only governance view holds the ledger's internal counts by design)."""
    data = Ledger.connect(world.url, world.keys["dora"]).latest_version("ratings")
    assert data is not None
    users = [
        line.split("\t")[0]
        for line in (world.root / "data" / "ratings.tsv").read_text().splitlines()[1:]
    ]
    h = fresh_analyst.headers
    answers = {
        "models": client.get("/v1/models", headers=h).json(),
        "evaluations": client.get("/v1/evaluations", headers=h).json(),
        "datasets": client.get("/v1/datasets", headers=h).json(),
        "segments": client.post(
            "/v1/datasets/ratings/queries/segment-counts",
            headers=h,
            json={"epsilon": 0.2, "column": "region"},
        ).json(),
        "recommend": client.post(
            "/v1/recommend", headers=h, json={"model": model_id, "history": ITEM_TOKENS[:3]}
        ).json(),
    }
    out = tmp_path / "responses.json"
    out.write_text(json.dumps(answers, ensure_ascii=False), encoding="utf-8")
    assert len(set(users)) > 200
    no_user_data(out, user_ids=sorted(set(users)), counts=[data["n_users"], data["nnz"]])


def test_drift_monitor_windows_appear_in_the_governance_view(
    client: TestClient, world: DemoWorld, fresh_analyst: Analyst
) -> None:
    from privrec.monitor.core import LedgerWindowCharge
    from privrec.privacy.events import SpentEvent
    from privrec.privacy.mechanisms import gaussian_event

    charge = LedgerWindowCharge(Ledger.connect(world.url, fresh_analyst.key), "ratings")
    charge([SpentEvent("window counts", gaussian_event(20.0))], "window 7 of a popularity monitor")
    gov = client.get("/v1/governance", headers=auth(world, "dora")).json()
    (w,) = [m for m in gov["monitors"] if m["by"] == fresh_analyst.name]
    assert w["window"] == "window 7 of a popularity monitor" and w["status"] == "committed"
    assert gov["monitors_note"] is None
