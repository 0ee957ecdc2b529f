"""Second hostile review: retention at load, the write lock, retention bypasses, consent-file
messages and event validation (SQLite and PostgreSQL where a ledger is involved).

Each test pins a finding of the review: it failed before the fix.
"""

from __future__ import annotations

import json
import sqlite3
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest
import scipy.sparse as sp
import sqlalchemy as sa

from privrec.data import Interactions
from privrec.errors import (
    BudgetExceededError,
    DataError,
    GovernanceError,
    PolicyViolation,
    StaleDataError,
)
from privrec.governance import Ledger, composition
from privrec.governance import charging as charging_module
from privrec.governance import reading as reading_module
from privrec.governance.composition import MAX_DEPTH, MAX_RELEASES, ChargeEvents
from privrec.governance.db import create_ledger_engine
from privrec.governance.policy import (
    check_retention,
    consent_file_digest,
    policy_from_dict,
    read_consents,
    retention_grace,
)
from privrec.privacy.events import SpentEvent

from .conftest import POLICY, make_setup

DAY = 86400.0
W_DAYS = 30.0
RETAINED = {
    "purpose": "recs",
    "unit": "user",
    "columns": ["user", "item", "timestamp"],
    "retention_days": W_DAYS,
    "budget": {"epsilon": 5.0, "delta": 1e-6},
}


def _q(z: float = 30.0) -> list[SpentEvent]:
    return [SpentEvent("q", dpa.GaussianDpEvent(z))]


def _count(url: str, table: str) -> int:
    with create_ledger_engine(url).connect() as c:
        return int(c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def _timed(ts: list[float]) -> Interactions:
    n = len(ts)
    m = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), np.zeros(n, int))), shape=(n, 1))
    return Interactions(m, np.arange(n), np.array([0]), np.asarray(ts, dtype=np.float64))


# ----------------------------------------------------------------- (4) retention grace at load
def test_retention_grace_is_one_percent_of_the_window_at_most_an_hour() -> None:
    assert retention_grace(365) == 3600.0
    assert retention_grace(1) == pytest.approx(864.0)
    assert retention_grace(0.001) == pytest.approx(0.864)


