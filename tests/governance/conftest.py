"""Ledger fixtures: every ledger test runs on a SQLite file AND a throw-away PostgreSQL cluster.

The cluster is started once per test session from the machine's own binaries (``initdb`` /
``pg_ctl`` on PATH or under ``/usr/lib/postgresql/*/bin``), on a free 127.0.0.1 port, as an
unprivileged account when the tests run as root (created with ``useradd`` if needed and removed
afterwards), and deleted at the end. Each test gets a fresh database in it. Without the binaries
the PostgreSQL half skips with a reason — unless ``PRIVREC_REQUIRE_POSTGRES=1`` (set by
``.ci/run``), which turns that skip into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from privrec.governance import Ledger
from privrec.governance.db import dispose_engines
from privrec.governance.policy import policy_from_dict

REQUIRE_ENV = "PRIVREC_REQUIRE_POSTGRES"  # the session's pg_cluster fixture is in tests/conftest.py


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'privrec.db'}"
        dispose_engines()
        return
    cluster = request.getfixturevalue("pg_cluster")
    if isinstance(cluster, str):
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {cluster}")
        pytest.skip(cluster)
    name = "t_" + uuid.uuid4().hex[:12]
    cluster.sql(f"CREATE DATABASE {name}")
    yield cluster.url(name)
    dispose_engines()
    cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


POLICY = {
    "purpose": "recommendations",
    "unit": "user",
    "budget": {"epsilon": 2.0, "delta": 1e-6},
}


@dataclass
class LedgerSetup:
    url: str
    owner: Ledger
    owner_key: str
    analyst: Ledger
    analyst_key: str
    auditor: Ledger
    auditor_key: str


def make_setup(url: str, policy: dict[str, object] | None = None) -> LedgerSetup:
    owner, okey = Ledger.init(url, owner="olga")
    owner.set_policy("ratings", policy_from_dict(policy or POLICY))
    akey = owner.create_key("ann", "analyst")
    dkey = owner.create_key("dora", "auditor")
    return LedgerSetup(
        url, owner, okey, Ledger.connect(url, akey), akey, Ledger.connect(url, dkey), dkey
    )


@pytest.fixture
def setup(ledger_url: str) -> LedgerSetup:
    """An initialised ledger: owner olga, analyst ann, auditor dora, dataset 'ratings' (ε=2, δ=1e-6)."""
    return make_setup(ledger_url)
