"""Review J of the dashboard: names reach plotly.js as text, the page cannot be framed.

* plotly.js reads trace names and category labels as pseudo-HTML (``<a href>``, ``<b>``,
  ``<span style>``): a budget's analyst or purpose name, or a group name in a model's evaluation
  file, became a live link (``https://…``) or markup in the charts of every owner and auditor.
  The page now escapes them; they show as the characters they are.
* The page and its files had no security headers: any site could frame the dashboard
  (clickjacking the query form), and nothing limited which scripts run.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from fastapi.testclient import TestClient

from privrec.governance import Ledger
from privrec.serve.app import create_app
from privrec.serve.demo import DemoWorld, build_demo

from .conftest import LiveServer, auth, settings_for, tokenised

HOSTILE_ANALYST = '<img src=x onerror="window.__pwn=1">evil<a href="https://evil.example/a">A</a>'
HOSTILE_PURPOSE = '<b>bold</b><a href="https://evil.example/p">P</a>'
HOSTILE_GROUP = "<b>Q9</b>"


@pytest.fixture(scope="module")
def hostile_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoWorld, str]:
    """A demo world whose analyst, purpose and evaluation group names are markup."""
    w = build_demo(
        tmp_path_factory.mktemp("hostile-world"), data=tokenised(), epsilons=(1.0,), factors=8
    )
    owner = Ledger.connect(w.url, w.keys["olga"])
    key = owner.create_key(HOSTILE_ANALYST, "analyst")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        owner.set_budget("ratings", epsilon=2.0, delta=1e-6, scope="analyst", value=HOSTILE_ANALYST)
        owner.set_budget("ratings", epsilon=2.0, delta=1e-6, scope="purpose", value=HOSTILE_PURPOSE)
    for ev in w.models_dir.glob("*.eval.json"):
        body = json.loads(ev.read_text())
        body["per_group"][0]["group"] = HOSTILE_GROUP
        ev.write_text(json.dumps(body))
    with TestClient(create_app(settings_for(w))) as c:
        r = c.post(
            "/v1/datasets/ratings/queries/top-k",
            json={"epsilon": 0.1, "k": 3, "purpose": HOSTILE_PURPOSE},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "review-j"},
        )
        assert r.status_code == 200, r.text
    return w, key


def test_dashboard_files_send_security_headers(world: DemoWorld) -> None:
    with TestClient(create_app(settings_for(world))) as c:
        for path in [
            "/dashboard/",
            "/dashboard/static/app.js",
            "/dashboard/static/plotly-basic.min.js",
        ]:
            r = c.get(path)
            assert r.status_code == 200
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp
            assert "script-src 'self'" in csp and "unsafe-eval" not in csp
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["x-content-type-options"] == "nosniff"
        # the API stays header-authenticated JSON: no CORS grant to another origin
        r = c.get("/v1/me", headers={**auth(world, "olga"), "Origin": "https://evil.example"})
        assert r.headers["content-type"] == "application/json"
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.slow
def test_names_are_text_in_the_charts(hostile_world: tuple[DemoWorld, str], browser: Any) -> None:
    w, _ = hostile_world
    with LiveServer(create_app(settings_for(w))) as srv:
        page = browser.new_page()
        refused: list[str] = []
        page.on(
            "console", lambda m: refused.append(m.text) if "Content Security" in m.text else None
        )
        page.goto(f"{srv.url}/dashboard/")
        page.fill("#key", w.keys["olga"])
        page.click("#login")
        page.wait_for_selector("body[data-budgets-rendered='1']", timeout=30_000)
        page.click("#tabs button[data-tab='tradeoff']")
        page.wait_for_selector("#tradeoff-recall .legendtext", timeout=30_000)
        seen = page.evaluate(
            """() => ({
              pwn: window.__pwn || 0,
              links: document.querySelectorAll('svg a').length,
              markup: [...document.querySelectorAll('svg text')]
                .filter((t) => t.querySelector('[style*="font-weight"]')).length,
              texts: [...document.querySelectorAll('svg text')].map((t) => t.textContent),
            })"""
        )
        assert seen["pwn"] == 0
        assert seen["links"] == 0, "a name became a link in a chart"
        assert seen["markup"] == 0, "a name became markup in a chart"
        texts = "\n".join(seen["texts"])
        assert HOSTILE_ANALYST in texts  # shown as the characters it is
        assert HOSTILE_PURPOSE in texts
        assert HOSTILE_GROUP in texts
        assert not refused, refused
