"""Ledger fixtures: every ledger test runs on a SQLite file AND a throw-away PostgreSQL cluster.

The cluster is started once per test session from the machine's own binaries (``initdb`` /
``pg_ctl`` on PATH or under ``/usr/lib/postgresql/*/bin``), on a free 127.0.0.1 port, as an
unprivileged account when the tests run as root (created with ``useradd`` if needed and removed
afterwards), and deleted at the end. Each test gets a fresh database in it. Without the binaries
the PostgreSQL half skips with a reason — unless ``PRIVREC_REQUIRE_POSTGRES=1`` (set by
``.ci/run``), which turns that skip into a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from privrec.governance import Ledger
from privrec.governance.db import dispose_engines
from privrec.governance.policy import policy_from_dict

PG_USER = "privrec-pgtest"
REQUIRE_ENV = "PRIVREC_REQUIRE_POSTGRES"


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    bindir: Path
    root: Path
    port: int
    run_as: list[str]
    created_user: bool

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://privrec@127.0.0.1:{self.port}/postgres"

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://privrec@127.0.0.1:{self.port}/{db}"

    def run(self, *args: str) -> None:
        subprocess.run([*self.run_as, *args], check=True, capture_output=True, timeout=120)

    def sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=privrec dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(statement)  # type: ignore[arg-type]


def _start() -> PgCluster | str:
    bindir = _bindir()
    if bindir is None:
        return "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"
    created = False
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                check=True,
                capture_output=True,
            )
            created = True
        run_as = ["runuser", "-u", PG_USER, "--"]
    root = Path(tempfile.mkdtemp(prefix="privrec-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        ent = pwd.getpwnam(PG_USER)
        os.chown(root, ent.pw_uid, ent.pw_gid)
    cluster = PgCluster(bindir, root, _free_port(), run_as, created)
    data = root / "data"
    cluster.run(
        str(bindir / "initdb"), "-D", str(data), "-U", "privrec", "--auth=trust", "-E", "UTF8",
        "--no-sync",
    )  # fmt: skip
    opts = f"-p {cluster.port} -h 127.0.0.1 -k {root} -c fsync=off -c max_connections=200"
    cluster.run(
        str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w",
        "-t", "60", "start",
    )  # fmt: skip
    return cluster


def _stop(cluster: PgCluster) -> None:
    dispose_engines()
    try:
        cluster.run(str(cluster.bindir / "pg_ctl"), "-D", str(cluster.root / "data"), "-m",
                    "immediate", "-w", "stop")  # fmt: skip
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)
        if cluster.created_user:
            subprocess.run(["userdel", PG_USER], check=False, capture_output=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster | str]:
    started = _start()
    if isinstance(started, str):
        yield started
        return
    try:
        yield started
    finally:
        _stop(started)


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
