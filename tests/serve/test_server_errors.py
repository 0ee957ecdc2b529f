"""Errors the server's own configuration causes reach analysts as a fixed 503, never as detail.

* A consent file that is malformed, missing or unreadable, a policy the data cannot satisfy (a
  retention window on data without timestamps), a ledger that cannot be opened: the caller gets
  ``503`` with a fixed text — no server path, no file name, no row of the file (a person's id);
  the detail goes to the service log, without the values found in the file.
* Messages of errors about the request itself stay as useful as they were.
* CSV/TSV datasets declare their timestamp column (``timestamp_column``), so a retention window
  works on them; declaring one for a format that has its own is refused at startup.
"""

from __future__ import annotations

import logging
import secrets
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from privrec.errors import DataError, PolicyViolation, PrivacyWarning, ServeConfigError
from privrec.governance import Ledger
from privrec.governance.policy import policy_from_dict
from privrec.serve.app import ServeSettings, create_app
from privrec.serve.datasets import UNAVAILABLE, load_dataset_specs, log_detail, public_text

COUNTS = "/v1/datasets/r/queries/item-counts"
ROWS = [f"u{u}\tcommon{u % 5}" for u in range(50)]


class _World:
    def __init__(self, root: Path, toml: str, policy: dict[str, Any]) -> None:
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "items.txt").write_text(
            "\n".join(f"common{i}" for i in range(5)) + "\nold\nnew\n", encoding="utf-8"
        )
        (root / "d.toml").write_text(toml + 'items = "items.txt"\nmax_per_user = 2\n')
        self.root = root
        self.url = f"sqlite:///{root / 'privrec.db'}"
        self.owner, _ = Ledger.init(self.url, owner="o")
        body = {"purpose": "p", "unit": "user", "budget": {"epsilon": 1000.0, "delta": 1e-6}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)
            self.owner.set_policy("r", policy_from_dict({**body, **policy}))
        self.headers = {"Authorization": f"Bearer {self.owner.create_key('a', 'analyst')}"}

    def client(self, **kw: Any) -> TestClient:
        settings = ServeSettings(
            db_url=self.url,
            models_dir=self.root / "models",
            datasets=load_dataset_specs(self.root / "d.toml"),
            rate_limit=0,
            **kw,
        )
        return TestClient(create_app(settings))


def _tsv(root: Path) -> str:
    (root / "r.tsv").write_text("user\titem\n" + "\n".join(ROWS) + "\n", encoding="utf-8")
    return '[datasets.r]\nfile = "r.tsv"\nformat = "tsv"\n'


