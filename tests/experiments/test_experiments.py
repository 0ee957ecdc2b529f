"""Privacy-variant experiments: config validation, paired statistics, the runner, the report."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.errors import ConfigError, DataError, PrivacyWarning
from privrec.experiments import (
    VarianceComponents,
    load_experiment,
    paired_comparison,
    power,
    repeats_needed,
    run_experiment,
    users_needed,
    write_report,
)
from privrec.experiments.report import ReportWarning

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
    same = paired_comparison(base + rng.normal(0, 0.01, base.shape), base)
    assert same.ci_low < 0 < same.ci_high or abs(same.mean_diff) < 2e-3
    shifted = paired_comparison(base + 0.05, base)
    assert shifted.ci_low > 0.04 and shifted.p_value < 1e-6
    with pytest.raises(ConfigError):
        paired_comparison(base, base[:, :10])
    with pytest.raises(ConfigError):  # one draw: nothing measures the draws' variance
        paired_comparison(base[:1], base[:1])


def _aa(draws: int, sims: int, seed: int) -> tuple[float, float, float]:
    """A/A on data shaped like a DP experiment: each noise draw shifts every user's difference
    by a common amount, users have their own spread, the true difference is 0. Returns the
    95% interval's coverage, the rate of p < 0.05 and the share flagged "few draws"."""
    rng = np.random.default_rng(seed)
    n = 300
    cover = fp = few = 0
    for _ in range(sims):
        users = rng.normal(0, 0.02, n)  # a user's own expected difference (population mean 0)
        d = users + rng.normal(0, 0.02, (draws, 1)) + rng.normal(0, 0.1, (draws, n))
        c = paired_comparison(d, np.zeros_like(d))
        cover += c.ci_low <= 0 <= c.ci_high
        fp += c.p_value < 0.05
        few += c.few_draws
        assert (c.p_value < 0.05) == (not c.ci_low <= 0 <= c.ci_high)  # one inference
    return cover / sims, fp / sims, few / sims


@pytest.mark.parametrize("draws", [2, 3, 5])
def test_intervals_hold_their_level_when_each_draw_moves_every_user(draws: int):
    # the former per-user t-test and draws x users bootstrap: 64-89% coverage here
    cov, fpr, few = _aa(draws, sims=300, seed=draws)
    assert 0.92 <= cov <= 0.99 and fpr <= 0.08
    # with 2-3 draws the interval is wide and says so; with 5 it is not flagged
    assert few > 0.9 if draws < 5 else few == 0


def test_power_and_planning_count_the_draws():
    # no draw variance: users are what matters, and power at users_needed is the target
    users_only = VarianceComponents(draw=0.0, user=0.04, residual=0.01)
    n = users_needed(users_only, 0.02, repeats=5)
    assert n is not None and power(users_only, 0.02, repeats=5, users=n) >= 0.8
    assert power(users_only, 0.02, repeats=5, users=n - 1) < 0.8
    assert users_needed(users_only, 0.04, repeats=5) < n  # type: ignore[operator]
    # a draw variance that hides the difference: no number of users helps, more draws do
    noisy = VarianceComponents(draw=4e-4, user=0.04, residual=0.01)
    assert users_needed(noisy, 0.02, repeats=3) is None
    assert power(noisy, 0.02, repeats=3, users=10**8) < 0.8
    r = repeats_needed(noisy, 0.02, users=100_000)
    assert r is not None and r > 3 and power(noisy, 0.02, repeats=r, users=100_000) >= 0.8
    # and the users' spread cannot be beaten with draws
    assert repeats_needed(users_only, 0.02, users=50) is None
    with pytest.raises(ConfigError):
        users_needed(noisy, 0.0, repeats=3)


def test_power_matches_the_test_it_plans_for():
    comps = VarianceComponents(draw=0.005**2, user=0.05**2, residual=0.1**2)
    rng = np.random.default_rng(7)
    hits, sims = 0, 300
    for _ in range(sims):
        d = (
            0.01
            + rng.normal(0, 0.05, 400)
            + rng.normal(0, 0.005, (3, 1))
            + rng.normal(0, 0.1, (3, 400))
        )
        hits += paired_comparison(d, np.zeros_like(d)).p_value < 0.05
    assert power(comps, 0.01, repeats=3, users=400) == pytest.approx(hits / sims, abs=0.08)


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
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["baseline"] == "eps1"
    # 2 draws are too few for a useful interval, and every output says so up front
    cmp = high.comparisons["recall@10"]
    assert cmp.few_draws and all(c.few_draws for c in high.comparisons.values())
    assert doc["notes"] and "only 2 noise draws" in doc["notes"][0]
    assert doc["variants"][1]["comparisons"]["recall@10"]["few_draws"] is True
    assert "only 2 noise draws" in doc["variants"][1]["comparisons"]["recall@10"]["note"]
    assert "Warning: only 2 noise draws" in page and " †" in page
    # with 5 draws nothing is flagged
    five = run_experiment(load_experiment(TOML.replace("repeats = 2", "repeats = 5")))
    assert not five.notes() and not five.variants[1].comparisons["recall@10"].few_draws


