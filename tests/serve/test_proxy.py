"""``privrec serve --trusted-proxy``: behind a reverse proxy, sign-in budgets see the clients.

Without it every request carries the proxy's address, so the per-address allowance for failed
sign-ins acts as a second process-wide one: one client's flood of wrong keys throttles every
new sign-in. With it uvicorn believes X-Forwarded-For from the named proxies only — a client
that talks to the service directly cannot pick the address its failures are charged to.
"""

from __future__ import annotations

import secrets
import warnings
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
        "::ffff:10.1.0.5",
        "10.2.0.0/16",
        "::ffff:10.2.0.0/112",
        "::1",
        "10.3.0.0/24",
        "::ffff:10.3.0.0/120",
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
    assert seen["proxy_headers"] is True
    assert seen["forwarded_allow_ips"] == [PROXY, f"::ffff:{PROXY}", "fd00::/8"]
    assert seen["access_log"] is False  # addresses still never reach a log
    seen.clear()
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    assert seen["proxy_headers"] is False and seen["forwarded_allow_ips"] is None
    res = CliRunner().invoke(app, [*base, "--trusted-proxy", "*"])
    assert res.exit_code == 1 and "ServeConfigError" in " ".join(res.output.split())


def test_an_ipv6_client_is_charged_by_its_64() -> None:
    """One host is routinely given a whole /64: per address it could take a fresh allowance for
    every wrong key (and spend the process-wide one, locking out every new sign-in)."""
    ident = guard.source_ident
    assert ident("2001:db8:1:2::1") == ident("2001:DB8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert ident("2001:db8:1:3::1") != ident("2001:db8:1:2::1")
    assert ident("::ffff:198.51.100.7") == ident("198.51.100.7") == "198.51.100.7"
    for junk in (None, "", "unknown", "198.51.100.007", "x" * 5000):
        assert ident(junk) == "?"


def test_rotating_addresses_in_one_64_share_one_allowance(world: DemoWorld) -> None:
    app = create_app(settings_for(world, rate_limit=0, key_ttl=0.0))
    codes = []
    for i in range(guard.SOURCE_FAILURE_BURST + 3):
        with TestClient(app, client=(f"2001:db8:7:7::{i + 1:x}", 40000)) as c:
            codes.append(c.get("/v1/me", headers=_wrong()).status_code)
    assert codes.count(401) == guard.SOURCE_FAILURE_BURST and codes[-1] == 429


def test_an_ipv4_proxy_seen_through_a_dual_stack_socket_is_trusted(world: DemoWorld) -> None:
    """Bound to ``::`` (uvicorn with several workers binds a dual-stack socket) an IPv4 proxy
    connects as ``::ffff:10.1.0.5``: it must still be believed, or every client behind it
    shares the proxy's allowance."""
    assert "::ffff:10.1.0.5" in _proxies([PROXY])
    with TestClient(_behind_proxy(world), client=(f"::ffff:{PROXY}", 40000)) as c:
        codes = [
            c.get("/v1/me", headers={**_wrong(), "X-Forwarded-For": f"198.51.100.{i}"}).status_code
            for i in range(guard.SOURCE_FAILURE_BURST + 3)
        ]
    assert codes.count(401) == len(codes)


def test_networks_that_together_trust_everyone_are_refused() -> None:
    for everyone in (
        ["0.0.0.0/1", "128.0.0.0/1"],
        ["::ffff:0:0/96"],
        ["::/8"],  # holds every IPv4-mapped address
        ["::/1", "8000::/1"],
    ):
        with pytest.raises(ServeConfigError, match="trusts every address"):
            _proxies(everyone)
    assert _proxies(["::ffff:10.9.0.1"]) == ["::ffff:10.9.0.1", "10.9.0.1"]


def test_networks_of_clients_warn() -> None:
    """A reviewer's 2000::/3 (every global IPv6 address) and 0.0.0.0/1 were accepted: not
    everyone, so not refused, but every client in them could choose its charge address."""
    from privrec.errors import PrivacyWarning

    for broad in (["2000::/3"], ["0.0.0.0/1"], ["10.0.0.0/7"]):
        with pytest.warns(PrivacyWarning, match="name the proxies"):
            _proxies(broad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _proxies(["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"])
