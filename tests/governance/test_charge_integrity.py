"""Charges the ledger must refuse or keep: malformed events, poisoned scopes, aborts after a release.

Each test pins a finding of a hostile review (SQLite and PostgreSQL): it failed before the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dp_accounting as dpa
import pytest
import sqlalchemy as sa
from dp_accounting import dp_event

from privrec.errors import (
    BudgetExceededError,
    ConfigError,
    GovernanceError,
    LedgerSchemaError,
    PermissionDeniedError,
)
from privrec.governance import Ledger
from privrec.governance.composition import composed_epsilon
from privrec.governance.db import MIGRATIONS, create_ledger_engine, schema_revision, upgrade
from privrec.governance.training import ChargeSession
from privrec.privacy.accounting import epsilon_of
from privrec.privacy.events import SpentEvent
from privrec.privacy.units import PrivacyUnit

from .conftest import LedgerSetup


def _ev(event: Any) -> list[SpentEvent]:
    return [SpentEvent("x", event)]


def _count(s: LedgerSetup, table: str) -> int:
    with create_ledger_engine(s.url).connect() as c:
        return int(c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


G = dpa.GaussianDpEvent
NAN, INF = math.nan, math.inf

MALFORMED = {
    "NaN Gaussian (ε 0 in dp-accounting)": G(NAN),
    "negative Gaussian": G(-0.05),
    "zero Gaussian": G(0.0),
    "-inf Gaussian": G(-INF),
    "negative count inside a composition": dpa.ComposedDpEvent(
        [G(0.05), dpa.SelfComposedDpEvent(G(0.05), -1), G(50.0)]
    ),
    "negative count": dpa.SelfComposedDpEvent(G(0.05), -3),
    "zero count": dpa.SelfComposedDpEvent(G(0.05), 0),
    "fractional count": dpa.SelfComposedDpEvent(G(0.5), 0.5),  # type: ignore[arg-type]
    "bool count": dpa.SelfComposedDpEvent(G(0.5), True),
    "NaN Laplace": dpa.LaplaceDpEvent(NAN),
    "negative Laplace": dpa.LaplaceDpEvent(-0.01),
    "q = 0": dpa.PoissonSampledDpEvent(0.0, G(0.05)),
    "q = 2": dpa.PoissonSampledDpEvent(2.0, G(0.5)),
    "q = NaN": dpa.PoissonSampledDpEvent(NAN, G(0.05)),
    "q = -1": dpa.PoissonSampledDpEvent(-1.0, G(0.05)),
    "text multiplier": G("1.0"),  # type: ignore[arg-type]
    "sample larger than population": dpa.SampledWithoutReplacementDpEvent(10, 20, G(1.0)),
    "NaN repeat-and-select mean": dp_event.RepeatAndSelectDpEvent(G(1.0), NAN, 1.0),
    "infinite Gaussian, Poisson-sampled (PLD fails)": dpa.PoissonSampledDpEvent(0.1, G(INF)),
    "infinite Gaussian beside a Laplace": dpa.ComposedDpEvent([G(INF), dpa.LaplaceDpEvent(1.0)]),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_events_are_refused_before_any_write(setup: LedgerSetup, name: str) -> None:
    before = (_count(setup, "audit_log"), _count(setup, "charges"))
    with pytest.raises(GovernanceError) as info:
        setup.analyst.reserve("ratings", _ev(MALFORMED[name]))
    assert not isinstance(info.value, BudgetExceededError), info.value
    assert (_count(setup, "audit_log"), _count(setup, "charges")) == before


@pytest.mark.parametrize(
    "events",
    [
        [{"label": "x", "event": {"type": "Evil"}}],
        [{"label": "x", "event": {"type": "GaussianDpEvent", "sigma": 1.0}}],
        [{"label": "x"}],
        ["not an event"],
        [],
    ],
)
def test_malformed_event_dicts_are_one_typed_error(setup: LedgerSetup, events: Any) -> None:
    before = _count(setup, "audit_log")
    with pytest.raises(GovernanceError):
        setup.analyst.reserve("ratings", events)
    assert _count(setup, "audit_log") == before


def test_a_nan_charge_no_longer_makes_every_later_charge_free(setup: LedgerSetup) -> None:
    a = setup.analyst
    a.reserve("ratings", _ev(G(3.0)))  # ε ≈ 1.45 of 2
    with pytest.raises(GovernanceError):
        a.reserve("ratings", _ev(G(NAN)))
    with pytest.raises(BudgetExceededError):
        a.reserve("ratings", _ev(G(1.0)))
    (status,) = a.status("ratings")
    assert status.composed_epsilon == pytest.approx(epsilon_of(G(3.0), 1e-6))


def test_an_infinite_multiplier_is_a_free_no_release_only_where_it_is_a_zero_rate(
    setup: LedgerSetup,
) -> None:
    a = setup.analyst
    for event in (G(INF), dpa.SelfComposedDpEvent(G(INF), 3), dpa.ComposedDpEvent([G(INF)] * 2)):
        assert a.reserve("ratings", _ev(event)).epsilon == 0.0
    a.reserve("ratings", _ev(G(3.0)))
    (status,) = a.status("ratings")
    assert status.composed_epsilon == pytest.approx(epsilon_of(G(3.0), 1e-6))


def test_a_stored_malformed_charge_fails_loudly_instead_of_reading_as_zero(
    setup: LedgerSetup,
) -> None:
    """A ledger written before the check may hold a NaN charge: composing it raises, never 0."""
    a = setup.analyst
    c = a.reserve("ratings", _ev(G(3.0)))
    with create_ledger_engine(setup.url).begin() as conn:
        conn.execute(
            sa.text("UPDATE charges SET events_json = :e, gaussian_rate = NULL WHERE id = :i"),
            {"e": '[{"event":{"noise_multiplier":NaN,"type":"GaussianDpEvent"},"label":"x"}]',
             "i": c.id},
        )  # fmt: skip
    before = _count(setup, "charges")
    with pytest.raises(GovernanceError, match="malformed"):
        a.status("ratings")
    with pytest.raises(GovernanceError) as info:
        a.reserve("ratings", _ev(G(100.0)))
    assert not isinstance(info.value, BudgetExceededError)
    assert _count(setup, "charges") == before


@pytest.mark.parametrize("rate", [NAN, -1.0])
def test_composition_refuses_a_nan_or_negative_rate_sum(rate: float) -> None:
    with pytest.raises(GovernanceError, match="rate sum"):
        composed_epsilon(rate, [], 1e-6, "pld", PrivacyUnit.USER)
    with pytest.raises(GovernanceError, match="rate sum"):
        composed_epsilon(rate, [('[{"event":{"type":"NoOpDpEvent"},"label":"x"}]', 1)],
                         1e-6, "pld", PrivacyUnit.USER)  # fmt: skip


def test_the_accountant_never_reads_a_nan_multiplier_as_zero() -> None:
    for kind in ("pld", "rdp"):
        with pytest.raises(ConfigError):
            epsilon_of(G(NAN), 1e-6, kind)
        with pytest.raises(ConfigError):
            epsilon_of([G(3.0), G(NAN)], 1e-6, kind)


# ----------------------------------------------------------------- released output is spent
def test_a_charge_whose_output_was_released_cannot_be_aborted(setup: LedgerSetup) -> None:
    a = setup.analyst
    with pytest.raises(RuntimeError), ChargeSession(a, "ratings", kind="query") as s:
        s.reserve(_ev(G(3.0)))
        s.released()  # the noisy answer has left the process
        raise RuntimeError("the commit step crashed")
    (c,) = a.history("ratings")
    assert c.status == "reserved" and c.released_at is not None
    before = _count(setup, "audit_log")
    with pytest.raises(GovernanceError, match="released"):
        a.abort(c.id, reason="never happened")
    assert _count(setup, "audit_log") == before
    assert a.history("ratings")[0].status == "reserved"
    assert a.status("ratings")[0].composed_epsilon == pytest.approx(epsilon_of(G(3.0), 1e-6))
    assert a.commit(c.id).status == "committed"  # it can still be committed
    # a reservation that never released anything can still be aborted
    d = a.reserve("ratings", _ev(G(30.0)))
    assert a.abort(d, reason="stopped before any noise").status == "aborted"
    with pytest.raises(GovernanceError, match="aborted"):
        a.mark_released(d)
    assert setup.auditor.verify_audit_log().ok


def test_top_ups_of_a_released_session_are_released_too(setup: LedgerSetup) -> None:
    a = setup.analyst
    with ChargeSession(a, "ratings", kind="query") as s:
        s.reserve(_ev(G(30.0)))
        s.released()
        s.cover(SpentEvent("extra", G(40.0)))  # beyond the reservation: charged on top
        (top,) = s.top_ups
        with pytest.raises(GovernanceError, match="released"):
            a.abort(top, reason="x")
        s.commit()
    assert {c.status for c in a.history("ratings")} == {"committed"}


def test_a_0002_ledger_upgrades_to_0003_and_still_verifies(
    setup: LedgerSetup, tmp_path: Path
) -> None:
    """``charges.released_at`` (0003) on a ledger written at 0002: the log still verifies, old
    charges read as not released, and new releases are recorded."""
    from alembic import command
    from alembic.config import Config

    a = setup.analyst
    old = a.reserve("ratings", _ev(G(30.0)))
    a.commit(a.reserve("ratings", _ev(G(31.0))), result={"a": 1})
    engine = create_ledger_engine(setup.url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect().execution_options(privrec_write=True) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")  # the schema the previous privrec wrote
        conn.commit()
    with engine.connect() as conn:
        assert "released_at" not in {c["name"] for c in sa.inspect(conn).get_columns("charges")}
        assert schema_revision(conn) == "0002"
    with pytest.raises(LedgerSchemaError, match="ledger init"):
        Ledger.connect(setup.url, setup.analyst_key)
    upgrade(engine)
    with engine.connect() as conn:
        assert schema_revision(conn) == "0003"
    auditor = Ledger.connect(setup.url, setup.auditor_key)
    assert auditor.verify_audit_log().ok
    analyst = Ledger.connect(setup.url, setup.analyst_key)
    assert all(c.released_at is None for c in analyst.history("ratings"))
    analyst.mark_released(old)
    with pytest.raises(GovernanceError, match="released"):
        analyst.abort(old, reason="x")
    assert auditor.verify_audit_log().ok


def test_an_artifact_trained_on_other_data_than_the_charges_version_is_refused(
    setup: LedgerSetup, tmp_path: Path
) -> None:
    """Lineage follows the charge's version: a model fitted on the raw file (or another
    version) and committed under a checked charge was recorded as holding only that version's
    members, so deletion tracing missed it (``dataset_hash`` was stored, never compared)."""
    from privrec.data import synthetic
    from privrec.governance.training import artifact_info

    a = setup.analyst
    g = a.load("ratings", synthetic(n_users=200, n_items=40, seed=1))
    model = tmp_path / "model.npz"
    model.write_bytes(b"a released model")

    def art(dataset_hash: str) -> dict[str, Any]:
        return artifact_info(
            model,
            model_kind="dppop",
            config={},
            guarantee={},
            seeded_noise=False,
            dataset_hash=dataset_hash,
        )

    c = a.reserve("ratings", _ev(G(30.0)), data=g)
    before = (_count(setup, "artifacts"), _count(setup, "audit_log"))
    with pytest.raises(GovernanceError, match="trained on data"):
        a.commit(c, artifact=art("0" * 64))
    assert (_count(setup, "artifacts"), _count(setup, "audit_log")) == before
    assert a.history("ratings")[0].status == "reserved"
    assert a.commit(c, artifact=art(g.content_hash)).status == "committed"
    # a charge reserved without a checked version records no dataset (cross-silo) — and
    # its artifact may not claim one: a model fitted on the raw file escaped lineage that way
    d = a.reserve("ratings", _ev(G(30.0)))
    with pytest.raises(GovernanceError, match="without a checked dataset version"):
        a.commit(d, artifact=art(g.content_hash))
    assert a.commit(d, artifact=art("")).status == "committed"


def test_release_model_checks_the_dataset_hash_before_anything_is_released(
    setup: LedgerSetup, tmp_path: Path
) -> None:
    """The commit's refusal came after the file was saved and the charge marked released: an
    unrecorded model on disk and a charge that could no longer be aborted."""
    from privrec.data import synthetic
    from privrec.governance.training import release_model
    from privrec.models.dp_popularity import DPPopularity

    a = setup.analyst
    data = synthetic(n_users=200, n_items=40, seed=1)
    g = a.load("ratings", data)
    model = DPPopularity(epsilon=1.0, delta=1e-6, unit="user").fit(g.interactions)
    out = tmp_path / "model.npz"
    session = ChargeSession(a, "ratings", kind="training", data=g)
    with pytest.raises(GovernanceError, match="not the hash"), session as s:
        s.reserve(model.guarantee_.spent_events)
        release_model(s, model, out, config={}, dataset_hash="0" * 64)
    assert not out.exists()
    (c,) = a.history("ratings")
    assert c.released_at is None  # nothing left the process: the charge can still be aborted
    assert a.abort(c.id, reason="the release was refused").status == "aborted"


def test_an_owner_can_abort_any_analysts_unreleased_reservation(setup: LedgerSetup) -> None:
    """A reservation left by a failed computation holds its ε in every rolling window until
    aborted; if its analyst's key was revoked meanwhile (review, 2026-12-07), only an owner
    can: any analyst's reserved, unreleased charge, logged with the reason and whose it was."""
    a, o = setup.analyst, setup.owner
    stuck = a.reserve("ratings", _ev(G(30.0)))
    released = a.reserve("ratings", _ev(G(30.0)))
    a.mark_released(released)
    assert a.key_id is not None
    o.revoke_key(a.key_id)
    with pytest.raises(GovernanceError):
        a.abort(stuck.id, reason="revoked keys write nothing")
    done = o.abort(stuck.id, reason="the analyst's query died; key revoked")
    assert done.status == "aborted"
    with pytest.raises(GovernanceError, match="released"):
        o.abort(released.id, reason="x")
    last = setup.auditor.audit_log(limit=1)[0]
    assert last["action"] == "charge.abort" and json.loads(last["payload"])["of"] == "ann"
    with pytest.raises(PermissionDeniedError):
        setup.auditor.abort(released.id, reason="auditors change nothing")
    assert setup.auditor.verify_audit_log().ok
