"""End to end in a real browser: ``privrec serve`` on 127.0.0.1 and Debian's headless Chromium.

Playwright drives the system browser (``executable_path``; it never downloads one). An analyst
signs in with their key, the budget chart shows the ledger's numbers, a DP query lowers the
remaining budget, and once the budget is gone the next query is refused; an auditor sees the
verified audit log, the consent and deletion figures, the trade-off charts and the lineage.
Screenshots go to the test's tmp dir (printed), to be looked at.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from privrec.governance import Ledger
from privrec.serve.demo import DemoWorld

from .conftest import ITEM_TOKENS, Analyst

pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(world: DemoWorld, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``privrec serve`` as its own process (the real CLI), logging at debug level to a file."""
    port = _free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PRIVREC_DB": world.url}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "privrec", "serve", "--models", str(world.models_dir),
             "--datasets", str(world.datasets_file), "--port", str(port), "--log-level", "debug"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"privrec serve did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sign_in(page: object, url: str, key: str) -> None:
    page.goto(f"{url}/dashboard/")  # type: ignore[attr-defined]
    page.fill("#key", key)  # type: ignore[attr-defined]
    page.click("#login")  # type: ignore[attr-defined]
    page.wait_for_selector("body[data-budgets-rendered='1']", timeout=30_000)  # type: ignore[attr-defined]


def _row(page: object, label: str) -> dict[str, str]:
    cells = page.locator(f"#budget-table tr[data-budget='{label}'] td").all_inner_texts()  # type: ignore[attr-defined]
    return dict(
        zip(
            ["dataset", "scope", "cap", "delta", "spent", "naive", "remaining", "charges"],
            cells,
            strict=True,
        )
    )


@pytest.mark.slow
def test_dashboard_in_chromium(
    served: tuple[str, Path],
    browser: object,
    world: DemoWorld,
    fresh_analyst: Analyst,
    tmp_path: Path,
) -> None:
    url, log = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    me = Ledger.connect(world.url, fresh_analyst.key)
    label = f"ratings · analyst {fresh_analyst.name}"

    # 1. sign in: the budget chart and table show the ledger's numbers
    _sign_in(page, url, fresh_analyst.key)
    assert page.inner_text("#who") == f"{fresh_analyst.name} (analyst)"
    assert page.is_hidden("nav button[data-tab='audit']")  # analysts do not read the audit log
    status = {b.label: b for b in me.status("ratings")}
    chart = page.evaluate(
        "() => { const d = document.getElementById('budget-chart').data;"
        " return {x: d[0].x, spent: d[0].customdata, remaining: d[1].customdata, naive: d[2].customdata}; }"
    )
    assert len(chart["x"]) == len(status) == 3
    for x, spent, rem, naive in zip(
        chart["x"], chart["spent"], chart["remaining"], chart["naive"], strict=True
    ):
        b = next(
            s
            for s in status.values()
            if (s.dataset if s.scope == "dataset" else f"{s.dataset} · {s.scope} {s.scope_value}")
            == x
        )
        assert (spent, rem, naive) == pytest.approx(
            (b.composed_epsilon, b.remaining, b.naive_epsilon)
        )
    assert _row(page, label)["remaining"] == "1.0000"
    assert page.locator("#budget-chart .bars path").count() >= 3  # plotly drew the bars
    page.screenshot(path=str(shots / "1-analyst-budgets.png"), full_page=True)

    # 2. a DP query: answered, and the remaining budget drops by what the ledger composed
    page.select_option("#q-kind", "top-k")
    page.fill("#q-epsilon", "0.6")
    page.fill("#q-k", "5")
    page.click("#run-query")
    page.wait_for_selector("body[data-budgets-rendered='2']", timeout=30_000)
    assert page.is_visible("#query-result") and page.is_hidden("#query-error")
    assert page.locator("#answer-table tr").count() == 5
    (mine,) = [b for b in me.status("ratings") if b.scope == "analyst"]
    assert mine.remaining == pytest.approx(0.4, abs=1e-3)
    assert _row(page, label)["remaining"] == f"{mine.remaining:.4f}"
    page.screenshot(path=str(shots / "2-after-query.png"), full_page=True)

    # 3. the budget is nearly gone: the next query is refused, nothing is spent
    page.fill("#q-epsilon", "0.8")
    page.click("#run-query")
    page.wait_for_selector("body[data-budgets-rendered='3']", timeout=30_000)
    refusal = page.inner_text("#query-error")
    assert (
        "Refused — budget exceeded" in refusal and f"ε = {mine.remaining:.4f} remaining" in refusal
    )
    assert _row(page, label)["remaining"] == f"{mine.remaining:.4f}"
    assert len(me.history("ratings")) == 1
    page.screenshot(path=str(shots / "3-refused.png"), full_page=True)

    # 4. the analyst's other pages
    page.click("nav button[data-tab='tradeoff']")
    page.wait_for_selector("#tradeoff-recall .scatterlayer .trace", timeout=30_000)
    page.screenshot(path=str(shots / "4-tradeoff.png"), full_page=True)
    page.click("nav button[data-tab='models']")
    page.wait_for_selector("#model-list .card", timeout=30_000)
    assert "differentially private" in page.inner_text("#model-list")
    page.screenshot(path=str(shots / "5-models-analyst.png"), full_page=True)

    # 5. the auditor: everything, read-only
    audit_page = browser.new_page()  # type: ignore[attr-defined]
    audit_page.on("pageerror", lambda e: errors.append(str(e)))
    _sign_in(audit_page, url, world.keys["dora"])
    assert audit_page.is_hidden("#query-panel")
    audit_page.click("nav button[data-tab='audit']")
    audit_page.wait_for_selector("#chain-status.ok", timeout=30_000)
    assert "Chain verified" in audit_page.inner_text("#chain-status")
    audit_page.screenshot(path=str(shots / "6-audit.png"), full_page=True)
    audit_page.click("nav button[data-tab='governance']")
    audit_page.wait_for_selector("#governance-list .card", timeout=30_000)
    assert "Deletion requests: 1" in audit_page.inner_text("#governance-list")
    audit_page.screenshot(path=str(shots / "7-governance.png"), full_page=True)
    audit_page.click("nav button[data-tab='models']")
    audit_page.wait_for_selector("#artifact-table tbody tr", timeout=30_000)
    audit_page.screenshot(path=str(shots / "8-models-auditor.png"), full_page=True)

    assert not errors, errors
    assert all(r.startswith(url) for r in requests), [r for r in requests if not r.startswith(url)]

    # 6. the real server process logged routes, never a recommendation request's items
    r = httpx.post(
        f"{url}/v1/recommend", headers=fresh_analyst.headers,
        json={"model": "dpals-eps1", "history": ITEM_TOKENS[30:40], "k": 5}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 200
    time.sleep(0.5)
    text = log.read_text()
    assert "POST /v1/recommend 200" in text
    assert not any(t in text for t in ITEM_TOKENS[30:40] + [i["item"] for i in r.json()["items"]])
    print(f"\nscreenshots: {shots}")
