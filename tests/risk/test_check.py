"""``privrec check``: artifacts re-accounted, seeded releases refused, policy, ledger consistency."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.data import synthetic
from privrec.errors import ConfigError
from privrec.models import EASE, DPPopularity
from privrec.risk import CheckConfig, run_check

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("artifacts")
    data = synthetic(n_users=120, n_items=40, seed=0)
    good = DPPopularity(epsilon=1.0, delta=1e-5, unit="user").fit(data).save(d / "good.npz")
    seeded = _seeded_file(data, d / "seeded.npz", "user")
    big = DPPopularity(epsilon=8.0, delta=1e-5, unit="user").fit(data).save(d / "eps8.npz")
    ease = EASE().fit(data).save(d / "ease.npz")
    # a tampered file: its stated ε no longer matches its events
    tampered = _rewritten(good, d / "tampered.npz", {"epsilon": 0.1})
    return {
        "good": good,
        "seeded": seeded,
        "eps8": big,
        "ease": ease,
        "tampered": tampered,
        "dir": d,
    }


def _seeded_file(data: Any, out: Path, unit: str) -> Path:
    """A DPPopularity file whose noise was drawn from a seed (not a private release)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DPPopularity(epsilon=1.0, delta=1e-5, unit=unit, seed=0).fit(data)
    saved: Path = model.save(out)
    return saved


def _rewritten(
    path: Path, out: Path, guarantee: dict[str, object], params: dict[str, object] | None = None
) -> Path:
    """A copy of a model file with some guarantee (and parameter) fields rewritten."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes().decode())
    meta["extra"]["guarantee"].update(guarantee)
    meta["params"].update(params or {})
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(out, **arrays)
    return out


def _lines(rep):  # type: ignore[no-untyped-def]
    return [f.line() for f in rep.violations]


def test_good_release_passes(files):  # type: ignore[no-untyped-def]
    rep = run_check(CheckConfig(release=[str(files["good"])]))
    assert rep.passed, _lines(rep)
    assert rep.gaps  # no ledger given: reported as a gap, not silently skipped


def test_each_violation_is_one_line(files):  # type: ignore[no-untyped-def]
    rep = run_check(
        CheckConfig(
            artifacts=[str(files["tampered"]), str(files["dir"] / "missing.npz")],
            release=[str(files["seeded"]), str(files["ease"]), str(files["eps8"])],
            policy={"max_epsilon": 4.0},  # type: ignore[arg-type]
        )
    )
    text = "\n".join(_lines(rep))
    # DPPopularity releases a length histogram (its data-adaptive B) and the counts
    assert "tampered.npz: states ε = 0.1 but its 2 events give ε = 1" in text
    assert "seeded.npz: trained with seeded noise" in text
    assert "ease.npz: ease is not a private model but is marked for release" in text
    assert "eps8.npz: ε = 8 exceeds the policy's max_epsilon 4" in text
    assert "missing.npz: file not found" in text
    assert all("\n" not in line for line in _lines(rep))


def test_ledger_consistency(tmp_path: Path, files):  # type: ignore[no-untyped-def]
    from privrec.governance import Ledger
    from privrec.governance.db import dispose_engines
    from privrec.governance.policy import policy_from_dict

    url = f"sqlite:///{tmp_path / 'l.db'}"
    try:
        owner, _ = Ledger.init(url, owner="olga")
        owner.set_policy(
            "ratings",
            policy_from_dict(
                {"purpose": "recs", "unit": "user", "budget": {"epsilon": 5.0, "delta": 1e-5}}
            ),
        )
        analyst = Ledger.connect(url, owner.create_key("ann", "analyst"))
        auditor_key = owner.create_key("dora", "auditor")
        data = analyst.load("ratings", synthetic(n_users=120, n_items=40, seed=0))
        rec = analyst.train(
            DPPopularity(epsilon=1.0, delta=1e-5, unit="user"), data, output=tmp_path / "m.npz"
        )
        ok = run_check(
            CheckConfig(release=[str(rec.path)], ledger={"url": url, "api_key": auditor_key})
        )  # type: ignore[arg-type]
        assert ok.passed, _lines(ok)
        assert any(f.subject == "audit log" and f.level == "ok" for f in ok.findings)
        unknown = run_check(
            CheckConfig(release=[str(files["good"])], ledger={"url": url, "api_key": auditor_key})  # type: ignore[arg-type]
        )
        assert "not a recorded artifact of the ledger" in "\n".join(_lines(unknown))
        pinned = run_check(
            CheckConfig(
                artifacts=[str(rec.path)],
                ledger={"url": url, "api_key": auditor_key, "expect_head": "0" * 64},
            )  # type: ignore[arg-type]
        )
        assert any(f.subject == "audit log" for f in pinned.violations)
        # the ledger alone can be checked (a CI job for the ledger) …
        alone = run_check(CheckConfig(ledger={"url": url, "api_key": auditor_key}))  # type: ignore[arg-type]
        assert alone.passed and any(f.subject == "audit log" for f in alone.findings)
        # … but a pattern that matches nothing is an error, not a vacuous pass
        with pytest.raises(ConfigError, match="match no file"):
            run_check(
                CheckConfig(
                    artifacts=[str(tmp_path / "none-*.npz")],
                    ledger={"url": url, "api_key": auditor_key},
                )  # type: ignore[arg-type]
            )
    finally:
        dispose_engines()


def test_cli_check(files, tmp_path: Path):  # type: ignore[no-untyped-def]
    ok = runner.invoke(app, ["check", "--release", str(files["good"]), "-v"])
    assert ok.exit_code == 0, ok.output
    assert "re-derived" in ok.output
    bad = runner.invoke(
        app, ["check", "--release", str(files["seeded"]), "--json", str(tmp_path / "c.json")]
    )
    assert bad.exit_code == 1 and "FAIL" in bad.output
    assert json.loads((tmp_path / "c.json").read_text())["passed"] is False
    cfg = tmp_path / "check.toml"
    cfg.write_text(f'artifacts = ["{files["dir"]}/*.npz"]\n[policy]\nmax_epsilon = 10.0\n')
    res = runner.invoke(app, ["check", "-c", str(cfg)])
    assert res.exit_code == 1 and "tampered.npz" in res.output
    none = runner.invoke(app, ["check"])
    assert none.exit_code == 1 and "nothing to check" in none.output


def test_a_release_listing_only_the_training_users_fails(files, tmp_path: Path):  # type: ignore[no-untyped-def]
    """User ids with no interactions beside them are still user data the guarantee does not
    cover (privacy verify and serve refuse such a file; check passed it)."""
    data = synthetic(n_users=120, n_items=40, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = (
            DPPopularity(epsilon=1.0, delta=1e-5, unit="user")
            .fit(data)
            .save(tmp_path / "ud.npz", include_user_data=True)
        )
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes().decode())
    n = len(arrays["user_ids"])
    empty = {
        "ui_data": np.zeros(0, np.float32),
        "ui_indices": np.zeros(0, np.int32),
        "ui_indptr": np.zeros(n + 1, np.int64),
    }
    for k, v in empty.items():
        arrays[k] = v
        meta["arrays"][k] = {"dtype": v.dtype.str, "shape": list(v.shape)}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    ids_only = tmp_path / "ids-only.npz"
    np.savez(ids_only, **arrays)
    rep = run_check(CheckConfig(release=[str(ids_only)]))
    assert not rep.passed
    assert any("stores training users" in line for line in _lines(rep)), _lines(rep)


def test_a_relabelled_guarantee_fails_as_the_loader_refuses_it(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A seeded, interaction-level file relabelled as unseeded and user-level re-derives the
    same ε, so re-deriving ε alone passed it — as a release, under a user-level policy — while
    ``load_model`` refuses it. check must read the guarantee the way the loader does."""
    from privrec.errors import GuaranteeMismatchError
    from privrec.models import load_model

    data = synthetic(n_users=120, n_items=40, seed=0)
    path = _seeded_file(data, tmp_path / "seeded-interaction.npz", "interaction")
    relabelled = _rewritten(
        path, tmp_path / "relabelled.npz", {"seeded_noise": False, "unit": "user"}
    )
    with pytest.raises(GuaranteeMismatchError):
        load_model(relabelled)
    rep = run_check(CheckConfig(release=[str(relabelled)], policy={"unit": "user"}))  # type: ignore[arg-type]
    assert not rep.passed
    assert any("fails verification as loaded" in line for line in _lines(rep)), _lines(rep)
    cli = runner.invoke(app, ["check", "--release", str(relabelled)])
    assert cli.exit_code == 1 and "fails verification" in cli.output


