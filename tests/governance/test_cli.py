"""The governance CLI end to end, on SQLite and PostgreSQL: roles, one-line refusals, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.governance.db import create_ledger_engine

from .conftest import LedgerSetup

runner = CliRunner()

POLICY = """
purpose = "recs"
unit = "user"
columns = ["user", "item"]
max_interactions_per_user = 8

[budget]
epsilon = 1.6
delta = 1e-6
"""


def invoke(*args: str, key: str | None = None) -> tuple[int, str]:
    env = {"COLUMNS": "250", **({"PRIVREC_API_KEY": key} if key else {})}
    res = runner.invoke(app, list(args), env=env)
    return res.exit_code, res.output


def write_data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = [
        f"{u}\t{i}\t4\t88000{u:04d}"
        for u in range(1, 121)
        for i in rng.choice(60, 10, replace=False) + 1
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def audit_rows(url: str) -> int:
    with create_ledger_engine(url).connect() as c:
        return int(c.exec_driver_sql("SELECT count(*) FROM audit_log").scalar_one())


def test_cli_flow(ledger_url: str, tmp_path: Path) -> None:
    db = ["--db", ledger_url]
    code, out = invoke("ledger", "init", *db, "--owner", "olga")
    assert code == 0, out
    owner = out.strip().splitlines()[-1]
    pol = tmp_path / "policy.toml"
    pol.write_text(POLICY)
    data = write_data(tmp_path / "u.data")
    code, out = invoke("policy", "check", str(pol), "--data", str(data))
    assert code == 0 and "minimisation" in out and "kept" in out, out
    assert "keeps no user" not in out
    stale = tmp_path / "stale.toml"  # timestamps of 1997: a 30-day retention keeps nobody
    stale.write_text("retention_days = 30\n" + POLICY)
    code, out = invoke("policy", "check", str(stale), "--data", str(data))
    assert code == 0 and "keeps no user" in " ".join(out.split()), out
    assert invoke("policy", "set", str(pol), "--dataset", "ml", *db, key=owner)[0] == 0
    code, out = invoke("keys", "create", "ann", "--role", "analyst", *db, key=owner)
    analyst = out.strip().splitlines()[-1]
    code, out = invoke("keys", "create", "dora", "--role", "auditor", *db, key=owner)
    auditor = out.strip().splitlines()[-1]
    consents = tmp_path / "consent.csv"
    consents.write_text("user,consent\n1,yes\n2,no\n")
    code, out = invoke("consent", "import", str(consents), "--dataset", "ml", *db, key=owner)
    assert code == 0 and "2 consent records" in out, out
    assert invoke("forget", "5", "--dataset", "ml", *db, key=owner)[0] == 0

    train = ["train", "--data", str(data), "--model", "dppopularity", "--epsilon", "1",
             "--delta", "1e-6", "--unit", "user", "--ledger", ledger_url, "--dataset", "ml"]  # fmt: skip
    for week in (1, 2):
        code, out = invoke(*train, "-o", str(tmp_path / f"w{week}.npz"), key=analyst)
        assert code == 0, out
        assert "composed" in out
    code, out = invoke(*train, "-o", str(tmp_path / "w3.npz"), key=analyst)
    assert code == 1 and "BudgetExceededError" in out and "remaining" in out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "w3.npz").exists()

    code, out = invoke("ledger", "status", *db, key=auditor)
    assert code == 0 and "1.6" in out and "2 done" in out, out
    code, out = invoke("ledger", "history", *db, key=analyst)
    assert code == 0 and "dppopularity" in out
    code, out = invoke("lineage", str(tmp_path / "w1.npz"), *db, key=auditor)
    assert code == 0 and "dppopularity" in out and "sha256" in out, out
    code, out = invoke("lineage", "--user", "7", *db, key=auditor)
    assert code == 0 and "dppopularity" in out
    code, out = invoke("lineage", "--user", "7", "--json", *db, key=auditor)
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and len(rows) == 2 and {r["model"] for r in rows} == {"dppopularity"}, out
    code, out = invoke("lineage", "--user", "5", *db, key=auditor)  # forgotten before training
    assert code == 0 and "dppopularity" not in out
    code, out = invoke("audit-log", "verify", *db, key=auditor)
    assert code == 0 and "OK" in out, out

    # wrong roles and bad input: one line, exit 1, nothing written
    before = audit_rows(ledger_url)
    refusals = [
        (("ledger", "budget", "ml", "--epsilon", "9", "--delta", "1e-6", *db), analyst, "PermissionDeniedError"),
        (("forget", "7", "--dataset", "ml", *db), auditor, "PermissionDeniedError"),
        (("keys", "create", "eve", "--role", "owner", *db), analyst, "PermissionDeniedError"),
        (("audit-log", "verify", *db), analyst, "PermissionDeniedError"),
        (("forget", "7", "--dataset", "nope", *db), owner, "UnknownDatasetError"),
        (("ledger", "status", *db), "prk_000000000000_wrong", "AuthenticationError"),
        ((*train, "-o", str(tmp_path / "x.npz")), owner, "PermissionDeniedError"),
        (("policy", "set", str(data), "--dataset", "ml", *db), owner, "PolicyError"),
    ]  # fmt: skip
    for args, key, err in refusals:
        code, out = invoke(*args, key=key)
        assert code == 1 and err in out and len(out.strip().splitlines()) == 1, (args, out)
    assert audit_rows(ledger_url) == before

    # absurd caps are one-line typed errors; weak ones are set but warn (the training rule)
    for eps, delta in [("nan", "1e-6"), ("inf", "1e-6"), ("0", "1e-6"), ("1", "1"), ("1", "nan")]:
        code, out = invoke(
            "ledger", "budget", "ml", "--epsilon", eps, "--delta", delta, *db, key=owner
        )
        assert code == 1 and len(out.strip().splitlines()) == 1, (eps, delta, out)
    # an empty scope name once set the dataset's own cap
    for scope in ("--purpose", "--analyst"):
        code, out = invoke(
            "ledger", "budget", "ml", "--epsilon", "100", "--delta", "1e-6", scope, " ", *db,
            key=owner,
        )  # fmt: skip
        assert code == 1 and "needs a name" in out, out
    assert audit_rows(ledger_url) == before
    code, out = invoke(
        "ledger", "budget", "ml", "--epsilon", "1e308", "--delta", "1e-6", *db, key=owner
    )
    assert code == 0 and "PrivacyWarning" in out and "epsilon=1e+308 is a weak guarantee" in out, (
        out
    )
    code, out = invoke(
        "ledger", "budget", "ml", "--epsilon", "1.6", "--delta", "0.9", *db, key=owner
    )
    assert code == 0 and "delta=0.9 is not below 1/" in " ".join(out.split()), out
    code, out = invoke(  # a cap below what the scope already spent: set, with a warning
        "ledger", "budget", "ml", "--epsilon", "0.5", "--delta", "1e-6", *db, key=owner
    )
    assert code == 0 and "above the new cap 0.5" in " ".join(out.split()), out

    # tampering is reported with the first bad row
    with create_ledger_engine(ledger_url).begin() as c:
        c.exec_driver_sql("UPDATE audit_log SET action = 'nothing' WHERE seq = 3")
    code, out = invoke("audit-log", "verify", *db, key=auditor)
    assert code == 1 and "row 3 was edited" in out


def test_cli_newer_schema_is_one_line(ledger_url: str) -> None:
    code, out = invoke("ledger", "init", "--db", ledger_url)
    owner = out.strip().splitlines()[-1]
    with create_ledger_engine(ledger_url).begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
    code, out = invoke("ledger", "status", "--db", ledger_url, key=owner)
    assert code == 1 and "LedgerSchemaError" in out and "newer" in out
    assert len(out.strip().splitlines()) == 1


def test_cli_init_migrates_an_old_ledger(ledger_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from privrec.governance.db import HEAD_REVISION, MIGRATIONS

    code, out = invoke("ledger", "init", "--db", ledger_url)
    owner = out.strip().splitlines()[-1]
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with create_ledger_engine(ledger_url).connect().execution_options(privrec_write=True) as c:
        cfg.attributes["connection"] = c
        command.downgrade(cfg, "0001")  # the schema an older privrec wrote
        c.commit()
    code, out = invoke("ledger", "status", "--db", ledger_url, key=owner)
    assert code == 1 and "ledger init" in out
    code, out = invoke("ledger", "init", "--db", ledger_url)
    assert code == 0 and f"migrated from schema 0001 to {HEAD_REVISION}" in out, out
    code, out = invoke("audit-log", "verify", "--db", ledger_url, key=owner)
    assert code == 0, out
    code, out = invoke("ledger", "init", "--db", ledger_url)  # at head: still refused
    assert code == 1 and "already initialised" in out


def test_cli_damaged_databases_are_one_typed_line(ledger_url: str, tmp_path: Path) -> None:
    """A file that is not a database, a dropped table: one typed line, never a traceback."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00garbage" * 512)
    code, out = invoke("ledger", "init", "--db", f"sqlite:///{garbage}")
    assert code == 1 and "LedgerSchemaError" in out and "Traceback" not in out, out
    assert garbage.read_bytes() == b"\x00garbage" * 512
    code, out = invoke("ledger", "init", "--db", ledger_url)
    owner = out.strip().splitlines()[-1]
    (tmp_path / "policy.toml").write_text(POLICY)
    code, out = invoke(
        "policy", "set", str(tmp_path / "policy.toml"), "--dataset", "ml", "--db", ledger_url,
        key=owner,
    )  # fmt: skip
    assert code == 0, out
    with create_ledger_engine(ledger_url).begin() as c:  # a revision wound back by hand
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '0002'")
    code, out = invoke("ledger", "init", "--db", ledger_url)
    assert code == 1 and "LedgerSchemaError" in out and "migrated" not in out, out
    with create_ledger_engine(ledger_url).begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '0003'")
        c.exec_driver_sql("DROP TABLE charges")
    for cmd in (("ledger", "status"), ("audit-log", "verify")):
        code, out = invoke(*cmd, "--db", ledger_url, key=owner)
        assert code == 1 and "LedgerSchemaError" in out and "charges" in out, out
        assert len(out.strip().splitlines()) == 1


def test_ledger_abort_frees_a_stuck_reservation(setup: LedgerSetup) -> None:
    """A reserved charge holds its ε in every rolling window until committed or aborted: the
    CLI can abort one whose output never left (and refuses a released one)."""
    from .test_ledger import gauss

    a = setup.analyst
    stuck = a.reserve("ratings", gauss(5.0))
    released = a.reserve("ratings", gauss(50.0))
    a.mark_released(released)
    db = ["--db", setup.url]
    code, out = invoke(
        "ledger", "abort", str(stuck.id), "--reason", "the job died", *db, key=setup.analyst_key
    )
    assert code == 0 and f"charge {stuck.id} aborted" in out, out
    code, out = invoke(
        "ledger", "abort", str(released.id), "--reason", "x", *db, key=setup.analyst_key
    )
    assert code == 1 and "released" in out, out
    assert {c.id: c.status for c in a.history("ratings")} == {
        stuck.id: "aborted",
        released.id: "reserved",
    }
    code, out = invoke("ledger", "abort", str(released.id), *db, key=setup.analyst_key)
    assert code == 2  # --reason is required
