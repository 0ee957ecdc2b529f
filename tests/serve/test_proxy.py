"""``privrec serve --trusted-proxy``: behind a reverse proxy, sign-in budgets see the clients.

Without it every request carries the proxy's address, so the per-address allowance for failed
sign-ins acts as a second process-wide one: one client's flood of wrong keys throttles every
new sign-in. With it uvicorn believes X-Forwarded-For from the named proxies only — a client
that talks to the service directly cannot pick the address its failures are charged to.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from privrec.cli.serve import _proxies
from privrec.errors import ServeConfigError
from privrec.serve import guard
from privrec.serve.app import create_app
from privrec.serve.demo import DemoWorld

from .conftest import Analyst, settings_for

PROXY = "10.1.0.5"


def _wrong() -> dict[str, str]:
    return {"X-API-Key": f"prk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"}


def _behind_proxy(world: DemoWorld) -> Any:
    app = create_app(settings_for(world, rate_limit=0, key_ttl=0.0))
    return ProxyHeadersMiddleware(app, trusted_hosts=_proxies([PROXY]))  # type: ignore[arg-type]


def test_one_client_behind_the_proxy_does_not_throttle_the_others(
    world: DemoWorld, fresh_analyst: Analyst
) -> None:
    with TestClient(_behind_proxy(world), client=(PROXY, 40000)) as c:
        flood = [
            c.get("/v1/me", headers={**_wrong(), "X-Forwarded-For": "198.51.100.7"}).status_code
            for _ in range(guard.SOURCE_FAILURE_BURST + 5)
        ]
        assert flood.count(401) == guard.SOURCE_FAILURE_BURST and flood[-1] == 429
        # another client behind the same proxy still has its own allowance, and the holder of a
        # real key signs in
        other = c.get("/v1/me", headers={**_wrong(), "X-Forwarded-For": "198.51.100.8"})
        assert other.status_code == 401, other.text
        r = c.get("/v1/me", headers={**fresh_analyst.headers, "X-Forwarded-For": "198.51.100.9"})
        assert r.status_code == 200, r.text


def test_a_direct_client_cannot_choose_its_address(world: DemoWorld) -> None:
    """X-Forwarded-For from a peer that is not a trusted proxy is ignored: its failures are
    charged to its own address whatever header it sends."""
    with TestClient(_behind_proxy(world), client=("203.0.113.50", 40000)) as c:
        codes = [
            c.get("/v1/me", headers={**_wrong(), "X-Forwarded-For": f"192.0.2.{i}"}).status_code
            for i in range(guard.SOURCE_FAILURE_BURST + 3)
        ]
        assert codes.count(401) == guard.SOURCE_FAILURE_BURST and codes[-1] == 429


def test_trusted_proxies_are_checked() -> None:
    assert _proxies([" 10.1.0.5 ", "10.2.0.0/16", "::1", "10.3.0.7/24"]) == [
        "10.1.0.5",
        "10.2.0.0/16",
        "::1",
        "10.3.0.0/24",
    ]
    for bad in ("*", "proxy.example", "10.0.0.0/8/1", ""):
        with pytest.raises(ServeConfigError, match="IP address or network"):
            _proxies([bad])
    for everyone in ("0.0.0.0/0", "::/0"):
        with pytest.raises(ServeConfigError, match="trusts every address"):
            _proxies([everyone])


def test_the_cli_hands_the_proxies_to_uvicorn(
    world: DemoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from privrec.cli.main import app

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.update(kw))
    base = ["serve", "--db", world.url, "--models", str(world.models_dir)]
    res = CliRunner().invoke(app, [*base, "--trusted-proxy", PROXY, "--trusted-proxy", "fd00::/8"])
    assert res.exit_code == 0, res.output
    assert seen["proxy_headers"] is True and seen["forwarded_allow_ips"] == [PROXY, "fd00::/8"]
    assert seen["access_log"] is False  # addresses still never reach a log
    seen.clear()
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    assert seen["proxy_headers"] is False and seen["forwarded_allow_ips"] is None
    res = CliRunner().invoke(app, [*base, "--trusted-proxy", "*"])
    assert res.exit_code == 1 and "ServeConfigError" in " ".join(res.output.split())
