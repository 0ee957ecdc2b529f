"""Privacy-variant experiments: config validation, paired statistics, the runner, the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.errors import ConfigError
from privrec.experiments import (
    load_experiment,
    paired_comparison,
    power,
    run_experiment,
    users_needed,
    write_report,
)

TOML = """
[data]
synthetic = "400x120"
[experiment]
k = [10]
repeats = 2
bootstrap = 200
detect = 0.02
[[variant]]
name = "eps1"
model = "dppopularity"
params = { epsilon = 1.0, delta = 1e-5, unit = "user" }
[[variant]]
name = "eps8"
model = "dppopularity"
params = { epsilon = 8.0, delta = 1e-5, unit = "user" }
"""


def test_config_validation():
    cfg = load_experiment(TOML)
    assert cfg.baseline == "eps1" and cfg.experiment.repeats == 2
    bad = [
        TOML.replace('synthetic = "400x120"', ""),  # no data source
        TOML.replace('name = "eps8"', 'name = "eps1"'),  # duplicate names
        TOML.replace("repeats = 2", "repeats = 0"),
        TOML.replace("repeats = 2", "repeats = 1"),  # one draw: intervals blind to the noise
        TOML.replace("k = [10]", "k = []"),
        TOML.replace("k = [10]", "k = [-5]"),
        TOML + "\n[surprise]\nx = 1\n",
        "not = [valid",
    ]
    for text in bad:
        with pytest.raises(ConfigError):
            load_experiment(text)
    with pytest.raises(ConfigError):
        load_experiment(Path("/no/such/file.toml"))


def test_paired_comparison_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.random((3, 500))
    same = paired_comparison(base + rng.normal(0, 0.01, base.shape), base, n_boot=300)
    assert same.ci_low < 0 < same.ci_high or abs(same.mean_diff) < 2e-3
    shifted = paired_comparison(base + 0.05, base, n_boot=300)
    assert shifted.ci_low > 0.04 and shifted.p_value < 1e-6 and shifted.p_bootstrap == 0
    with pytest.raises(ConfigError):
        paired_comparison(base, base[:, :10])


def test_power_and_sample_size_agree():
    n = users_needed(0.2, 0.02)
    assert power(n, 0.2, 0.02) == pytest.approx(0.8, abs=0.01)
    assert users_needed(0.2, 0.04) < n


def test_run_experiment_and_report(tmp_path: Path):
    res = run_experiment(load_experiment(TOML))
    low, high = res.variants
    assert low.epsilon == pytest.approx(1.0, abs=1e-6)
    assert high.epsilon_all_draws is not None and high.epsilon_all_draws > high.epsilon
    assert "recall@10" in high.comparisons and "coverage@10" in high.comparisons
    assert high.compared_to == "eps1" and low.compared_to is None
    assert set(high.group_comparisons) == set(res.groups) and len(res.groups) >= 2
    # same seeds, same split: the runner is deterministic
    again = run_experiment(load_experiment(TOML))
    assert again.variants[1].means == high.means
    out = write_report(res, tmp_path / "r.html", json_path=tmp_path / "r.json")
    page = out.read_text()
    assert "data:image/png;base64," in page and "eps8" in page
    assert json.loads((tmp_path / "r.json").read_text())["baseline"] == "eps1"


class FakeLedger:
    """Records the calls a ledger would get; refuses past a budget of charges."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved: list[str] = []
        self.committed: list[dict] = []  # type: ignore[type-arg]

    def reserve(self, dataset, events, *, purpose, kind, description):  # type: ignore[no-untyped-def]
        if len(self.reserved) >= self.limit:
            raise ConfigError("budget exceeded")
        self.reserved.append(description)
        return len(self.reserved)

    def commit(self, info, *, result):  # type: ignore[no-untyped-def]
        self.committed.append(result)


def test_charge_hook_reserves_before_noise_and_stops_at_the_budget(monkeypatch):  # type: ignore[no-untyped-def]
    from privrec.experiments import LedgerCharge
    from privrec.models import dp_popularity

    ledger = FakeLedger(limit=3)
    drawn: list[int] = []
    orig = dp_popularity.gaussian

    def noisy(*args):  # type: ignore[no-untyped-def]
        drawn.append(len(ledger.reserved))
        return orig(*args)

    monkeypatch.setattr(dp_popularity, "gaussian", noisy)
    with pytest.raises(ConfigError, match="budget"):
        run_experiment(load_experiment(TOML), charge=LedgerCharge(ledger, "ds"))
    assert len(ledger.reserved) == 3 and len(ledger.committed) == 3
    assert drawn == [1, 2, 3]  # every noise draw came after its reservation; the 4th never ran


