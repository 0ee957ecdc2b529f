"""Charges are timed by the ledger's clock, not the analyst's (rolling budgets depend on it).

A rolling (``period_days``) budget counts the charges made in the last N days. Timed by each
client's own clock, an analyst machine set back 40 days wrote charges every 30-day window
skipped — the budget spent twice over, and the audit log could not tell (the row was written
that way). Against PostgreSQL every process now reads the server's clock.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from privrec.errors import BudgetExceededError
from privrec.governance import reading
from privrec.governance.db import create_ledger_engine

from .conftest import LedgerSetup
from .test_ledger import gauss

DAY = 86400.0


def _created(url: str) -> list[float]:
    engine = create_ledger_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT created_at FROM charges ORDER BY id")).scalars()
        return [float(r) for r in rows]


def test_an_analyst_clock_set_back_cannot_spend_a_rolling_budget_twice(
    setup: LedgerSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not setup.url.startswith("postgresql"):
        pytest.skip("SQLite is a file on this machine: its clock is the machine's (documented)")
    setup.owner.set_budget("ratings", epsilon=1.0, delta=1e-6, period_days=30)
    real = time.time()
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: real - 40 * DAY)  # this process's clock only
        setup.analyst.reserve("ratings", gauss(5.0))  # ε ≈ 0.83 of the 30-day budget of 1
        # the ledger's clock is the server's, whatever this process believes
        assert abs(setup.analyst.clock() - real) < 600
    stamps = _created(setup.url)
    assert len(stamps) == 1 and abs(stamps[0] - real) < 600  # timed now, not 40 days ago
    with pytest.raises(BudgetExceededError):  # so today's window still holds it
        setup.analyst.reserve("ratings", gauss(5.0))  # both: ε ≈ 1.21 > 1


def test_sqlite_ledgers_keep_the_machines_clock(
    setup: LedgerSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not setup.url.startswith("sqlite"):
        pytest.skip("PostgreSQL ledgers use the server's clock (tested above)")
    monkeypatch.setattr(reading.time, "time", lambda: 1234.5)
    assert setup.analyst.clock() == 1234.5


def test_a_reservation_counts_in_every_window_until_released_then_from_its_release(
    setup: LedgerSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows hold charges by release: a reservation made before a window and committed (or
    replayed by its idempotency key) after it had left used to release its ε in no window."""
    setup.owner.set_budget("ratings", epsilon=1.0, delta=1e-6, period_days=1)
    t0 = time.time()
    clock = [t0]
    monkeypatch.setattr(reading, "ledger_clock", lambda engine: clock[0])
    monkeypatch.setattr(reading, "_server_clock", lambda conn: clock[0])  # inside transactions
    a = setup.analyst
    k1 = a.reserve("ratings", gauss(5.0), idempotency_key="k1")  # ε ≈ 0.83 of 1 per day
    clock[0] = t0 + 2 * DAY  # its day has passed; nothing was released yet
    with pytest.raises(BudgetExceededError):
        a.reserve("ratings", gauss(5.0))  # it may still be released: it counts
    assert a.reserve("ratings", gauss(5.0), idempotency_key="k1").id == k1.id  # the replay
    a.commit(k1)  # released now, two days after its reservation
    with pytest.raises(BudgetExceededError):
        a.reserve("ratings", gauss(5.0))  # today's window holds it
    clock[0] = t0 + 3.5 * DAY  # a day and a half after its release
    a.reserve("ratings", gauss(5.0))
    (status,) = [s for s in a.status("ratings") if s.scope == "dataset"]
    assert status.composed_epsilon == pytest.approx(0.834, abs=0.01)  # only the new one


def test_a_charge_releasing_over_days_counts_until_its_commit_and_a_period_after(
    setup: LedgerSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A federated run releases every round under one charge, marked released at the first: a
    window anchored at that first release let later rounds' releases fall in no window."""
    setup.owner.set_budget("ratings", epsilon=1.0, delta=1e-6, period_days=1)
    t0 = time.time()
    clock = [t0]
    monkeypatch.setattr(reading, "ledger_clock", lambda engine: clock[0])
    monkeypatch.setattr(reading, "_server_clock", lambda conn: clock[0])
    a = setup.analyst
    run = a.reserve("ratings", gauss(5.0))
    a.mark_released(run)  # round 1 went out
    clock[0] = t0 + 3 * DAY  # rounds still going out three days later
    with pytest.raises(BudgetExceededError):
        a.reserve("ratings", gauss(5.0))
    a.commit(run)  # the last round at t0 + 3 days
    clock[0] = t0 + 3.5 * DAY
    with pytest.raises(BudgetExceededError):
        a.reserve("ratings", gauss(5.0))
    clock[0] = t0 + 4.5 * DAY
    a.reserve("ratings", gauss(5.0))
