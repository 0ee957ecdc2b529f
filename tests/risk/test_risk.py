"""Risk assessment from a pipeline config: every channel mapped, unmitigated ones flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.errors import ConfigError
from privrec.risk import EXAMPLE, assess, load_pipeline

runner = CliRunner()


def _status(rep, name):  # type: ignore[no-untyped-def]
    return next(c.status for c in rep.channels if c.name == name)


def test_example_has_no_unmitigated_channel():
    rep = assess(load_pipeline(EXAMPLE))
    names = {c.name for c in rep.channels}
    for expected in (
        "training data → model",
        "recommendations → other users",
        "analytics queries",
        "logs",
        "federated updates",
        "what the training server sees",
        "what the scoring server sees",
    ):
        assert expected in names
    assert not rep.unmitigated
    assert _status(rep, "what the training server sees") == "partial"  # a stated trust assumption


def test_non_private_pipeline_is_flagged():
    text = EXAMPLE.replace('model = "dpals"', 'model = "als"').replace(
        'queries = "dp"', 'queries = "raw"'
    )
    text = text.replace('user_ids = "pseudonymised"', 'user_ids = "raw"').replace(
        "enabled = true", "enabled = false"
    )
    rep = assess(load_pipeline(text))
    bad = {c.name for c in rep.unmitigated}
    assert {
        "training data → model",
        "model file contents",
        "recommendations → other users",
        "analytics queries",
        "logs",
        "cumulative loss across releases",
    } <= bad
    md = rep.to_markdown()
    assert "UNMITIGATED" in md and "| logs |" in md
    assert json.loads(rep.to_json())["unmitigated"]


def test_seeded_and_interaction_level_and_federated():
    seeded = assess(load_pipeline(EXAMPLE.replace("seeded_noise = false", "seeded_noise = true")))
    assert _status(seeded, "training data → model") == "unmitigated"
    inter = assess(load_pipeline(EXAMPLE.replace('unit = "user"', 'unit = "interaction"')))
    assert _status(inter, "training data → model") == "partial"
    fed = EXAMPLE.replace('setting = "central"', 'setting = "federated"')
    rep = assess(load_pipeline(fed + "\n[federated]\nsecure_aggregation = false\n"))
    assert _status(rep, "federated updates") == "unmitigated"
    assert "what the training server sees" not in {c.name for c in rep.channels}
    silo = assess(load_pipeline(EXAMPLE.replace('setting = "central"', 'setting = "cross-silo"')))
    assert _status(silo, "what each aggregation server sees") == "partial"


def test_bad_pipelines():
    with pytest.raises(ConfigError, match="training"):
        load_pipeline("[pipeline]\nname = 'x'\n")
    with pytest.raises(ConfigError):
        load_pipeline(EXAMPLE + "\n[oops]\n")
    with pytest.raises(ConfigError, match="scoring"):
        load_pipeline(EXAMPLE.replace('scoring = "server"', 'scoring = "carrier pigeon"'))


def test_cli_risk_strict(tmp_path: Path):
    good = tmp_path / "good.toml"
    good.write_text(EXAMPLE)
    out = runner.invoke(app, ["risk", str(good), "--strict", "--markdown", str(tmp_path / "r.md")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "r.md").read_text().startswith("# Privacy risk assessment")
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.replace('model = "dpals"', 'model = "ease"'))
    assert runner.invoke(app, ["risk", str(bad)]).exit_code == 0
    strict = runner.invoke(app, ["risk", str(bad), "--strict", "--json", str(tmp_path / "r.json")])
    assert strict.exit_code == 1 and "unmitigated: training data → model" in strict.output
    assert runner.invoke(app, ["risk", "--example"]).exit_code == 0


def test_invalid_or_weak_budgets_are_not_mitigated():
    bad = [
        EXAMPLE.replace("epsilon = 1.0", "epsilon = -1.0", 1),
        EXAMPLE.replace("epsilon = 1.0", "epsilon = nan", 1),
        EXAMPLE.replace("delta = 1e-6", "delta = 1.5", 1),
    ]
    for text in bad:
        with pytest.raises(ConfigError):
            load_pipeline(text)
    weak = assess(load_pipeline(EXAMPLE.replace("epsilon = 1.0", "epsilon = 1e9", 1)))
    assert _status(weak, "training data → model") == "partial"
    no_delta = assess(load_pipeline(EXAMPLE.replace("delta = 1e-6\n", "", 1)))
    assert _status(no_delta, "training data → model") == "partial"