def test_a_version_stays_valid_for_the_grace_then_goes_stale(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One interaction a minute, starting right at the window's edge: cut exactly at the window,
    the oldest kept one expired a second after the load, and every charge had to reload."""
    s = make_setup(ledger_url, RETAINED)
    t0 = time.time()
    grace = retention_grace(W_DAYS)
    raw = _timed([t0 - W_DAYS * DAY + 60 * k for k in range(120)])
    monkeypatch.setattr(reading_module, "ledger_clock", lambda engine: t0)
    g = s.analyst.load("ratings", raw)
    assert g.report.oldest_kept_timestamp == pytest.approx(t0 - W_DAYS * DAY + grace)
    assert g.report.step("retention").interactions_dropped == 60  # the first hour
    monkeypatch.setattr(reading_module, "ledger_clock", lambda engine: t0 + grace - 1)
    s.analyst.abort(s.analyst.reserve("ratings", _q(), data=g), reason="within the grace")
    monkeypatch.setattr(reading_module, "ledger_clock", lambda engine: t0 + grace + 1)
    with pytest.raises(StaleDataError, match="retention"):
        s.analyst.reserve("ratings", _q(), data=g)


# ----------------------------------------------------------------- (6) retention bypasses
def test_millisecond_timestamps_are_refused_under_retention_before_anything_is_written(
    ledger_url: str,
) -> None:
    s = make_setup(ledger_url, RETAINED)
    old_ms = (time.time() - 400 * DAY) * 1000  # 400 days old, in milliseconds
    before = _count(s.url, "dataset_versions")
    with pytest.raises(DataError, match="milliseconds"):
        s.analyst.load("ratings", _timed([old_ms, old_ms + 1]))
    with pytest.raises(DataError, match="future"):
        s.analyst.load("ratings", _timed([time.time() + 3 * DAY]))
    assert _count(s.url, "dataset_versions") == before
    # a clock a few hours ahead is tolerated; without a retention policy nothing is refused
    s.analyst.load("ratings", _timed([time.time() + 3600]))
    s.owner.set_policy("plain", policy_from_dict(POLICY))
    s.analyst.load("plain", _timed([old_ms]))


def test_a_nan_timestamp_is_refused() -> None:
    with pytest.raises(DataError, match="not finite"):
        _timed([time.time(), float("nan")])
    with pytest.raises(DataError, match="not finite"):
        _timed([float("inf")])


@pytest.mark.parametrize(
    "oldest", [float("nan"), None, "1e18", True], ids=["nan", "null", "text", "bool"]
)
def test_a_version_whose_oldest_interaction_is_not_a_number_is_stale(oldest: Any) -> None:
    """`NaN < cutoff` is False: a NaN oldest interaction never expired (and pydantic stores a
    NaN as null, which read as "kept nothing")."""
    report = json.dumps({"oldest_kept_timestamp": oldest, "interactions_out": 5})
    with pytest.raises(StaleDataError, match="retention"):
        check_retention("ratings", 30, json.loads(report), time.time())
    # a load that kept nothing has nothing to expire
    empty = json.dumps({"oldest_kept_timestamp": None, "interactions_out": 0})
    check_retention("ratings", 30, json.loads(empty), time.time())


# ----------------------------------------------------------------- (8) consent-file messages
def test_consent_file_errors_name_the_file_and_line_only(tmp_path: Path) -> None:
    secret = tmp_path / "srv_secret_dir"
    secret.mkdir()
    cf = secret / "consents.csv"
    cf.write_text("user,consent\nu1,true\nalice.smith@example.com\n")
    with pytest.raises(DataError) as exc:
        read_consents(cf)
    msg = str(exc.value)
    assert "line 3" in msg and "consents.csv" in msg
    assert "alice" not in msg and "srv_secret" not in msg
    cf.write_text("user,consent\nbob.jones@example.com,bob.jones@example.com\n")
    with pytest.raises(DataError) as exc:
        read_consents(cf)
    assert "bob" not in str(exc.value) and "line 2" in str(exc.value)
    cf.write_text("carol@example.com,true\n")  # no header: the first row is a person
    with pytest.raises(DataError) as exc:
        read_consents(cf)
    assert "carol" not in str(exc.value)
    cf.write_bytes(b"user,consent\n\xffdave,true\n")
    with pytest.raises(DataError) as exc:
        read_consents(cf)
    assert "dave" not in str(exc.value) and "srv_secret" not in str(exc.value)
    cf.unlink()
    for call in (read_consents, consent_file_digest):
        with pytest.raises((DataError, PolicyViolation)) as err:
            call(cf)
        assert "srv_secret" not in str(err.value) and "consents.csv" in str(err.value)


# ----------------------------------------------------------------- (5) the write lock
def _write_lock_held(url: str) -> bool:
    """Whether some transaction holds the ledger's write lock (asked without waiting)."""
    if url.startswith("sqlite"):
        probe = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0.05)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
    with create_ledger_engine(url).connect() as c, c.begin():
        try:
            c.exec_driver_sql(
                "SELECT value FROM ledger_meta WHERE key = 'audit_head' FOR UPDATE NOWAIT"
            )
            return False
        except sa.exc.OperationalError:
            return True