def test_cli_experiment(tmp_path: Path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(TOML)
    res = CliRunner().invoke(
        app,
        [
            "experiment",
            "run",
            str(cfg),
            "-o",
            str(tmp_path / "e.html"),
            "--markdown",
            str(tmp_path / "e.md"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e.html").exists() and "| eps8 |" in (tmp_path / "e.md").read_text()
    bad = CliRunner().invoke(app, ["experiment", "run", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 1 and "not found" in bad.output


def test_experiment_charges_a_real_ledger(tmp_path: Path):
    """Wired to privrec.governance: each fit is a committed 'experiment' charge; the budget binds."""
    from privrec.errors import BudgetExceededError
    from privrec.experiments import LedgerCharge
    from privrec.governance import Ledger
    from privrec.governance.db import dispose_engines
    from privrec.governance.policy import policy_from_dict

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    try:
        owner, _ = Ledger.init(url, owner="olga")
        owner.set_policy(
            "ratings",
            policy_from_dict(
                {"purpose": "ab", "unit": "user", "budget": {"epsilon": 3.0, "delta": 1e-5}}
            ),
        )
        analyst = Ledger.connect(url, owner.create_key("ann", "analyst"))
        cfg = load_experiment(TOML.replace("epsilon = 8.0", "epsilon = 2.0"))
        with pytest.raises(BudgetExceededError):
            run_experiment(cfg, charge=LedgerCharge(analyst, "ratings"))
        history = analyst.history("ratings")
        assert history and all(c.kind == "experiment" for c in history)
        assert all(c.status == "committed" for c in history)
        (status,) = [s for s in analyst.status("ratings") if s.scope == "dataset"]
        assert status.composed_epsilon <= 3.0 and status.committed == len(history) >= 2
    finally:
        dispose_engines()


def _exact(n: int) -> str:
    """A regex for ``n`` printed as a number of its own (not part of 0.4370 or 1437)."""
    return rf"(?<![\w.,]){n:,}(?!\w)|(?<![\w.,]){n}(?!\w)"


def test_experiment_outputs_hide_exact_counts_and_the_heaviest_history(tmp_path: Path):
    from privrec.experiments.runner import load_split_for

    # 437 users with 8..130 items and one with 590: its count must not label the top group
    rng = np.random.default_rng(1)
    sizes = np.r_[rng.integers(8, 131, 437), 590]
    lines = [
        f"{u}\t{i}\t5\t{880000000 + t}"
        for u, s in enumerate(sizes, start=1)
        for t, i in enumerate(rng.choice(np.arange(1, 701), s, replace=False))
    ]
    data = tmp_path / "u.data"
    data.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "exp.toml"
    cfg.write_text(TOML.replace('synthetic = "400x120"', f'path = "{data}"'))
    files = {n: tmp_path / n for n in ("e.html", "e.json", "e.md")}
    res = CliRunner().invoke(
        app,
        [
            "experiment",
            "run",
            str(cfg),
            "-o",
            str(files["e.html"]),
            "--json",
            str(files["e.json"]),
            "--markdown",
            str(files["e.md"]),
        ],
    )
    assert res.exit_code == 0, res.output
    exact = run_experiment(load_experiment(cfg))
    split = load_split_for(load_experiment(cfg).data)
    heaviest = int(split.eval_set("test").history_counts(split.train).max())
    assert heaviest > 400 and exact.n_users > 400
    from privrec.evaluation.protocol import round_count

    # numbers that differ from their rounding (110 users print as "≈ 110" and give nothing away)
    secret = [n for n in (heaviest, exact.n_users, *exact.group_sizes) if round_count(n) != n]
    assert heaviest in secret and exact.n_users in secret
    outputs = {"stdout": res.output} | {n: p.read_text() for n, p in files.items()}
    # the plots are base64 PNGs: their letters and digits are not numbers
    outputs["e.html"] = re.sub(r"base64,[A-Za-z0-9+/=]+", "", outputs["e.html"])
    # the outputs name this test's own folder, whose name holds pytest's run counter
    # (``pytest-114``): a path the test chose, not a count the data gave away
    # (also where the console wrapped it)
    outputs = {
        n: re.sub(r"pytest-\d+", "pytest-N", text.replace(str(tmp_path), "<tmp>"))
        for n, text in outputs.items()
    }
    for name, text in outputs.items():
        for n in secret:
            assert re.search(_exact(n), text) is None, (name, n)
    doc = json.loads(outputs["e.json"])
    assert doc["n_users"].startswith("≈") and all(s.startswith("≈") for s in doc["group_sizes"])
    assert doc["groups"][-1].startswith("Q4 (≥")
    cmp = doc["variants"][1]["comparisons"]["recall@10"]
    assert cmp["users"].startswith("≈")
    assert "not differentially private" in outputs["e.html"]
