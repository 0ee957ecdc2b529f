"""A protection tier's ε in a model file is recomputed, never trusted (issue 15, part 3).

The tiers are part of the guarantee a privacy reviewer reads: a file whose tier ε was edited
(or whose tiers disagree with the declared parameters) must be refused on load, by
``privrec privacy verify`` and by ``explain`` — like a faked model ε.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.models.test_model_files import edit_meta, tamper
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.data.synthetic import synthetic
from privrec.errors import GuaranteeMismatchError, ModelFileError
from privrec.models import DPPopularity, load_model
from privrec.privacy.guarantee import PrivacyGuarantee


@pytest.fixture(scope="module")
def tiered_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = synthetic(n_users=400, n_items=60, interactions_per_user=8, seed=5)
    eps = np.random.default_rng(1).choice([0.5, 1.0, 3.0], size=data.n_users)
    m = DPPopularity(epsilon=3.0, delta=1e-5, unit="user", tiers=(0.5, 1.0), seed=0)
    m.fit(data, user_epsilons=eps)
    path = tmp_path_factory.mktemp("tiers") / "tiers.npz"
    m.save(path)
    return path


def test_verify_prints_every_recomputed_tier(tiered_file: Path) -> None:
    # seeded fixture: only the arithmetic is checked here
    res = CliRunner().invoke(app, ["privacy", "verify", "--consistency-only", str(tiered_file)])
    assert res.exit_code == 0, res.output
    for asked in ("0.5", "1", "3"):
        assert f"asked for ε = {asked} " in res.output


def _tier(i: int, **kw: object) -> Callable[[dict[str, Any]], object]:
    def fn(meta: dict[str, Any]) -> object:
        meta["extra"]["guarantee"]["tiers"][i].update(kw)
        return meta

    return fn


def _drop_tier(meta: dict[str, Any]) -> object:
    meta["extra"]["guarantee"]["tiers"] = meta["extra"]["guarantee"]["tiers"][1:]
    return meta


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_tier(0, epsilon=0.1), id="stricter-tier-eps-lowered"),
        pytest.param(_tier(0, epsilon=0.9), id="tier-eps-above-what-was-asked"),
        pytest.param(_tier(0, weight=0.9), id="tier-weight-raised"),
        pytest.param(_tier(0, weight=0.0), id="tier-weight-zero"),
        pytest.param(_tier(1, requested_epsilon=0.8), id="requested-tier-renamed"),
        pytest.param(_tier(2, weight=0.5), id="loosest-tier-not-weight-one"),
        pytest.param(_tier(0, epsilon="0.1"), id="tier-eps-as-text"),  # refused by the schema
        pytest.param(_drop_tier, id="tier-removed"),
    ],
)
def test_an_edited_tier_is_refused(
    tiered_file: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], object]
) -> None:
    bad = tamper(tiered_file, tmp_path / "bad.npz", edit_meta(edit))
    with pytest.raises(ModelFileError):  # GuaranteeMismatchError is one
        load_model(bad)
    for cmd in ("verify", "explain"):
        res = CliRunner().invoke(app, ["privacy", cmd, str(bad)])
        assert res.exit_code == 1 and "Error" in res.output, res.output
        assert "-DP" not in res.output


def test_a_guarantee_with_a_faked_tier_is_never_explained(tiered_file: Path) -> None:
    g = load_model(tiered_file).guarantee_
    d = g.model_dump(mode="json")
    d["tiers"][0]["epsilon"] = d["tiers"][0]["epsilon"] / 2
    fake = PrivacyGuarantee.model_validate(d)
    with pytest.raises(GuaranteeMismatchError, match="protection tier"):
        fake.explain()
    # the untouched guarantee still verifies from scratch
    PrivacyGuarantee.model_validate(g.model_dump(mode="json")).verify()


def test_explain_says_the_headline_epsilon_is_the_loosest_tier(tiered_file: Path) -> None:
    text = load_model(tiered_file).guarantee_.explain()
    first = text.splitlines()[0]
    assert "loosest protection tier" in first and "2 stricter tier(s)" in first


def test_files_from_before_integer_orders(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Until 2026-12-07 RDP guarantees were converted at dp-accounting's denser default orders.
    Central files (Gaussian events: valid at every order) still load — tiers included, which
    were refused — while a distributed model's, whose discrete bound holds only at integer
    orders, is refused with a reason that says so."""
    import dp_accounting

    import privrec.privacy.accounting as accounting
    from privrec.errors import GuaranteeMismatchError
    from privrec.federated.dpals import FederatedDPALS
    from privrec.models import DPPopularity, load_model

    def dense(kind="pld", unit=accounting.PrivacyUnit.USER):  # type: ignore[no-untyped-def]
        if accounting.AccountantKind(kind) is accounting.AccountantKind.PLD:
            return dp_accounting.pld.PLDAccountant(
                neighboring_relation=unit.relation, value_discretization_interval=1e-4
            )
        return dp_accounting.rdp.RdpAccountant(neighboring_relation=unit.relation)

    data = synthetic(n_users=600, n_items=150, seed=1)
    with monkeypatch.context() as m:
        m.setattr(accounting, "make_accountant", dense)
        tiered = DPPopularity(8.0, 1e-6, "user", tiers=(4.0,), accountant="rdp")
        tiered.fit(data, user_epsilons=np.resize([4.0, 8.0], 600)).save(tmp_path / "t.npz")
        fed = FederatedDPALS(8.0, 1e-6, "user", factors=4, iterations=1)
        fed.fit(data).save(tmp_path / "f.npz")
    g = load_model(tmp_path / "t.npz").privacy_guarantee  # loads: the old orders are valid here
    assert g.recompute_epsilon() > g.epsilon  # the integer orders give a little more
    with pytest.raises(GuaranteeMismatchError, match="fractional orders"):
        load_model(tmp_path / "f.npz")


def test_a_lowered_weight_with_its_own_matching_epsilon_is_refused(
    tiered_file: Path, tmp_path: Path
) -> None:
    """Review, 2026-12-07: weight 0.05 and the ε the stored events give at 0.05 (0.11) for the
    0.5 tier passed, and ``explain`` promised 0.11. The weight is fixed by the events and the
    requested ε (the largest that meets it), so any other weight is an alteration."""
    from privrec.privacy.personalized import tier_epsilon

    def lower(meta: dict[str, Any]) -> object:
        g = PrivacyGuarantee.model_validate(meta["extra"]["guarantee"])
        eps = tier_epsilon(g.spent_events, 0.05, g.delta, g.accountant, g.unit)
        meta["extra"]["guarantee"]["tiers"][0].update(weight=0.05, epsilon=eps)
        return meta

    bad = tamper(tiered_file, tmp_path / "bad.npz", edit_meta(lower))
    with pytest.raises(GuaranteeMismatchError, match="weight"):
        load_model(bad)
    res = CliRunner().invoke(app, ["privacy", "explain", str(bad)])
    assert res.exit_code == 1 and "-DP" not in res.output


def test_more_tiers_than_the_cap_are_refused() -> None:
    from privrec.errors import ConfigError
    from privrec.privacy.personalized import MAX_TIERS, resolve_tiers

    assert len(resolve_tiers(3.0, [i / 100 for i in range(1, MAX_TIERS)])) == MAX_TIERS
    with pytest.raises(ConfigError, match="at most"):
        resolve_tiers(3.0, [i / 100 for i in range(1, MAX_TIERS + 1)])
