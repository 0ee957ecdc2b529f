"""Connecting to the ledger database: SQLite (WAL, ``BEGIN IMMEDIATE``) or PostgreSQL (row lock).

Why these choices:

* **SQLite** is the embedded default (a file, no server). WAL lets readers work while one writer
  writes; ``synchronous=FULL`` makes a committed reservation survive a power cut, not only a
  process crash; every writing transaction starts with ``BEGIN IMMEDIATE`` so the budget it
  checks cannot change before it commits.
* **PostgreSQL** (``postgresql+psycopg://…``) is for teams. Every writing transaction first takes
  ``SELECT … FOR UPDATE`` on the ledger's one ``audit_head`` row: writers queue on that lock, so
  the remaining budget a transaction reads is still the remaining budget when it commits, and the
  audit log's chain never forks.
* The schema is created and evolved by Alembic migrations shipped in this package. Opening a
  database whose revision this privrec does not know (a newer privrec wrote it) is refused
  before anything is read or written.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from privrec.errors import LedgerSchemaError

__all__ = [
    "DEFAULT_URL",
    "ENV_VAR",
    "HEAD_REVISION",
    "KNOWN_REVISIONS",
    "check_ledger",
    "create_ledger_engine",
    "resolve_url",
    "schema_revision",
    "upgrade",
    "user_digests",
    "write_transaction",
]

ENV_VAR = "PRIVREC_DB"
DEFAULT_URL = "sqlite:///privrec.db"
#: Alembic revisions this privrec can read, oldest first (tests check it matches the scripts).
KNOWN_REVISIONS: tuple[str, ...] = ("0001", "0002", "0003")
HEAD_REVISION = KNOWN_REVISIONS[-1]
MIGRATIONS = Path(__file__).with_name("migrations")

_ENGINES: dict[str, Engine] = {}
#: tables every ledger revision has (a database holding one is a ledger, whatever it says)
_LEDGER_TABLES = frozenset({"ledger_meta", "audit_log", "charges", "principals", "api_keys"})


def resolve_url(url: str | Path | None = None) -> str:
    """``url``, else ``$PRIVREC_DB``, else ``sqlite:///privrec.db``; a bare path means a SQLite file."""
    raw = str(url) if url is not None else os.environ.get(ENV_VAR) or DEFAULT_URL
    if "://" not in raw:
        raw = f"sqlite:///{raw}"
    if raw.startswith("postgresql://") or raw.startswith("postgres://"):
        raw = "postgresql+psycopg://" + raw.split("://", 1)[1]
    return raw


