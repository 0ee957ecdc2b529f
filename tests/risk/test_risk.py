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
    # nothing can be charged to a disabled ledger (refused otherwise)
    text = text.replace("ledger = true", "ledger = false")
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
    fed = EXAMPLE.replace('setting = "central"', 'setting = "federated"').replace(
        'model = "dpals"', 'model = "federated_mf"'
    )
    rep = assess(load_pipeline(fed + "\n[federated]\nsecure_aggregation = false\n"))
    assert _status(rep, "federated updates") == "unmitigated"
    assert "what the training server sees" not in {c.name for c in rep.channels}
    silo_text = EXAMPLE.replace('setting = "central"', 'setting = "cross-silo"')
    silo = assess(load_pipeline(silo_text.replace('model = "dpals"', 'model = "silo_dpals"')))
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


# the channels the model's DP guarantee covers: none may be better protected than the model
_COVERED = (
    "model file contents",
    "recommendations → other users",
    "cumulative loss across releases",
    "federated updates",
    "what the federated server sees",
    "monitoring / drift statistics",  # when it releases the quality of the model: _covered
)
_RANK = {"unmitigated": 0, "partial": 1, "mitigated": 2}


def _channel(rep, name):  # type: ignore[no-untyped-def]
    return next(c for c in rep.channels if c.name == name)


def _covered(c) -> bool:  # type: ignore[no-untyped-def]
    if c.name == "monitoring / drift statistics":  # only its quality release depends on the model
        return "quality" in c.data
    return c.name in _COVERED and c.status != "n/a"


def _assert_bounded(rep) -> None:  # type: ignore[no-untyped-def]
    model = _channel(rep, "training data → model")
    for c in rep.channels:
        if _covered(c):
            assert _RANK[c.status] <= _RANK[model.status], (c, model)


def test_weak_budget_caps_every_channel_downstream_of_the_model():
    """r2: ε = 500, δ = 0.5 made the model 'partial' but its lists 'mitigated'."""
    rep = assess(
        load_pipeline(
            {
                "training": {"model": "dpals", "epsilon": 500.0, "delta": 0.5, "unit": "user"},
                "ledger": {"enabled": True},
            }
        )
    )
    assert _status(rep, "training data → model") == "partial"
    for name in (
        "recommendations → other users",
        "model file contents",
        "cumulative loss across releases",
    ):
        c = _channel(rep, name)
        assert c.status == "partial", c
        assert "ε = 500 is above 10" in c.mitigation and "δ = 0.5" in c.mitigation
        assert "lower ε" in c.advice
    _assert_bounded(rep)


def test_interaction_unit_does_not_protect_lists_of_whole_histories():
    """r1: interaction-level DP left 'recommendations → other users' mitigated."""
    rep = assess(
        load_pipeline(
            {
                "training": {
                    "model": "dpals",
                    "epsilon": 1.0,
                    "delta": 1e-6,
                    "unit": "interaction",
                },
                "ledger": {"enabled": True},
            }
        )
    )
    others = _channel(rep, "recommendations → other users")
    assert others.status == "partial"
    assert "not a user's whole history" in others.mitigation and others.advice == "use unit = user"
    assert (
        _status(rep, "cumulative loss across releases") == "partial"
    )  # charged, but per interaction
    _assert_bounded(rep)


def test_federated_server_is_not_protected_by_noise_nobody_adds():
    """r3: federated_mf with no ε and no clipping said 'noise added on devices' (mitigated)."""
    rep = assess(
        load_pipeline(
            {
                "training": {"model": "federated_mf", "setting": "federated"},
                "federated": {
                    "secure_aggregation": True,
                    "aggregation": "distributed",
                    "clipping": False,
                },
            }
        )
    )
    model = _channel(rep, "training data → model")
    assert model.status == "unmitigated"
    assert "no ε is stated" in model.mitigation and "not clipped" in model.mitigation
    server = _channel(rep, "what the federated server sees")
    assert server.status == "unmitigated"
    assert "noise added on devices" not in server.mitigation and "no DP noise" in server.mitigation
    assert _status(rep, "federated updates") == "unmitigated"
    _assert_bounded(rep)
    # clipping off alone voids a stated ε: nothing bounds one device's contribution
    clip_off = assess(
        load_pipeline(
            {
                "training": {
                    "model": "federated_mf",
                    "setting": "federated",
                    "epsilon": 1.0,
                    "delta": 1e-6,
                    "unit": "user",
                },
                "federated": {"clipping": False},
            }
        )
    )
    assert _status(clip_off, "training data → model") == "unmitigated"
    assert _status(clip_off, "what the federated server sees") == "unmitigated"
    _assert_bounded(clip_off)


