"""The hostile review of ``privrec risk``: each reproducer, refused or assessed honestly.

1. inconsistent input is refused (naming the key) and the report never contradicts itself;
2. the monitored quality of a model is DP only if the model is DP or trained on other users;
3. output paths are checked before anything is written, and files are written atomically;
4. names cannot break the Markdown tables or headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.errors import ConfigError
from privrec.risk import EXAMPLE, Channel, RiskReport, assess, load_pipeline
from privrec.risk.pipeline import MODELS

runner = CliRunner()

CUMULATIVE = "cumulative loss across releases"
MONITORING = "monitoring / drift statistics"


def _channel(rep: RiskReport, name: str) -> Channel:
    return next(c for c in rep.channels if c.name == name)


def _assess(text: str) -> RiskReport:
    return assess(load_pipeline(text))


# ------------------------------------------------------------------ 1. consistency
def test_uncharged_analytics_makes_cumulative_loss_partial_not_mitigated():
    """Reproducer: [analytics] ledger = false with [ledger] enabled = true said "every release
    is charged" next to "not charged to a ledger"."""
    text = EXAMPLE.replace("ledger = true\n\n[logs]", "ledger = false\n\n[logs]")
    assert text != EXAMPLE
    rep = _assess(text)
    assert _channel(rep, "analytics queries").status == "partial"
    cum = _channel(rep, CUMULATIVE)
    assert cum.status == "partial", cum
    assert "every release is charged" not in cum.mitigation
    assert "DP analytics queries" in cum.mitigation and cum.advice


def test_uncharged_monitoring_makes_cumulative_loss_partial():
    text = EXAMPLE.replace("ledger = true                # windows", "ledger = false  # windows")
    assert text != EXAMPLE
    cum = _channel(_assess(text), CUMULATIVE)
    assert cum.status == "partial" and "DP monitoring windows" in cum.mitigation
    # the sound example: every releasing component is charged, and the report says which
    ok = _channel(_assess(EXAMPLE), CUMULATIVE)
    assert ok.status == "mitigated"
    assert "DP analytics queries" in ok.mitigation and "DP monitoring windows" in ok.mitigation


def test_raw_releases_are_named_as_uncharged():
    text = EXAMPLE.replace('queries = "dp"', 'queries = "raw"').replace(
        "ledger = true\n\n[logs]", "ledger = false\n\n[logs]"
    )
    cum = _channel(_assess(text), CUMULATIVE)
    assert cum.status == "partial" and "raw analytics queries" in cum.mitigation


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("retention_days = 365", "retention_days = -1", "data.retention_days"),
        ("retention_days = 365", "retention_days = nan", "data.retention_days"),
        ("retention_days = 30", "retention_days = -5", "logs.retention_days"),
        ("retention_days = 30", "retention_days = nan", "logs.retention_days"),
        ("epsilon = 1.0", "epsilon = true", "training.epsilon"),
        ("delta = 1e-6", "delta = true", "training.delta"),
        ("retention_days = 30", "retention_days = true", "logs.retention_days"),
        ("seeded_noise = false", "seeded_noise = 0", "training.seeded_noise"),
        ("ledger = true\n\n[logs]", 'ledger = "yes"\n\n[logs]', "analytics.ledger"),
        ('model = "dpals"', 'model = "dpalss"', "training.model"),
    ],
)
def test_invalid_values_are_refused_naming_the_key(old: str, new: str, key: str):
    text = EXAMPLE.replace(old, new, 1)
    assert text != EXAMPLE
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_pipeline(text)


def test_unknown_model_is_an_error_not_a_verdict():
    with pytest.raises(ConfigError, match=r"unknown model 'dpalss'.*dpals"):
        load_pipeline(EXAMPLE.replace('model = "dpals"', 'model = "dpalss"'))


def test_infinite_data_retention_is_no_limit_and_stays_a_risk():
    """Reproducer: retention_days = -1 or inf made the retention channel disappear."""
    rep = _assess(EXAMPLE.replace("retention_days = 365", "retention_days = inf"))
    c = _channel(rep, "raw data retention")
    assert c.status == "partial" and "no retention limit" in c.mitigation and c.advice
    unstated = _assess(EXAMPLE.replace("retention_days = 365  ", "# "))
    assert _channel(unstated, "raw data retention").status == "partial"
    stated = _channel(_assess(EXAMPLE), "raw data retention")  # listed when limited, too
    assert stated.status == "mitigated" and "365 days" in stated.mitigation


