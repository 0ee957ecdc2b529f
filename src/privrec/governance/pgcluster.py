"""A throw-away PostgreSQL cluster from the machine's own binaries (tests and benchmarks only).

``start()`` runs ``initdb`` and ``pg_ctl`` (found on PATH or under ``/usr/lib/postgresql/*/bin``)
on a free 127.0.0.1 port in a fresh temporary directory, with trust authentication for the
``privrec`` role. As root it runs them as an unprivileged system account (created with
``useradd`` if missing, removed again by ``stop()``). Never for production data: ``fsync`` is off.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from privrec.governance.db import dispose_engines

__all__ = ["PgCluster", "start", "stop"]

PG_USER = "privrec-pgtest"


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
            conn.execute(statement)  # type: ignore[arg-type,unused-ignore]


def start() -> PgCluster | str:
    bindir = _bindir()
    if bindir is None:
        return (
            "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"
        )
    created = False
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_USER,
                ],
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


def stop(cluster: PgCluster) -> None:
    dispose_engines()
    try:
        cluster.run(str(cluster.bindir / "pg_ctl"), "-D", str(cluster.root / "data"), "-m",
                    "immediate", "-w", "stop")  # fmt: skip
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)
        if cluster.created_user:
            subprocess.run(["userdel", PG_USER], check=False, capture_output=True)