def test_unseedable_baseline_and_missing_data(tmp_path: Path):
    # a non-private baseline has no noise and no seed: seeded = true (the default) must not
    # try to give it one
    text = """
[data]
synthetic = "200x50"
[experiment]
k = [5]
repeats = 2
bootstrap = 50
[[variant]]
name = "a"
model = "popularity"
[[variant]]
name = "b"
model = "dppopularity"
params = { epsilon = 1.0, delta = 1e-6, unit = "user" }
"""
    res = run_experiment(load_experiment(text))
    pop, dp = res.variants
    assert pop.epsilon is None and len(set(pop.draw_means["recall@5"])) == 1
    assert dp.compared_to == "a" and "recall@5" in dp.comparisons
    assert len(set(dp.draw_means["recall@5"])) == 2  # seeded: draw r uses seed + r
    # a data path that does not exist is "not found", not a guess about its format
    missing = TOML.replace('synthetic = "400x120"', f'path = "{tmp_path / "nope.csv"}"')
    with pytest.raises(DataError, match="not found"):
        run_experiment(load_experiment(missing))


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
    with pytest.warns(PrivacyWarning, match="not checked against a policy-checked load"):
        hook = LedgerCharge(ledger, "ds")
    with pytest.raises(ConfigError, match="budget"):
        run_experiment(load_experiment(TOML), charge=hook)
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


def _ledger(tmp_path: Path, *, epsilon: float) -> tuple[Any, Any]:
    """A SQLite ledger with dataset 'ratings' (purpose 'ab', this budget): (owner, analyst)."""
    from privrec.governance import Ledger
    from privrec.governance.policy import policy_from_dict

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    owner, _ = Ledger.init(url, owner="olga")
    owner.set_policy(
        "ratings",
        policy_from_dict(
            {"purpose": "ab", "unit": "user", "budget": {"epsilon": epsilon, "delta": 1e-5}}
        ),
    )
    return owner, Ledger.connect(url, owner.create_key("ann", "analyst"))


def test_experiment_charges_a_real_ledger(tmp_path: Path):
    """Wired to privrec.governance: each fit is a committed 'experiment' charge; the budget binds."""
    from privrec.errors import BudgetExceededError
    from privrec.experiments import LedgerCharge
    from privrec.experiments.runner import load_governed_split
    from privrec.governance.db import dispose_engines

    try:
        _, analyst = _ledger(tmp_path, epsilon=3.0)
        cfg = load_experiment(TOML.replace("epsilon = 8.0", "epsilon = 2.0"))
        split, governed = load_governed_split(cfg.data, analyst, "ratings")
        with pytest.raises(BudgetExceededError):
            run_experiment(cfg, split=split, charge=LedgerCharge(analyst, "ratings", data=governed))
        history = analyst.history("ratings")
        assert history and all(c.kind == "experiment" for c in history)
        assert all(c.status == "committed" for c in history)
        (status,) = [s for s in analyst.status("ratings") if s.scope == "dataset"]
        assert status.composed_epsilon <= 3.0 and status.committed == len(history) >= 2
    finally:
        dispose_engines()


