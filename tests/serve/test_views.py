"""The dashboard's budget views are reused only while the ledger is unchanged, per caller."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from fastapi.testclient import TestClient

from privrec.governance import Ledger
from privrec.governance.reading import LedgerBase
from privrec.serve.app import create_app
from privrec.serve.dashboard import ViewCache, ledger_head
from privrec.serve.demo import DemoWorld

from .conftest import Analyst, auth, settings_for


def _remaining(view: dict[str, Any], scope: str) -> float:
    (b,) = [b for b in view["budgets"] if b["scope"] == scope]
    return float(b["remaining_epsilon"])


def test_budget_views_follow_the_ledger(
    world: DemoWorld, fresh_analyst: Analyst, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = LedgerBase.status

    def counted(self: LedgerBase, dataset: str | None = None) -> Any:
        calls.append(self.principal.name)
        return real(self, dataset)

    monkeypatch.setattr(LedgerBase, "status", counted)
    h = fresh_analyst.headers
    with TestClient(create_app(settings_for(world))) as c:
        first = c.get("/v1/budgets?series=true", headers=h).json()
        again = c.get("/v1/budgets?series=true", headers=h).json()
        assert first == again and calls == [fresh_analyst.name]  # computed once
        assert c.get("/v1/budgets", headers=h).json()["budgets"]  # another view: computed
        assert len(calls) == 2
        dora = c.get("/v1/budgets?series=true", headers=auth(world, "dora")).json()
        assert len(calls) == 3 and len(dora["budgets"]) > len(first["budgets"])  # per caller

        # a charge moves the ledger's head: the next view is the ledger's new one
        r = c.post("/v1/datasets/ratings/queries/top-k", headers=h, json={"epsilon": 0.3, "k": 3})
        assert r.status_code == 200, r.text
        after = c.get("/v1/budgets?series=true", headers=h).json()
        assert _remaining(after, "analyst") < _remaining(first, "analyst")
        me = Ledger.connect(world.url, fresh_analyst.key)
        (mine,) = [b for b in real(me, None) if b.scope == "analyst"]
        assert _remaining(after, "analyst") == pytest.approx(mine.remaining)
        last = next(b for b in after["budgets"] if b["scope"] == "analyst")["series"][-1]
        assert last["composed"] == pytest.approx(mine.composed_epsilon)


def test_views_of_budgets_with_a_period_expire(world: DemoWorld) -> None:
    dora = Ledger.connect(world.url, world.keys["dora"])
    cache = ViewCache(max_age=0.0)
    n = [0]

    def compute() -> list[dict[str, Any]]:
        n[0] += 1
        return [{"period_days": 30}]

    cache.get(dora, ("x",), compute, expires=lambda bs: bs[0]["period_days"] is not None)
    cache.get(dora, ("x",), compute, expires=lambda bs: bs[0]["period_days"] is not None)
    assert n[0] == 2  # the clock moves the window: not reused past max_age
    cache.get(dora, ("y",), compute)
    cache.get(dora, ("y",), compute)
    assert n[0] == 3
    before = ledger_head(dora)
    Ledger.connect(world.url, world.keys["olga"]).create_key(
        f"viewer-{secrets.token_hex(3)}", "auditor"
    )
    assert before and ledger_head(dora) != before  # every write moves the head