def test_an_rdp_file_from_before_integer_orders_passes_as_the_loader_takes_it(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Until 2026-12-07 central RDP models stated ε at dp-accounting's default (fractional)
    orders; the loader accepts such files (denser orders, or within its RDP slack) and so must
    `check` — it used a 1e-6 tolerance against the integer-order ε and failed them."""
    import dp_accounting

    from privrec.models import load_model
    from privrec.privacy.accounting import simplify
    from privrec.privacy.events import total_event

    data = synthetic(n_users=120, n_items=40, seed=0)
    path = (
        DPPopularity(epsilon=3.0, delta=1e-5, unit="user", accountant="rdp")
        .fit(data)
        .save(tmp_path / "rdp.npz")
    )
    g = load_model(path).privacy_guarantee
    acc = dp_accounting.rdp.RdpAccountant()  # the old, denser orders
    acc.compose(simplify(total_event(g.spent_events)))
    dense = float(acc.get_epsilon(g.delta))
    assert dense != pytest.approx(g.epsilon, rel=1e-6)  # the two order sets really differ here
    old = _rewritten(path, tmp_path / "old.npz", {"epsilon": dense}, {"epsilon": max(dense, 3.0)})
    load_model(old)  # the loader accepts it
    rep = run_check(CheckConfig(release=[str(old)]))
    assert rep.passed, _lines(rep)