def test_a_deletion_during_an_experiment_stops_its_next_fit(tmp_path: Path):
    """Fits are reserved against the load the split was cut from: once a deletion request
    lands mid-run, the next reservation is refused (StaleDataError) before it draws noise."""
    from privrec.errors import StaleDataError
    from privrec.experiments import LedgerCharge
    from privrec.experiments.runner import load_governed_split
    from privrec.governance.db import dispose_engines

    try:
        owner, analyst = _ledger(tmp_path, epsilon=50.0)
        cfg = load_experiment(TOML)
        split, governed = load_governed_split(cfg.data, analyst, "ratings")
        victim = split.train.user_ids[0]
        calls: list[str] = []

        def progress(message: str) -> None:
            calls.append(message)
            if len(calls) == 1:
                owner.forget("ratings", victim, reason="erasure request")

        with pytest.raises(StaleDataError, match="load it again"):
            run_experiment(
                cfg,
                split=split,
                charge=LedgerCharge(analyst, "ratings", data=governed),
                progress=progress,
            )
        # at most the fits reserved before the request went through; none after it
        assert len(analyst.history("ratings")) <= 1
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
    # no exact count (all users, an activity group) can be solved for from the statistics
    assert not _recoverable_counts(doc, set(secret))


def _numbers(obj: object) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [float(obj)] if isinstance(obj, float) else []


def _recoverable_counts(doc: dict, secrets: set[int]) -> list[str]:  # type: ignore[type-arg]
    """Ways the reviewer found to get exact counts back from the experiment JSON.

    1. ``(t · sd / mean)²`` — with the per-user standard deviation, the t statistic and the
       mean difference at full precision, this was the exact number of evaluated users
       (942.000 on ml-100k) or of an activity group. Every other published number of the
       comparison is tried as the "sd".
    2. Statistics at full precision (a power is a function of the number of users, a mean of
       its denominator): every published statistic must carry at most 4 significant figures.
    """
    found = []
    for v in doc["variants"]:
        tables = [("all", v["comparisons"]), *v["group_comparisons"].items()]
        for group, by_key in tables:
            for key, c in by_key.items():
                t, m = c.get("t_stat"), c.get("mean_diff")
                if "sd_diff" in c:
                    found.append(f"{group} {key}: publishes the per-user sd")
                if not t or not m:
                    continue
                for name, x in c.items():
                    if isinstance(x, float):
                        n = (t * x / m) ** 2
                        if any(abs(n - s) < 0.5 for s in secrets):
                            found.append(f"{group} {key}: (t·{name}/mean)² = {n:.3f}")
        stats = [v["means"], v["draw_means"], v["by_group"], v["comparisons"], v["power"]]
        stats.append(v["group_comparisons"])
        for x in _numbers(stats):
            if float(f"{x:.4g}") != x:
                found.append(f"{v['name']}: {x!r} at full precision")
    return found


def test_the_json_check_catches_the_old_leak():
    """The check above on what the former JSON published (per-user sd, full precision)."""
    n = 942
    old = {"t_stat": 2.5, "sd_diff": 0.2, "mean_diff": 2.5 * 0.2 / math.sqrt(n)}
    doc = {
        "variants": [
            {
                "name": "v",
                "means": {},
                "draw_means": {},
                "by_group": {},
                "comparisons": {"recall@20": old},
                "group_comparisons": {},
                "power": {"recall@20": 0.8123456789},
            }
        ]
    }
    found = _recoverable_counts(doc, {n})
    assert any("per-user sd" in f for f in found) and any("(t·sd_diff/mean)²" in f for f in found)
    assert any("full precision" in f for f in found)


# --------------------------------------------------------------- hostile review: seeds, reports


AA = """
[data]
synthetic = "300x100"
[experiment]
k = [10]
repeats = 4
seeded = false
bootstrap = 50
metrics = ["recall"]
groups = 2
[[variant]]
name = "a"
model = "dppopularity"
params = { epsilon = 1.0, delta = 1e-5, unit = "user" }
[[variant]]
name = "b"
model = "dppopularity"
params = { epsilon = 1.0, delta = 1e-5, unit = "user" }
"""


@pytest.mark.parametrize("key", ["seed", "noise_seed", "random_state"])
def test_a_variant_cannot_fix_its_noise(key: str):
    """A seed in a variant's params gave every draw the same noise: draw variance 0, intervals
    from the users alone (7 of 20 A/A intervals missed 0). Refused, seeded or not."""
    for seeded in ("false", "true"):
        text = AA.replace("seeded = false", f"seeded = {seeded}").replace(
            'unit = "user" }\n[[variant]]\nname = "b"',
            f'unit = "user", {key} = 1 }}\n[[variant]]\nname = "b"',
        )
        assert f"{key} = 1" in text
        with pytest.raises(
            ConfigError, match=rf"variant\.'a'\.params: params {key} .*seeded = true"
        ):
            load_experiment(text)