class _Log(logging.Handler):
    """Everything the service logs (its logger may not propagate once ``configure_log`` ran)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def service_log() -> Iterator[_Log]:
    handler = _Log()
    logger = logging.getLogger("privrec.serve")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _unavailable(r: Any, *secrets_: str) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"] == {
        "status": 503,
        "code": "dataset_unavailable",
        "message": UNAVAILABLE,
    }
    for s in secrets_:
        assert s not in r.text


def test_a_broken_consent_file_is_the_servers_problem_not_the_analysts(
    tmp_path: Path, service_log: _Log
) -> None:
    hidden = tmp_path / f"srv_{secrets.token_hex(6)}"
    hidden.mkdir()
    consents = hidden / "consents.csv"
    consents.write_text("user,consent\n" + "".join(f"u{u},true\n" for u in range(50)))
    w = _World(tmp_path, _tsv(tmp_path), {"consent": {"required": True, "source": str(consents)}})
    q = {"epsilon": 0.5, "items": ["common1"]}
    person = f"alice.{secrets.token_hex(4)}@example.com"
    with w.client() as c:
        assert c.post(COUNTS, headers=w.headers, json=q).status_code == 200
        # the controller rewrites the file; one row is malformed (a lone id, no consent)
        consents.write_text(consents.read_text() + person + "\n")
        r = c.post(COUNTS, headers=w.headers, json=q)  # reloaded: the file cannot be read
        _unavailable(r, str(hidden), "consents.csv", person, "line")
        consents.unlink()  # the view is cached: the ledger's check before charging fails
        _unavailable(c.post(COUNTS, headers=w.headers, json=q), str(hidden), "consents.csv")
    with w.client() as c:  # a fresh service: the first load fails
        _unavailable(c.post(COUNTS, headers=w.headers, json=q), str(hidden), "consents.csv")
    # the operator learns what is wrong and where; nobody learns the row's content
    assert "consents.csv" in service_log.text and "line 52" in service_log.text
    assert person not in service_log.text
    assert len(w.owner.history("r", limit=None)) == 1  # only the first query was charged


def test_a_ledger_that_cannot_be_opened_names_no_path(tmp_path: Path) -> None:
    hidden = tmp_path / f"srv_{secrets.token_hex(6)}"
    hidden.mkdir()
    (tmp_path / "models").mkdir()
    settings = ServeSettings(
        db_url=f"sqlite:///{hidden / 'gone.db'}", models_dir=tmp_path / "models"
    )
    with TestClient(create_app(settings)) as c:
        key = f"prk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
        r = c.get("/v1/me", headers={"X-API-Key": key})
    assert r.status_code == 503 and r.json()["error"]["code"] == "ledger_unavailable"
    assert str(hidden) not in r.text and "gone.db" not in r.text and "sqlite" not in r.text
    assert not (hidden / "gone.db").exists()  # the key check created no empty database


def test_messages_of_client_errors_stay_useful_and_lose_server_detail(tmp_path: Path) -> None:
    w = _World(tmp_path, _tsv(tmp_path), {})
    with w.client() as c:
        r = c.post("/v1/datasets/r/queries/top-k", headers=w.headers, json={"epsilon": 1, "k": 500})
        assert r.status_code == 422 and r.json()["error"]["message"] == "k must be between 1 and 7"
    err = DataError(
        "missing field", file="/srv/x/consents.csv", line=7, field="user", found=["bob"]
    )
    assert public_text(err) == "file 'consents.csv', line 7, field 'user': missing field"
    assert "bob" not in log_detail(err) and "/srv/x/consents.csv" in log_detail(err)
    text = public_text(PolicyViolation("the file '/srv/x/c.csv' and \"C:\\d\\e.csv\" differ"))
    assert text == "the file 'c.csv' and \"e.csv\" differ"


def test_a_caller_text_that_looks_like_a_path_keeps_its_4xx(
    tmp_path: Path, service_log: _Log
) -> None:
    """A reviewer named a purpose '/team/ab-test' (and '[Errno 2]'): the budget refusal came back
    as a 503 and the service logged a warning — the classification read the caller's own text.
    Ledger refusals are the caller's, whatever their text says."""
    w = _World(tmp_path, _tsv(tmp_path), {})
    body = {"epsilon": 1, "k": 3}
    with w.client() as c:
        for purpose in ("/team/ab-test", "[Errno 2]"):
            r = c.post(
                "/v1/datasets/r/queries/top-k", headers=w.headers, json={**body, "purpose": purpose}
            )
            assert r.status_code in (403, 409), r.text  # an undeclared purpose: refused, not 503
            assert r.json()["error"]["code"] != "dataset_unavailable"
    assert "unavailable" not in service_log.text


# ------------------------------------------------------------------ retention on CSV/TSV
def _timed(root: Path, column: str | None) -> str:
    now = int(time.time())
    rows = [f"u{u},new,{now - 60}" for u in range(60)] + [
        f"u{u},old,{now - 30 * 86400}" for u in range(60)
    ]
    (root / "r.csv").write_text("user,item,time\n" + "\n".join(rows) + "\n", encoding="utf-8")
    toml = '[datasets.r]\nfile = "r.csv"\nformat = "csv"\n'
    return toml if column is None else toml + f'timestamp_column = "{column}"\n'


def test_a_csv_dataset_declares_its_timestamp_column_for_retention(tmp_path: Path) -> None:
    w = _World(tmp_path, _timed(tmp_path, "time"), {"retention_days": 10.0})
    with w.client() as c:
        r = c.post(COUNTS, headers=w.headers, json={"epsilon": 20.0, "items": ["new", "old"]})
        assert r.status_code == 200, r.text
        counts = {e["item"]: e["count"] for e in r.json()["counts"]}
        assert counts["new"] > 40 and counts["old"] < 20  # 30-day-old rows are past retention


def test_retention_on_data_without_timestamps_is_unavailable_and_logged(
    tmp_path: Path, service_log: _Log
) -> None:
    w = _World(tmp_path, _timed(tmp_path, None), {"retention_days": 10.0})
    with w.client() as c:
        r = c.post(COUNTS, headers=w.headers, json={"epsilon": 1.0, "items": ["new"]})
        _unavailable(r, str(tmp_path))
    assert "no timestamps" in service_log.text