def create_ledger_engine(url: str | Path | None = None) -> Engine:
    """An engine for the ledger (cached per URL within a process)."""
    resolved = resolve_url(url)
    engine = _ENGINES.get(resolved)
    if engine is not None:
        return engine
    if resolved.startswith("sqlite"):
        engine = sa.create_engine(resolved, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            try:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=60000")
            except sqlite3.OperationalError:
                raise  # locked, read-only…: SQLAlchemy reports it (and callers may retry)
            except sqlite3.DatabaseError as exc:
                # "file is not a database": the first statement on any connection finds it,
                # so every caller (also a CLI that only asks for the revision) gets one line
                raise LedgerSchemaError(
                    f"cannot open a privrec ledger at {_safe(resolved)}: {exc}"
                ) from None
            finally:
                cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("privrec_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if mode else "BEGIN")

    elif resolved.startswith("postgresql"):
        engine = sa.create_engine(resolved, pool_pre_ping=True)
    else:
        raise LedgerSchemaError(
            f"unsupported ledger URL {resolved.split('://', 1)[0]!r}: use sqlite:///FILE or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        )
    _ENGINES[resolved] = engine
    return engine


def _after_fork_in_child() -> None:
    # A forked child must not use (or close) the parent's pooled connections: drop them unclosed.
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def dispose_engines() -> None:
    """Close every cached engine (tests; forked children must not share connections)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def schema_revision(conn: Connection) -> str | None:
    """The database's Alembic revision, or ``None`` for a database never initialised."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return None if row is None else str(row[0])


def require_existing(url: str) -> None:
    """Refuse a SQLite ledger file that does not exist (instead of creating an empty one)."""
    if url.startswith("sqlite"):
        db = sa.engine.make_url(url).database
        if db and db != ":memory:" and not Path(db).is_file():
            raise LedgerSchemaError(
                f"no privrec ledger at {_safe(url)}: run `privrec ledger init` first"
            )


def open_error(url: str, exc: Exception) -> LedgerSchemaError:
    """A database that cannot be opened or read as a ledger (not a database, a directory, …)."""
    why = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
    return LedgerSchemaError(f"cannot open a privrec ledger at {_safe(url)}: {why}")


def check_schema(conn: Connection, url: str) -> None:
    """Refuse a database this privrec cannot safely use (not initialised, older or newer schema)."""
    rev = schema_revision(conn)
    if rev is None:
        raise LedgerSchemaError(
            f"no privrec ledger at {_safe(url)}: run `privrec ledger init` first"
        )
    if rev not in KNOWN_REVISIONS:
        raise LedgerSchemaError(
            f"the ledger at {_safe(url)} has schema revision {rev!r}, newer than this privrec "
            f"understands (up to {HEAD_REVISION!r}); upgrade privrec before using it"
        )
    if rev != HEAD_REVISION:
        raise LedgerSchemaError(
            f"the ledger at {_safe(url)} has schema revision {rev!r}; run `privrec ledger init` "
            f"to migrate it to {HEAD_REVISION!r}"
        )


def check_ledger(url: str | Path | None = None) -> None:
    """Refuse, without changing anything, a URL that does not lead to a usable privrec ledger.

    For a long-running service (``privrec serve``): it opens the ledger per request, so a
    mistyped ``--db`` would start quietly and answer every keyed request 503. Checked here: the
    database exists, opens, and holds this privrec's schema revision (:func:`check_schema`).

    Nothing is created or written: a SQLite file is opened read-only (``mode=ro``: a missing
    file is not created, and the WAL settings the ledger's engine applies are not touched —
    though SQLite, reading a ledger in WAL mode, may create the ``-wal`` / ``-shm`` files it
    keeps beside it, as the service's first request would); PostgreSQL is read in a read-only
    transaction. Messages show the URL without its password.

    Raises
    ------
    LedgerSchemaError
        No such file (or not a file), an in-memory SQLite URL (it holds no keys), a file that is
        not a database, an unreachable server, a database never initialised, a schema
        revision other than this privrec's, or one whose tables or columns are not all there.
    """
    resolved = resolve_url(url)
    if resolved.startswith("sqlite"):
        db = sa.engine.make_url(resolved).database
        if not db or db == ":memory:":
            raise LedgerSchemaError(
                "an in-memory SQLite database holds no ledger (no keys, no budgets): give the "
                "ledger's file, e.g. sqlite:///privrec.db"
            )
        path = Path(db)
        if not path.is_file():
            what = "it is not a regular file" if path.exists() else "the file does not exist"
            raise LedgerSchemaError(
                f"no privrec ledger at {_safe(resolved)}: {what} (create a ledger with "
                "`privrec ledger init`)"
            )
        uri = f"{path.resolve().as_uri()}?mode=ro"
        engine = sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=60),
            poolclass=sa.pool.NullPool,
        )
    else:
        engine = create_ledger_engine(resolved)  # refuses unsupported URL schemes
    try:
        with read_transaction(engine) as conn:
            check_schema(conn, resolved)
            _check_tables(conn, resolved)
    except sa.exc.DBAPIError as exc:
        raise open_error(resolved, exc) from None
    finally:
        if resolved.startswith("sqlite"):
            engine.dispose()


def _check_tables(conn: Connection, url: str) -> None:
    """Refuse a database whose revision row says privrec's but whose tables are not all there
    (a lookalike, or a ledger damaged by hand): the service would start and then fail on it."""
    from privrec.governance.schema import Base

    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names())
    for name, table in Base.metadata.tables.items():
        if name not in present:
            lack = f"has no table {name!r}"
        else:
            have = {c["name"] for c in inspector.get_columns(name)}
            missing = [repr(c.name) for c in table.columns if c.name not in have]
            if not missing:
                continue
            lack = f"has no column {', '.join(missing[:3])} in table {name!r}"
        raise LedgerSchemaError(
            f"the ledger at {_safe(url)} says schema revision {HEAD_REVISION!r} but {lack}: "
            "it is not an intact privrec ledger"
        )


def upgrade(engine: Engine) -> None:
    """Create or migrate the schema to this privrec's head revision (Alembic, in one transaction).

    Every failure is one :class:`~privrec.errors.LedgerSchemaError` and leaves the database as
    it was (the migration is one transaction: SQLite and PostgreSQL both roll DDL back). Refused
    before anything runs: a file that is not a database, a revision newer than this privrec, and
    a database holding ledger tables but no revision (``alembic_version`` dropped) — migrating
    that from scratch would fail half-way on the existing tables.
    """
    from alembic import command
    from alembic.config import Config

    url = str(engine.url)
    try:
        with engine.connect() as conn:
            rev = schema_revision(conn)
            tables = set(sa.inspect(conn).get_table_names())
            conn.rollback()
    except sa.exc.DBAPIError as exc:
        raise open_error(url, exc) from None
    if rev is not None and rev not in KNOWN_REVISIONS:
        raise LedgerSchemaError(
            f"the ledger has schema revision {rev!r}, newer than this privrec understands "
            f"(up to {HEAD_REVISION!r}); upgrade privrec before using it"
        )
    if rev is None and tables & _LEDGER_TABLES:
        raise LedgerSchemaError(
            f"the database at {_safe(url)} holds privrec ledger tables "
            f"({', '.join(sorted(tables & _LEDGER_TABLES)[:3])}…) but no schema revision "
            "(alembic_version is missing): it was damaged or edited; restore it from a backup"
        )
    if rev == HEAD_REVISION:
        return
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.connect().execution_options(privrec_write=True) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
    except LedgerSchemaError:
        raise
    except Exception as exc:  # SQLAlchemy's, Alembic's, the driver's: all one typed line
        why = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        raise LedgerSchemaError(
            f"cannot migrate the ledger at {_safe(url)} from schema {rev or 'none'} to "
            f"{HEAD_REVISION}: {why} (the database does not match its recorded revision; "
            "nothing was changed)"
        ) from None