def test_every_variant_is_checked_before_any_fit_is_charged():
    """A bad second variant (or a seed slipped past the TOML) must not cost the first one's
    budget: nothing is reserved."""
    ledger = FakeLedger(limit=100)
    from privrec.experiments import LedgerCharge

    with pytest.warns(PrivacyWarning, match="not checked"):
        hook = LedgerCharge(ledger, "ds")
    head, tail = AA.split('name = "b"')
    bad = load_experiment(head + 'name = "b"' + tail.replace('"user" }', '"user", bogus = 1 }'))
    assert "bogus" in bad.variant[1].params and "bogus" not in bad.variant[0].params
    with pytest.raises(ConfigError, match="bogus"):
        run_experiment(bad, charge=hook)
    assert ledger.reserved == []
    # a config built without validation still cannot pin the noise
    cfg = load_experiment(AA)
    pinned = cfg.model_copy(
        update={
            "variant": [
                cfg.variant[0].model_copy(update={"params": {**cfg.variant[0].params, "seed": 1}}),
                cfg.variant[1],
            ]
        }
    )
    with pytest.raises(ConfigError, match="seed"):
        run_experiment(pinned, charge=hook)
    assert ledger.reserved == []


def test_an_unseeded_run_does_not_hide_a_models_seeded_noise_warning(monkeypatch):  # type: ignore[no-untyped-def]
    """The runner silenced every "seeded" PrivacyWarning from the models, also in runs with
    seeded = false, where such a warning means the noise was fixed behind the run's back."""
    from privrec.models import dp_popularity
    from privrec.privacy.randomness import SEEDED_WARNING

    orig = dp_popularity.gaussian

    def seeded(*args):  # type: ignore[no-untyped-def]
        warnings.warn(SEEDED_WARNING, PrivacyWarning, stacklevel=2)
        return orig(*args)

    monkeypatch.setattr(dp_popularity, "gaussian", seeded)
    with pytest.warns(PrivacyWarning, match="seeded noise is reproducible"):
        run_experiment(load_experiment(AA))