def test_infinite_log_retention_is_no_limit():
    """Reproducer: logs.retention_days = inf got "partial" like a real limit, "inf days"."""
    rep = _assess(EXAMPLE.replace("retention_days = 30", "retention_days = inf"))
    logs = _channel(rep, "logs")
    assert logs.status == "unmitigated", logs
    assert "inf days" not in logs.mitigation and "no limit" in logs.mitigation
    assert _channel(_assess(EXAMPLE), "logs").status == "partial"  # pseudonymised, 30 days


def test_settings_of_a_section_that_does_not_apply_are_refused():
    """Reproducer: setting = "central" with [federated] clipping = false was ignored."""
    text = EXAMPLE + "\n[federated]\nclipping = false\nsecure_aggregation = false\n"
    with pytest.raises(ConfigError, match=r"federated\.clipping.*'central'"):
        load_pipeline(text)
    with pytest.raises(ConfigError, match=r"cross_silo\.servers"):
        load_pipeline(EXAMPLE + "\n[cross_silo]\nservers = 3\n")
    with pytest.raises(ConfigError, match=r"\[federated\]"):
        load_pipeline(EXAMPLE + "\n[federated]\n")


def test_central_model_in_a_federated_setting_is_refused():
    """Reproducer: setting = "federated" with model = "dpals" gave "federated updates:
    mitigated" for updates that no device sends."""
    text = EXAMPLE.replace('setting = "central"', 'setting = "federated"')
    with pytest.raises(ConfigError, match=r"training\.model: dpals .*'central'.*federated_mf"):
        load_pipeline(text)
    with pytest.raises(ConfigError, match=r"training\.model"):
        load_pipeline(EXAMPLE.replace('model = "dpals"', 'model = "federated_mf"'))
    with pytest.raises(ConfigError, match=r"training\.model"):
        load_pipeline(EXAMPLE.replace('setting = "central"', 'setting = "cross-silo"'))
    with pytest.raises(ConfigError, match=r"cross_silo\.servers"):
        load_pipeline(
            {
                "training": {"model": "silo_dpals", "setting": "cross-silo"},
                "cross_silo": {"servers": -3},
            }
        )


def test_model_names_are_case_insensitive():
    """Reproducer: model = "DPALS" was called "not differentially private"."""
    upper = _assess(EXAMPLE.replace('model = "dpals"', 'model = "DPALS"'))
    lower = _assess(EXAMPLE)
    assert upper.to_dict() == lower.to_dict()
    assert _channel(upper, "training data → model").status == "mitigated"
    fed = load_pipeline({"training": {"model": "FederatedMF", "setting": "federated"}})
    assert fed.training.model == "federated_mf"


def test_every_registered_model_is_known_with_its_privacy():
    from privrec.models.private import PrivateRecommender
    from privrec.models.registry import available_models, model_class

    for name in available_models():
        cls = model_class(name)
        assert cls is not None and name in MODELS, name
        assert MODELS[name].private == issubclass(cls, PrivateRecommender), name


def test_charges_to_a_missing_ledger_and_quality_without_monitoring_are_refused():
    with pytest.raises(ConfigError, match=r"analytics\.ledger.*ledger\.enabled = false"):
        load_pipeline(EXAMPLE.replace("[ledger]\nenabled = true", "[ledger]\nenabled = false"))
    with pytest.raises(ConfigError, match=r"analytics\.ledger.*'none'"):
        load_pipeline({"training": {"model": "dpals"}, "analytics": {"ledger": True}})
    with pytest.raises(ConfigError, match=r"monitoring\.ledger.*'raw'"):
        load_pipeline(
            {
                "training": {"model": "dpals"},
                "monitoring": {"kind": "raw", "ledger": True},
                "ledger": {"enabled": True},
            }
        )
    with pytest.raises(ConfigError, match=r"monitoring\.quality"):
        load_pipeline({"training": {"model": "dpals"}, "monitoring": {"quality": True}})
    with pytest.raises(ConfigError, match=r"monitoring\.quality_training_users"):
        load_pipeline(
            {
                "training": {"model": "dpals"},
                "monitoring": {"kind": "dp", "quality_training_users": "disjoint"},
            }
        )


def test_non_private_model_with_a_stated_epsilon_says_it_does_not_apply():
    rep = _assess(EXAMPLE.replace('model = "dpals"', 'model = "als"'))
    c = _channel(rep, "training data → model")
    assert c.status == "unmitigated" and "ε = 1 does not apply" in c.mitigation


def test_bad_sources_are_typed_errors(tmp_path: Path):
    for bad in ([1, 2], None, 5):
        with pytest.raises(ConfigError, match="TOML file, TOML text or a dict"):
            load_pipeline(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="folder"):
        load_pipeline(tmp_path)