def test_accounting_runs_outside_the_write_lock(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An analyst's charge used to compose (seconds, for a large PLD) inside BEGIN IMMEDIATE:
    an owner's deletion request waited for it."""
    s = make_setup(ledger_url)
    lap = [SpentEvent("l", dpa.LaplaceDpEvent(5.0))]
    s.analyst.abort(s.analyst.reserve("ratings", lap), reason="x")
    assert not _write_lock_held(s.url)
    with s.owner._write():  # the probe sees a held lock
        assert _write_lock_held(s.url)
    held: list[bool] = []
    real_own, real_composed = ChargeEvents.epsilon, charging_module.composed_epsilon

    def own(self: ChargeEvents, *a: Any) -> float:
        held.append(_write_lock_held(s.url))
        return real_own(self, *a)

    def composed(*a: Any) -> float:
        held.append(_write_lock_held(s.url))
        return real_composed(*a)

    monkeypatch.setattr(ChargeEvents, "epsilon", own)
    monkeypatch.setattr(charging_module, "composed_epsilon", composed)
    s.analyst.reserve("ratings", lap)
    assert held and not any(held)


def test_a_charge_landing_during_the_accounting_is_composed_with(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accounting outside the lock is only reused if the stored charges did not change:
    a charge reserved meanwhile is taken into account (two of ε 1.25 do not fit in 2)."""
    s = make_setup(ledger_url)
    other = Ledger.connect(s.url, s.owner.create_key("bo", "analyst"))
    lap = [SpentEvent("l", dpa.LaplaceDpEvent(0.8))]
    real = charging_module.composed_epsilon
    fired: list[int] = []

    def composed(*a: Any) -> float:
        if not fired and not _write_lock_held(s.url):  # (under the lock it would deadlock)
            fired.append(1)
            other.reserve("ratings", lap)  # lands between the snapshot and the lock
        return real(*a)

    monkeypatch.setattr(charging_module, "composed_epsilon", composed)
    with pytest.raises(BudgetExceededError):
        s.analyst.reserve("ratings", lap)
    assert fired
    assert [c.actor for c in s.owner.history("ratings")] == ["bo"]


def test_oversized_self_compositions_are_refused_at_once(setup: Any) -> None:
    lap = dpa.LaplaceDpEvent(100.0)
    cases = [  # (the first ones fail fast without the limits; the others took minutes or OOM)
        dpa.SelfComposedDpEvent(dpa.NoOpDpEvent(), 10**400),
        dpa.SelfComposedDpEvent(lap, 10**7),
        dpa.SelfComposedDpEvent(lap, 10**18),
        dpa.SelfComposedDpEvent(lap, 10**400),
        dpa.SelfComposedDpEvent(dpa.SelfComposedDpEvent(lap, 1001), 1000),  # 1.001e6 releases
        dpa.ComposedDpEvent([dpa.SelfComposedDpEvent(lap, 600_000)] * 2),
    ]
    for ev in cases:
        t = time.perf_counter()
        with pytest.raises(GovernanceError, match="limit"):
            setup.analyst.reserve("ratings", [SpentEvent("x", ev)])
        assert time.perf_counter() - t < 1.0
    with pytest.raises(GovernanceError, match="limit"):  # counted over the charge's events
        setup.analyst.reserve(
            "ratings", [SpentEvent("x", dpa.SelfComposedDpEvent(lap, 600_000))] * 2
        )
    many = [SpentEvent(f"q{i}", dpa.GaussianDpEvent(1e4)) for i in range(100_001)]
    with pytest.raises(GovernanceError, match="100,000"):
        setup.analyst.reserve("ratings", many)
    # at the limit, Gaussian releases (a rate) are accepted
    setup.analyst.reserve(
        "ratings",
        [SpentEvent("g", dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1e4), MAX_RELEASES))],
    )


def test_running_out_of_memory_in_dp_accounting_is_a_typed_refusal(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def oom(*a: Any, **k: Any) -> float:
        raise MemoryError

    monkeypatch.setattr(composition, "epsilon_of", oom)
    with pytest.raises(GovernanceError, match="memory"):
        setup.analyst.reserve("ratings", [SpentEvent("l", dpa.LaplaceDpEvent(5.0))])
    assert setup.analyst.history("ratings") == []


# ----------------------------------------------------------------- (9) event validation
def _deep(n: int) -> dpa.DpEvent:
    e: dpa.DpEvent = dpa.GaussianDpEvent(50.0)
    for _ in range(n):
        e = dpa.ComposedDpEvent([e])
    return e


def test_deep_nesting_and_huge_parameters_are_typed_refusals(setup: Any) -> None:
    for ev in (_deep(5000), _deep(MAX_DEPTH + 1), dpa.GaussianDpEvent(10**400)):
        with pytest.raises(GovernanceError) as exc:
            setup.analyst.reserve("ratings", [SpentEvent("x", ev)])
        assert len(str(exc.value)) < 400
    deep_dict: dict[str, Any] = {"type": "GaussianDpEvent", "noise_multiplier": 50.0}
    for _ in range(5000):
        deep_dict = {"type": "ComposedDpEvent", "events": [deep_dict]}
    with pytest.raises(GovernanceError):
        setup.analyst.reserve("ratings", [{"label": "x", "event": deep_dict}])
    setup.analyst.reserve("ratings", [SpentEvent("x", _deep(MAX_DEPTH - 1))])


def test_numpy_and_fraction_parameters_are_stored_as_plain_numbers(setup: Any) -> None:
    events = [
        SpentEvent("a", dpa.GaussianDpEvent(np.float32(50.0))),
        SpentEvent("b", dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(np.float64(40.0)), np.int64(3))),
        SpentEvent("c", dpa.GaussianDpEvent(Fraction(100, 1))),
        SpentEvent(
            "d", dpa.PoissonSampledDpEvent(np.float32(0.5), dpa.GaussianDpEvent(np.int32(60)))
        ),
    ]
    c = setup.analyst.reserve("ratings", events)
    stored = json.loads(ChargeEvents(events).json)
    assert stored[0]["event"]["noise_multiplier"] == 50.0
    assert stored[1]["event"]["count"] == 3 and type(stored[1]["event"]["count"]) is int
    assert stored[2]["event"]["noise_multiplier"] == 100.0
    assert stored[3]["event"]["event"]["noise_multiplier"] == 60
    assert c.epsilon > 0
    # Python ints stay ints: the JSON of charges stored before is unchanged (grouping, replays)
    assert json.loads(ChargeEvents(_q(30)).json)[0]["event"]["noise_multiplier"] == 30
    assert isinstance(json.loads(ChargeEvents(_q(30)).json)[0]["event"]["noise_multiplier"], int)