def test_identical_draws_of_a_private_variant_give_no_interval(monkeypatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Draws of a private model that do not vary (here: the noise switched off) would give an
    interval from the users alone. The run warns, the outputs give no interval and say why."""
    from privrec.models import dp_popularity

    monkeypatch.setattr(
        dp_popularity, "gaussian", lambda counts, *rest: np.asarray(counts, dtype=np.float64)
    )
    # a fixed per-user bound above every history: no sampling, no noisy length histogram
    text = AA.replace('metrics = ["recall"]', 'metrics = ["recall", "coverage"]')
    cfg = load_experiment(text.replace('unit = "user" }', 'unit = "user", max_per_user = 100 }'))
    with pytest.warns(PrivacyWarning, match="'a': all 4 noise draws .* same top-k lists"):
        res = run_experiment(cfg)
    a, b = res.variants
    assert a.identical_draws and b.identical_draws
    shown = [
        *b.comparisons.values(),
        *(c for g in b.group_comparisons.values() for c in g.values()),
    ]
    assert shown and all(c.identical_draws for c in shown)
    assert "recall@10" in b.comparisons and "coverage@10" in b.comparisons
    assert b.power == {} and b.users_needed == {}  # no planning from an unmeasured variance
    doc = res.to_dict()
    cmp = doc["variants"][1]["comparisons"]["recall@10"]
    assert cmp["ci_low"] is None and cmp["ci_high"] is None and cmp["p_value"] is None
    assert cmp["identical_draws"] is True and "none is given" in cmp["note"]
    assert any("same top-k lists" in n for n in doc["notes"])
    out = write_report(res, tmp_path / "r.html", markdown_path=tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text()
    assert "[no interval ‡]" in md and "‡ no interval" in md
    assert md.index("Warning: variant 'a'") < md.index("| variant |")
    assert "[no interval ‡]" in out.read_text()


def test_varying_draws_are_not_flagged():
    res = run_experiment(load_experiment(AA))
    assert not any(v.identical_draws for v in res.variants)
    assert not res.variants[1].comparisons["recall@10"].identical_draws


def test_the_report_draws_deterministic_baselines(tmp_path: Path):
    """A deterministic baseline's draws are equal, and mean − max came out as −5.6e-17: the
    error bars went negative and matplotlib refused the whole report."""
    res = run_experiment(
        load_experiment(
            TOML.replace('model = "dppopularity"', 'model = "popularity"', 1).replace(
                'params = { epsilon = 1.0, delta = 1e-5, unit = "user" }', "", 1
            )
        )
    )
    pop = res.variants[0]
    key = "recall@10"
    assert len(set(pop.draw_means[key])) == 1
    pop.means[key] = pop.draw_means[key][0] + 5.6e-17  # as rounding left it on ml-like data
    assert max(pop.draw_means[key]) - pop.means[key] < 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)  # no fallback to a page without plots
        page = write_report(res, tmp_path / "r.html").read_text()
    assert "data:image/png;base64," in page


def test_a_plot_failure_loses_no_results(tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    """The fits may be charged: the JSON and Markdown are written before any plot, and a
    failing plot leaves an HTML page without figures and a typed warning, not a traceback."""
    from privrec.experiments import report

    def boom(res: Any) -> Any:
        raise ValueError("'yerr' must not contain negative values")

    monkeypatch.setattr(report, "_plots", boom)
    cfg = tmp_path / "exp.toml"
    cfg.write_text(AA)
    files = [tmp_path / "out" / n for n in ("e.html", "e.json", "e.md")]  # folder made on write
    run = CliRunner().invoke(
        app,
        [
            "experiment",
            "run",
            str(cfg),
            "-o",
            str(files[0]),
            "--json",
            str(files[1]),
            "--markdown",
            str(files[2]),
        ],
    )
    assert run.exit_code == 0, run.output
    assert all(f.exists() for f in files)
    assert "ReportWarning" in run.output and "plots could not be drawn" in run.output
    assert json.loads(files[1].read_text())["baseline"] == "a"
    assert "| b | a | recall@10 |" in files[2].read_text()
    page = files[0].read_text()
    assert "plots could not be drawn" in page and "data:image" not in page
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary file left behind
    res = run_experiment(load_experiment(AA))
    with pytest.warns(ReportWarning, match="results are in"):
        write_report(res, tmp_path / "x.html", json_path=tmp_path / "x.json")
    assert (tmp_path / "x.json").exists()


def test_untyped_errors_become_config_errors(tmp_path: Path):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(AA.replace('name = "a"', 'name = "caf\xe9"').encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml.*not UTF-8"):
        load_experiment(latin1)
    run = CliRunner().invoke(
        app, ["experiment", "run", str(latin1), "-o", str(tmp_path / "e.html")]
    )
    assert run.exit_code == 1 and "not UTF-8" in run.output and "Traceback" not in run.output
    for size, bound in [
        ("99999999999x99999999999", "at most 10,000,000 users"),
        ("100000x100000", "users × items at most"),
        ("5000000x1000", "expected interactions"),
    ]:
        with pytest.raises(ConfigError, match=bound):
            load_experiment(AA.replace('synthetic = "300x100"', f'synthetic = "{size}"'))
    # within the bounds still parses
    assert load_experiment(AA.replace('"300x100"', '"100000x1000"')).data.synthetic == "100000x1000"


def _cells(row: str) -> int:
    """Cells of a Markdown table row, counting only unescaped pipes."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", row)) - 1


def test_names_cannot_break_the_markdown(tmp_path: Path):
    text = AA.replace('name = "a"', 'name = "x|y\\n# z \\\\|"').replace(
        'name = "b"', 'name = "b<script>`*[l](h)_u_~~s~~"'
    )
    res = run_experiment(load_experiment(text))
    from privrec.experiments.report import to_markdown

    md = to_markdown(res)
    assert "\n# z" not in md and "x|y" not in md
    rows = [line for line in md.splitlines() if line.startswith("|")]
    tables: list[list[str]] = []
    for line in md.splitlines():
        if line.startswith("|"):
            if not tables or not tables[-1]:
                tables.append([])
            tables[-1].append(line)
        elif tables and tables[-1]:
            tables.append([])
    tables = [t for t in tables if t]
    assert len(tables) == 3 and len(rows) > 6
    for t in tables:
        assert len({_cells(r) for r in t}) == 1, t
    # a link, emphasis or strike-through stays text (a reviewer named a variant "[x](https://e)")
    assert "| b\\<script\\>\\`\\*\\[l\\](h)\\_u\\_\\~\\~s\\~\\~ | x\\|y # z \\\\\\| |" in md
    page = write_report(res, tmp_path / "r.html").read_text()
    assert "<td>x|y # z \\|</td>" in page and "<td>b&lt;script&gt;`*[l](h)_u_~~s~~</td>" in page
    assert "<script>" not in page