def test_a_timestamp_column_where_the_format_has_its_own_is_refused(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t2\t5\t881250949\n", encoding="utf-8")
    (tmp_path / "d.toml").write_text(
        '[datasets.r]\nfile = "u.data"\nformat = "ml-100k"\ntimestamp_column = "time"\n'
    )
    (tmp_path / "models").mkdir()
    Ledger.init(f"sqlite:///{tmp_path / 'l.db'}", owner="o")
    settings = ServeSettings(
        db_url=f"sqlite:///{tmp_path / 'l.db'}",
        models_dir=tmp_path / "models",
        datasets=load_dataset_specs(tmp_path / "d.toml"),
    )
    with pytest.raises(ServeConfigError, match="timestamp_column is for csv, tsv and parquet"):
        create_app(settings)


def test_serve_refuses_to_start_on_a_ledger_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``privrec serve --db`` with a typo'd path, a file that is not a database, a database that
    is no privrec ledger, or a server that does not answer: refused at start with one
    ServeConfigError (the password hidden), instead of a service answering every keyed request
    503. A missing SQLite file is not created; a real ledger starts, and is left unchanged."""
    import uvicorn
    from typer.testing import CliRunner

    from privrec.cli.main import app
    from privrec.governance.db import dispose_engines

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: started.append(kw))
    (tmp_path / "models").mkdir()
    (tmp_path / "junk.db").write_text("not a database\n")
    import sqlite3

    with sqlite3.connect(tmp_path / "other.db") as con:
        con.execute("CREATE TABLE notes (x)")
    cases = {
        f"sqlite:///{tmp_path / 'nope.db'}": "the file does not exist",
        f"sqlite:///{tmp_path / 'models'}": "it is not a regular file",
        f"sqlite:///{tmp_path / 'junk.db'}": "file is not a database",
        f"sqlite:///{tmp_path / 'other.db'}": "run `privrec ledger init` first",
        "sqlite://": "in-memory",
        "postgresql://olga:hunter2@127.0.0.1:1/ledger": "cannot open a privrec ledger",
    }
    for url, why in cases.items():
        res = CliRunner().invoke(app, ["serve", "--db", url, "--models", str(tmp_path / "models")])
        out = " ".join(res.output.split())
        assert res.exit_code == 1 and "ServeConfigError: --db:" in out and why in out, out
        assert "hunter2" not in out
    assert not (tmp_path / "nope.db").exists() and not started
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger.init(url, owner="olga")
    dispose_engines()
    before = (tmp_path / "ledger.db").read_bytes()
    res = CliRunner().invoke(app, ["serve", "--db", url, "--models", str(tmp_path / "models")])
    assert res.exit_code == 0, res.output
    assert len(started) == 1 and (tmp_path / "ledger.db").read_bytes() == before


def test_serve_refuses_a_lookalike_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database whose ``alembic_version`` row names this privrec's revision but whose tables
    are not (all) there — a lookalike, or a ledger damaged by hand — is refused at start too:
    the revision alone let it through, and the service then failed on every keyed request."""
    import sqlite3

    import uvicorn
    from typer.testing import CliRunner

    from privrec.cli.main import app
    from privrec.governance.db import HEAD_REVISION, dispose_engines

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: started.append(kw))
    (tmp_path / "models").mkdir()
    with sqlite3.connect(tmp_path / "look.db") as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        con.execute("INSERT INTO alembic_version VALUES (?)", (HEAD_REVISION,))
    Ledger.init(f"sqlite:///{tmp_path / 'cut.db'}", owner="olga")
    dispose_engines()
    with sqlite3.connect(tmp_path / "cut.db") as con:
        con.execute("ALTER TABLE api_keys DROP COLUMN revoked_at")
    for name, why in (("look.db", "has no table"), ("cut.db", "has no column 'revoked_at'")):
        url = f"sqlite:///{tmp_path / name}"
        res = CliRunner().invoke(app, ["serve", "--db", url, "--models", str(tmp_path / "models")])
        out = " ".join(res.output.split())
        assert res.exit_code == 1 and "not an intact privrec ledger" in out and why in out, out
    assert not started