def _schema_problem(exc: sa.exc.DBAPIError) -> bool:
    """Whether a database error means a table or column of the ledger is missing."""
    if getattr(exc.orig, "sqlstate", None) in ("42P01", "42703"):  # PostgreSQL: undefined …
        return True
    text = str(exc.orig).lower()
    return "no such table" in text or "no such column" in text or "has no column named" in text


def _schema_error(exc: sa.exc.DBAPIError) -> LedgerSchemaError:
    why = str(exc.orig).splitlines()[0][:200]
    return LedgerSchemaError(
        f"the ledger database is missing part of its schema ({why}): it was damaged or "
        "edited; restore it from a backup (nothing was written)"
    )


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One serialised writing transaction: ``BEGIN IMMEDIATE`` (SQLite) or the head-row lock (PostgreSQL).

    Everything inside commits together or not at all — the action and its audit-log row alike.
    """
    try:
        with engine.connect().execution_options(privrec_write=True) as conn, conn.begin():
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    "SELECT value FROM ledger_meta WHERE key = 'audit_head' FOR UPDATE"
                )
            yield conn
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        if _schema_problem(exc):  # a dropped table: one typed line, after the rollback
            raise _schema_error(exc) from None
        raise


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only snapshot (one transaction, so a listing is consistent)."""
    try:
        with engine.connect() as conn, conn.begin():
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        if _schema_problem(exc):
            raise _schema_error(exc) from None
        raise


def user_digests(key: bytes, user_ids: np.ndarray | list[Any]) -> np.ndarray:
    """Keyed 64-bit hashes (BLAKE2b) of user ids as ``uint64``: what the ledger stores instead of ids.

    Ids are hashed through their text form, so ``7`` and ``"7"`` are the same person — the form
    a CSV of consents or a command line gives them in.
    """
    out = np.empty(len(user_ids), dtype=np.uint64)
    for i, u in enumerate(user_ids):
        h = hashlib.blake2b(str(u).encode(), key=key, digest_size=8).digest()
        out[i] = int.from_bytes(h, "little")
    return out


def deletions_in(
    key: bytes, user_ids: np.ndarray, digests: np.ndarray, deleted: np.ndarray
) -> np.ndarray:
    """``deleted`` plus the hashes of the data's users whose id, in Unicode NFC or NFD form, was
    asked to be deleted — what every place applying a policy (a load, a policy check, the
    engine's workers) passes as ``deleted``.

    Ids are hashed as given, and the same name can be written in two Unicode forms ("José" as
    one code point é, or as e and a combining accent): a deletion request in one form matched
    nobody in data holding the other, and the person stayed in every later load (only warned
    about, and only once a version held them). Dropping them is the privacy-conservative side;
    consents are left exact (a form mismatch there already drops the person).
    """
    if not deleted.size:
        return deleted
    extra: list[np.ndarray] = []
    for form in ("NFC", "NFD"):
        idx = [
            i
            for i, u in enumerate(user_ids)
            if isinstance(u, str) and not unicodedata.is_normalized(form, u)
        ]
        if idx:
            alt = user_digests(key, [unicodedata.normalize(form, user_ids[i]) for i in idx])
            hit = np.isin(alt, deleted)
            if hit.any():
                extra.append(digests[np.asarray(idx)[hit]])
    return np.concatenate([deleted, *extra]) if extra else deleted


def digest_hex(value: int | np.integer[Any]) -> str:
    return f"{int(value):016x}"


def _safe(url: str) -> str:
    """The URL without its password (for messages)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # pragma: no cover - malformed URLs are reported by create_engine
        return url.split("@")[-1]


def create_private_sqlite_file(url: str) -> None:
    """Create a new SQLite ledger file readable by its owner only (mode 600, as signing keys).

    It holds the key of the user hashes (whoever has the file and a candidate id can test
    membership) and the API keys' hashes; SQLite gives its -wal and -shm files the same mode.
    An existing file is left as it is.
    """
    if not url.startswith("sqlite"):
        return
    db = sa.engine.make_url(url).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return
    try:
        fd = os.open(db, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # the engine reports an unusable path with its own typed error
    os.close(fd)