def test_small_activity_groups_are_withheld() -> None:
    """A reviewer read one user's exact recall, NDCG and history length off a group of one
    ("Q5 (13–13)", "≈ 1"): a group of fewer than MIN_GROUP_USERS keeps no metrics, no
    comparison and no history range in the results."""
    from privrec.evaluation.protocol import MIN_GROUP_USERS
    from privrec.experiments import load_experiment as load

    cfg = load(
        """
[data]
synthetic = "60x40"
seed = 3
[experiment]
k = [5]
repeats = 2
groups = 10
metrics = ["recall"]
[[variant]]
name = "pop"
model = "popularity"
[[variant]]
name = "dp"
model = "dppopularity"
params = { epsilon = 1.0, delta = 1e-5, unit = "user" }
"""
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_experiment(cfg)
    small = [g for g, n in zip(res.groups, res.group_sizes, strict=True) if n < MIN_GROUP_USERS]
    assert small and len(small) < len(res.groups)
    doc = json.dumps(res.to_dict())
    for g in small:
        assert " " not in g  # "Q3", never "Q3 (13–13)"
        for v in res.variants:
            assert g not in v.by_group and g not in v.group_comparisons
    assert '≈ 1"' not in doc and "< 10" in doc
    # complementary suppression: the overall mean less the shown groups' would give a lone
    # user's recall back (a reviewer did so in evaluation), so the withheld groups always hold
    # at least MIN_GROUP_USERS users together
    for v in res.variants:
        hidden = [
            n for g, n in zip(res.groups, res.group_sizes, strict=True) if g not in v.by_group
        ]
        assert hidden and sum(hidden) >= MIN_GROUP_USERS


def test_cli_experiment_markdown_rows_are_not_wrapped(tmp_path: Path):
    """The summary tables on stdout are Markdown: on a narrow terminal (or a pipe, where rich
    wraps at $COLUMNS) each row must still be one line, or the table no longer renders."""
    cfg = tmp_path / "exp.toml"
    cfg.write_text(TOML)
    res = CliRunner().invoke(
        app,
        ["experiment", "run", str(cfg), "-o", str(tmp_path / "e.html")],
        env={"COLUMNS": "40"},
    )
    assert res.exit_code == 0, res.output
    rows = [line for line in res.stdout.splitlines() if line.startswith("|")]
    assert any(line.startswith("| eps8 |") for line in rows)
    assert all(line.endswith("|") for line in rows)
    assert any(len(line) > 40 for line in rows)  # the width really was too narrow for them


def test_a_test_set_of_fewer_than_ten_users_is_refused_before_any_fit() -> None:
    """Every metric of an experiment on a handful of test users is those people's own: it is
    refused before a fit is charged."""
    from privrec.errors import DataError
    from privrec.evaluation import random_holdout
    from privrec.experiments import load_experiment as load

    cfg = load(AA)
    charged: list[object] = []

    class Hook:
        def reserve(self, *args: object) -> None:
            charged.append(args)

        def commit(self, *args: object, **kwargs: object) -> None:
            charged.append(args)

    from privrec.data import synthetic

    split = random_holdout(synthetic(n_users=8, n_items=20, seed=0), 0.3, seed=0)
    with pytest.raises(DataError, match="fewer than 10 users"):
        run_experiment(cfg, split=split, charge=Hook())  # type: ignore[arg-type]
    assert charged == []


def test_stored_zero_targets_do_not_count_as_evaluable_users() -> None:
    """A split whose test targets hold explicitly stored zeros (values of 0 kept by
    ``Interactions.from_arrays``) passed the refusal — the check counted stored entries, the
    metrics (which drop zeros) then averaged over 3 users."""
    import dataclasses

    import scipy.sparse as sp

    from privrec.data import synthetic
    from privrec.errors import DataError
    from privrec.evaluation import random_holdout

    split = random_holdout(synthetic(n_users=40, n_items=30, seed=0), 0.3, seed=0)
    t = split.test.targets.tocoo()
    zeros = sp.csr_matrix((np.where(t.row < 3, t.data, 0.0), (t.row, t.col)), shape=t.shape)
    assert (np.diff(zeros.indptr) > 0).sum() > 10
    split = dataclasses.replace(split, test=dataclasses.replace(split.test, targets=zeros))
    with pytest.raises(DataError, match="fewer than 10 users"):
        run_experiment(load_experiment(TOML), split=split)