# ------------------------------------------------------------------ 2. monitoring
def _monitored(model: str, **training: object) -> dict[str, object]:
    return {
        "training": {"model": model, "epsilon": 1.0, "delta": 1e-6, "unit": "user", **training},
        "monitoring": {"kind": "dp", "quality": True},
    }


def test_monitoring_a_non_private_models_quality_is_not_mitigated():
    """Reproducer: DP monitoring was "mitigated" whatever model's quality it tracks."""
    rep = assess(load_pipeline(_monitored("als")))
    mon = _channel(rep, MONITORING)
    assert mon.status == "unmitigated", mon
    assert "no valid sensitivity" in mon.mitigation
    assert "disjoint" in mon.advice
    # the same for a private model whose stated ε does not hold (seeded noise, no ε)
    seeded = assess(load_pipeline(_monitored("dpals", seeded_noise=True)))
    assert _channel(seeded, MONITORING).status == "unmitigated"
    no_eps = assess(
        load_pipeline(
            {"training": {"model": "dpals"}, "monitoring": {"kind": "dp", "quality": True}}
        )
    )
    assert _channel(no_eps, MONITORING).status == "unmitigated"
    # and the same model in the EXAMPLE (quality = true) flips the channel
    als = _assess(EXAMPLE.replace('model = "dpals"', 'model = "als"'))
    assert _channel(als, MONITORING).status == "unmitigated"
    assert "monitored quality" in _channel(als, CUMULATIVE).mitigation


def test_monitoring_quality_is_mitigated_for_a_dp_or_disjoint_model():
    dp = _channel(assess(load_pipeline(_monitored("dpals"))), MONITORING)
    assert dp.status == "mitigated" and "adaptive composition" in dp.mitigation
    disjoint = _monitored("als")
    disjoint["monitoring"] = {"kind": "dp", "quality": True, "quality_training_users": "disjoint"}
    mon = _channel(assess(load_pipeline(disjoint)), MONITORING)
    assert mon.status == "mitigated" and "disjoint" in mon.mitigation
    # no quality tracked: the histograms alone, whatever the model
    plain = load_pipeline({"training": {"model": "als"}, "monitoring": {"kind": "dp"}})
    assert _channel(assess(plain), MONITORING).status == "mitigated"


def test_monitored_quality_is_capped_by_a_weak_model_guarantee():
    rep = assess(load_pipeline(_monitored("dpals", epsilon=500.0)))
    mon = _channel(rep, MONITORING)
    assert mon.status == "partial" and "ε = 500 is above 10" in mon.mitigation