def test_unstated_unit_is_not_assumed_user_level():
    """r4: no unit was read as user-level and reported 'mitigated'."""
    rep = assess(load_pipeline({"training": {"model": "dpals", "epsilon": 1.0, "delta": 1e-6}}))
    model = _channel(rep, "training data → model")
    assert model.status == "partial" and "unit is not stated" in model.mitigation
    assert "training.unit" in model.advice
    assert _status(rep, "recommendations → other users") == "partial"
    assert _status(rep, "model file contents") == "partial"
    _assert_bounded(rep)


def test_sound_user_level_federated_pipeline_stays_mitigated():
    """The cap must not cost a sound configuration anything."""
    text = EXAMPLE.replace('setting = "central"', 'setting = "federated"')
    rep = assess(load_pipeline(text.replace('model = "dpals"', 'model = "federated_mf"')))
    for name in ("training data → model", "recommendations → other users", *_COVERED):
        assert _status(rep, name) == "mitigated", name


def test_no_report_contradicts_itself():
    """Over a grid of configurations, no channel the model's guarantee covers is reported
    better protected than the model, and every capped channel says why."""
    import itertools

    # every model with the settings it belongs to ([federated] only where it applies)
    grid = itertools.product(
        (("dpals", "central"), ("als", "central"), ("federated_mf", "federated")),
        (None, 1.0, 500.0),
        (None, 1e-6, 0.5),
        (None, "user", "interaction"),
        (False, True),  # seeded noise
        (False, True),  # clipping
        (False, True),  # secure aggregation
        ("distributed", "central"),
        (False, True),  # ledger
        (False, True),  # monitored quality (of the pipeline's model, on its training users)
    )
    n = 0
    for (model, setting), eps, delta, unit, seeded, clip, secagg, agg, ledger, quality in grid:
        training = {"model": model, "setting": setting, "seeded_noise": seeded}
        training |= {k: v for k, v in (("epsilon", eps), ("delta", delta), ("unit", unit)) if v}
        pipe: dict[str, object] = {
            "training": training,
            "ledger": {"enabled": ledger},
            "monitoring": {"kind": "dp", "ledger": ledger, "quality": quality},
        }
        if setting == "federated":
            pipe["federated"] = {
                "clipping": clip,
                "secure_aggregation": secagg,
                "aggregation": agg,
            }
        rep = assess(load_pipeline(pipe))
        _assert_bounded(rep)
        model_ch = _channel(rep, "training data → model")
        if model_ch.status != "mitigated":
            assert model_ch.advice, model_ch
            for c in rep.channels:
                if _covered(c):
                    assert c.status != "mitigated"
        n += 1
    assert n == 3 * 3 * 3 * 3 * 2 * 2 * 2 * 2 * 2 * 2


def test_machine_readable_output_is_not_wrapped_on_a_narrow_terminal(tmp_path: Path):
    """`privrec risk --example > pipeline.toml` must parse, and every row of the assessment's
    Markdown tables must stay on one line, however narrow the terminal (rich wraps at $COLUMNS
    when stdout is not a terminal)."""
    import tomllib

    narrow = {"COLUMNS": "40"}
    example = runner.invoke(app, ["risk", "--example"], env=narrow)
    assert example.exit_code == 0, example.output
    assert tomllib.loads(example.stdout) == tomllib.loads(EXAMPLE)
    cfg = tmp_path / "pipeline.toml"
    cfg.write_text(example.stdout)
    out = runner.invoke(app, ["risk", str(cfg), "--strict"], env=narrow)
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == assess(load_pipeline(cfg)).to_markdown().strip()
    rows = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert rows and all(line.endswith("|") for line in rows)
    assert any(len(line) > 40 for line in rows)  # the width really was too narrow for them
