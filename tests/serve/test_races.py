"""32 analysts race one budget through the query endpoint of a real server: never an overspend.

uvicorn on 127.0.0.1, 32 client threads (one analyst each) sending DP queries against one
purpose budget until they are refused. The ledger serialises the reservations (SQLite
``BEGIN IMMEDIATE``; PostgreSQL row lock), so the budget is filled exactly: as many answers as
fit by composition, none more — on both databases.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from privrec.governance import Ledger
from privrec.governance.composition import composed_epsilon
from privrec.privacy.units import PrivacyUnit
from privrec.serve.analytics import noise_multiplier
from privrec.serve.app import create_app
from privrec.serve.demo import build_demo

from .conftest import LiveServer, settings_for, tokenised

N_ANALYSTS = 32
CAP, PER_QUERY = 1.0, 0.2


def _fits(cap: float, eps: float, delta: float) -> int:
    """How many ε-queries the cap holds under the ledger's own composition (Gaussian rates add)."""
    rate = noise_multiplier(eps, delta) ** -2
    n = 0
    while composed_epsilon(rate * (n + 1), [], delta, "pld", PrivacyUnit.USER) <= cap * (1 + 1e-12):
        n += 1
    return n


@pytest.mark.slow
def test_racing_analysts_never_overspend(any_ledger_url: str, tmp_path: Path) -> None:
    world = build_demo(
        tmp_path,
        data=tokenised(n_users=200, n_items=60),
        epsilons=(),
        queries=False,
        url=any_ledger_url,
    )
    owner = Ledger.connect(world.url, world.keys["olga"])
    owner.set_budget("ratings", epsilon=CAP, delta=1e-6, scope="purpose", value="race")
    keys = [owner.create_key(f"racer{i}", "analyst") for i in range(N_ANALYSTS)]
    expected = _fits(CAP, PER_QUERY, 1e-6)
    assert 10 < expected < 60

    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(N_ANALYSTS)

    with LiveServer(create_app(settings_for(world, rate_limit=0))) as srv:

        def analyst(key: str) -> None:
            mine = []
            with httpx.Client(
                base_url=srv.url, timeout=120, headers={"Authorization": f"Bearer {key}"}
            ) as c:
                start.wait()
                for _ in range(expected):  # each keeps asking until refused (bounded)
                    r = c.post(
                        "/v1/datasets/ratings/queries/top-k",
                        json={"epsilon": PER_QUERY, "k": 3, "purpose": "race"},
                    )
                    mine.append(r.status_code)
                    if r.status_code != 200:
                        break
            with lock:
                results.extend(mine)

        threads = [threading.Thread(target=analyst, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    assert set(results) <= {200, 403}, sorted(set(results))
    assert results.count(200) == expected  # filled exactly, not one answer more
    (race,) = [
        b for b in owner.status("ratings") if b.scope == "purpose" and b.scope_value == "race"
    ]
    assert race.composed_epsilon <= CAP and race.committed == expected and race.reserved == 0
    assert owner.verify_audit_log().ok
