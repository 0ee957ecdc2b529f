"""``privrec audit``: the one-run audit as a CI gate, the multi-run audit and the MIA from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from privrec.cli.main import app

runner = CliRunner()


def test_audit_run_reports_and_gates(tmp_path: Path):
    args = ["audit", "run", "-m", "dppopularity", "--epsilon", "1", "--synthetic", "200x80"]
    args += ["-p", "max_per_user=5", "--canaries", "200", "--json", str(tmp_path / "a.json")]
    args += ["--markdown", str(tmp_path / "a.md"), "--fail-on-flag"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["one_run"][0]["flagged"] is False and len(doc["one_run"][0]["audits"]) == 2
    assert doc["one_run"][0]["conclusive"] is True and doc["one_run"][0]["verdict"] == "ok"
    assert "| dppopularity | 1 | tight |" in (tmp_path / "a.md").read_text()


def test_audit_run_fails_the_gate_when_flagged(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        "privrec.models.dp_popularity.gaussian", lambda v, z, s, rng: v.astype(float) + 0.0
    )
    args = ["audit", "run", "-m", "dppopularity", "--epsilon", "1", "--synthetic", "200x80"]
    res = runner.invoke(app, [*args, "-p", "max_per_user=5", "--canaries", "200", "--fail-on-flag"])
    assert res.exit_code == 1 and "FLAGGED" in res.output


def test_an_audit_that_cannot_flag_the_claim_does_not_pass_the_gate():
    """10 canaries can never show ε_LB ≥ 4: "ok" would mean nothing, so the gate fails."""
    args = ["audit", "run", "-m", "dppopularity", "--epsilon", "4", "--synthetic", "200x80"]
    res = runner.invoke(app, [*args, "-p", "max_per_user=5", "--canaries", "10", "--fail-on-flag"])
    assert res.exit_code == 1 and "cannot detect a violation" in res.output
    res = runner.invoke(app, [*args, "--canaries", "200", "--confidence", "0.1"])
    assert res.exit_code == 1 and "confidence" in res.output


def test_audit_multi_run_and_mia(tmp_path: Path):
    res = runner.invoke(
        app,
        [
            "audit",
            "multi-run",
            "-m",
            "dppopularity",
            "--epsilon",
            "2",
            "--synthetic",
            "40x20",
            "--runs",
            "40",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "multi-run ε_LB" in res.output
    mia = runner.invoke(
        app,
        [
            "audit",
            "mia",
            "-m",
            "ease",
            "-m",
            "dppopularity",
            "--epsilon",
            "1",
            "--synthetic",
            "300x100",
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert mia.exit_code == 0, mia.output
    assert [r["model"] for r in json.loads((tmp_path / "m.json").read_text())["mia"]] == [
        "ease",
        "dppopularity",
    ]


def test_audit_errors():
    res = runner.invoke(
        app, ["audit", "run", "-m", "als", "--epsilon", "1", "--synthetic", "50x20"]
    )
    assert res.exit_code == 1 and "no audit for model" in res.output
    res = runner.invoke(app, ["audit", "run", "-m", "dpals", "--epsilon", "1"])
    assert res.exit_code == 1 and "exactly one of --data and --synthetic" in res.output
    res = runner.invoke(app, ["audit", "mia", "-m", "dpals", "--synthetic", "50x20"])
    assert res.exit_code == 1 and "give --epsilon" in res.output


def test_uncapped_bug_fails_the_gate_at_default_settings(monkeypatch):  # type: ignore[no-untyped-def]
    """The CI gate with DPPopularity left at its data-adaptive B: canaries outnumbering the real
    users used to move B up to the heavy length and hide a missing cap (exit 0)."""
    from tests.audit.bugs import plant_bug

    plant_bug(monkeypatch, "dppopularity", "uncapped")
    args = ["audit", "run", "-m", "dppopularity", "--epsilon", "1", "--synthetic", "150x200"]
    res = runner.invoke(app, [*args, "--canaries", "500", "--fail-on-flag"])
    assert res.exit_code == 1 and "FLAGGED" in res.output, res.output
    assert "max_per_user=10 " in res.output  # the pinned bound is stated


def test_interaction_unit_gate_passes_a_correct_model():
    """One neighbour is one interaction: no 32-interaction canary flags a correct model."""
    args = ["audit", "run", "-m", "dppopularity", "--epsilon", "1", "--synthetic", "300x200"]
    res = runner.invoke(
        app, [*args, "--unit", "interaction", "--canaries", "500", "--fail-on-flag"]
    )
    assert res.exit_code == 0 and "heavy" not in res.output, res.output
    res = runner.invoke(app, [*args, "--unit", "interaction", "--design", "heavy"])
    assert res.exit_code == 1 and "interaction unit" in res.output