# ------------------------------------------------------------------ 3. output files
@pytest.fixture
def pipe(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.toml"
    path.write_text(EXAMPLE)
    return path


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_unwritable_json_path_writes_nothing(pipe: Path, tmp_path: Path):
    """Reproducer: --markdown risk.md --json /nonexistent_dir/r.json wrote risk.md, then failed
    with a bare FileNotFoundError."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    md = tmp_path / "risk.md"
    out = runner.invoke(
        app, ["risk", str(pipe), "--markdown", str(md), "--json", str(blocker / "r.json")]
    )
    assert out.exit_code == 1
    assert "OutputPathError" in out.output and "Traceback" not in out.output
    assert not md.exists()
    assert _entries(tmp_path) == {"pipe.toml", "a_file"}


def test_folder_as_output_is_refused(pipe: Path, tmp_path: Path):
    """Reproducer: --markdown /tmp gave IsADirectoryError."""
    out = runner.invoke(app, ["risk", str(pipe), "--markdown", str(tmp_path)])
    assert out.exit_code == 1 and "is a folder" in out.output
    assert "IsADirectoryError" not in out.output
    out = runner.invoke(app, ["risk", str(pipe), "--json", str(tmp_path)])
    assert out.exit_code == 1 and "is a folder" in out.output


def test_same_file_twice_or_over_the_input_is_refused(pipe: Path, tmp_path: Path):
    both = tmp_path / "r.txt"
    out = runner.invoke(app, ["risk", str(pipe), "--markdown", str(both), "--json", str(both)])
    assert out.exit_code == 1 and not both.exists()
    out = runner.invoke(app, ["risk", str(pipe), "--markdown", str(pipe)])
    assert out.exit_code == 1 and pipe.read_text() == EXAMPLE


def test_missing_parent_folder_is_created(pipe: Path, tmp_path: Path):
    md, js = tmp_path / "new" / "risk.md", tmp_path / "new" / "deeper" / "r.json"
    out = runner.invoke(app, ["risk", str(pipe), "--markdown", str(md), "--json", str(js)])
    assert out.exit_code == 0, out.output
    assert md.read_text(encoding="utf-8").startswith("# Privacy risk assessment")
    assert js.read_text(encoding="utf-8").startswith("{")
    assert _entries(md.parent) == {"risk.md", "deeper"}  # no temporary file left behind


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(
    pipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    md, js = tmp_path / "risk.md", tmp_path / "r.json"
    md.write_text("old report")
    real = Path.write_text

    def full_disk(self: Path, *args: object, **kwargs: object) -> int:
        if "r.json" in self.name:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_disk)
    out = runner.invoke(app, ["risk", str(pipe), "--markdown", str(md), "--json", str(js)])
    monkeypatch.undo()
    assert out.exit_code == 1 and "No space left" in out.output
    assert md.read_text() == "old report" and not js.exists()
    assert _entries(tmp_path) == {"pipe.toml", "risk.md"}


def test_check_json_path_is_checked_before_the_checks_run(tmp_path: Path):
    out = runner.invoke(app, ["check", "--json", str(tmp_path)])
    assert out.exit_code == 1 and "is a folder" in out.output


# ------------------------------------------------------------------ 4. Markdown
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def test_names_cannot_break_the_markdown():
    """Reproducer: a name with `|` or a newline broke the tables and headings."""
    text = EXAMPLE.replace(
        'name = "movie recommendations"', 'name = "a | b\\n# injected\\r\\n| x | y |"'
    ).replace('types = ["ratings", "timestamps", "user ids"]', 'types = ["x | y | z", "<b>w"]')
    rep = _assess(text)
    md = rep.to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("# Privacy risk assessment: a \\| b # injected")
    assert sum(line.startswith("#") for line in lines) == 1
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 2 + len(rep.channels)
    for row in rows:  # every row has exactly the six cells of the header
        assert len(_UNESCAPED_PIPE.findall(row)) == 7, row
    assert "x \\| y \\| z" in md and "<b>" not in md
    assert rep.to_dict()["pipeline"] == "a | b\n# injected\r\n| x | y |"  # JSON: unchanged


def test_names_cannot_become_links_or_unescape_a_pipe():
    """A name ``[x](https://…)`` rendered as a link, and a trailing backslash turned the
    escaped ``\\|`` after it back into a cell boundary."""
    text = EXAMPLE.replace(
        'types = ["ratings", "timestamps", "user ids"]', 'types = ["[x](h)", "a\\\\"]'
    )
    md = _assess(text).to_markdown()
    assert "\\[x\\](h)" in md and "[x](h)" not in md.replace("\\[x\\]", "")
    assert "a\\\\" in md
    for row in (line for line in md.splitlines() if line.startswith("|")):
        assert len(_UNESCAPED_PIPE.findall(row)) == 7, row


def test_deeply_nested_or_unreadable_toml_is_a_config_error(tmp_path: Path) -> None:
    """A reviewer's ``types = [[[…]]]`` 3000 deep crashed ``privrec risk`` with a RecursionError
    traceback (tomllib recurses per level), and a 5000-character name an OSError: both are
    ConfigErrors, in the pipeline, the check config and the experiment loaders."""
    from privrec.experiments import load_experiment
    from privrec.risk import load_check_config

    deep = "[training]\nmodel = 'dpals'\n[data]\ntypes = " + "[" * 3000 + "]" * 3000 + "\n"
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_pipeline(deep)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_experiment(deep)
    (tmp_path / "check.toml").write_text(deep)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_check_config(tmp_path / "check.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_pipeline("x" * 5000)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_experiment("x" * 5000)


def test_free_text_names_cannot_become_emphasis_or_code():
    """A pipeline named ``**ALL MITIGATED**`` rendered bold (and ``_x_``, ``~~x~~``, backticks
    as emphasis, strike-through, code): the pipeline's name and data types stay text."""
    text = EXAMPLE.replace(
        'name = "movie recommendations"', 'name = "**ALL MITIGATED** `c` ~~s~~"'
    ).replace('types = ["ratings", "timestamps", "user ids"]', 'types = ["_it_"]')
    md = _assess(text).to_markdown()
    assert md.splitlines()[0].endswith("\\*\\*ALL MITIGATED\\*\\* \\`c\\` \\~\\~s\\~\\~")
    assert "\\_it\\_" in md and "_it_" not in md.replace("\\_it\\_", "")
    assert "`privrec" in md  # the report's own code spans are kept
