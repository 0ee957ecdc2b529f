"""``privrec federated simulate`` end to end on a tiny LightGCN-style split, with a resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def _split(folder: Path, n_users: int = 120, n_items: int = 20) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    files: dict[str, list[str]] = {"train.txt": [], "valid.txt": [], "test.txt": []}
    for u in range(n_users):
        own = rng.permutation(np.arange(u % 2, n_items, 2))[:7]
        parts = {"train.txt": own[:5], "valid.txt": own[5:6], "test.txt": own[6:]}
        for name, items in parts.items():
            files[name].append(" ".join(str(v) for v in [u, *items.tolist()]))
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_simulate_reports_rounds_and_resumes(tmp_path: Path) -> None:
    data = _split(tmp_path / "split")
    ck = tmp_path / "ck"
    out = tmp_path / "rounds.json"
    args = [
        "federated", "simulate", "-d", str(data), "--noise-multiplier", "0.8", "--rounds", "2",
        "--clients-per-round", "60", "--head-items", "10", "--factors", "2", "--seed", "0",
        "--eval-every", "1", "--checkpoint-dir", str(ck), "--json", str(out),
        "-p", "clip_count_stddev=5.0",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "FederatedMF rounds" in res.output and "differentially private" in res.output
    # the plain-language guarantee is printed as text: its P[...] is not eaten as rich markup,
    # and it names the privrec release that computed it
    flat = " ".join(res.output.split())
    assert "P[release ∈ S with your whole history] ≤" in flat, flat
    assert "Computed by privrec unknown" not in flat and "Computed by privrec 0." in flat
    assert "≈ 120 clients" in flat and "≈ ≈" not in flat  # rounded as in train, once
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[-1]["recall"] is not None
    assert (ck / "server.npz").exists()
    resume = ["federated", "simulate", "-d", str(data), "--checkpoint-dir", str(ck), "--resume"]
    more = CliRunner().invoke(app, [*resume, "--json", str(out)])
    assert more.exit_code == 0, more.output
    # the checkpointed config says 2 rounds: nothing left to do, the log is kept
    assert [r["round"] for r in json.loads(out.read_text())["rounds"]] == [1, 2]


def test_simulate_needs_a_budget(tmp_path: Path) -> None:
    data = _split(tmp_path / "split")
    res = CliRunner().invoke(app, ["federated", "simulate", "-d", str(data)])
    assert res.exit_code == 1
    assert "--epsilon" in res.output


def test_resume_keeps_the_runs_settings_and_refuses_conflicts(tmp_path: Path) -> None:
    data = _split(tmp_path / "split")
    ck = tmp_path / "ck"
    start = [
        "federated", "simulate", "-d", str(data), "--noise-multiplier", "0.8", "--rounds", "1",
        "--clients-per-round", "60", "--head-items", "10", "--factors", "2", "--seed", "0",
        "--secure", "full", "--dropout", "0.05", "--threat-model", "malicious",
        "--checkpoint-dir", str(ck), "-p", "clip_count_stddev=5.0",
    ]  # fmt: skip
    first = CliRunner().invoke(app, start)
    assert first.exit_code == 0, first.output
    # not a terminal: one line per round on stderr, and the ε line first
    assert "round 1/1: ε so far" in first.output
    assert first.output.startswith("noise multiplier z = 0.8")
    assert "malicious server" in first.output
    resume = ["federated", "simulate", "-d", str(data), "--checkpoint-dir", str(ck), "--resume"]
    for flags, match in [
        (["--secure", "fast"], "secure='full'"),
        (["--dropout", "0.2"], "faults"),
        (["--epsilon", "1"], "--epsilon: a resumed run keeps"),
        (["--rounds", "0"], "already completed"),
    ]:
        res = CliRunner().invoke(app, [*resume, *flags])
        assert res.exit_code == 1, flags
        assert match in res.output, res.output
    # same settings are fine, and --rounds extends a fixed-noise run (never ignored)
    out = tmp_path / "r.json"
    more = CliRunner().invoke(
        app, [*resume, "--secure", "full", "--rounds", "2", "--json", str(out)]
    )
    assert more.exit_code == 0, more.output
    assert "resuming after round 1 of 2 (secure=full" in more.output
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["secure"] == "secagg+ (full protocol)" for r in rounds)


def test_extending_an_epsilon_calibrated_run_is_refused(tmp_path: Path) -> None:
    data = _split(tmp_path / "split")
    ck = tmp_path / "ck"
    start = [
        "federated", "simulate", "-d", str(data), "--epsilon", "5", "--rounds", "1",
        "--clients-per-round", "60", "--head-items", "10", "--factors", "2", "--seed", "0",
        "--checkpoint-dir", str(ck),
    ]  # fmt: skip
    first = CliRunner().invoke(app, start)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("ε asked 5 at δ = 1e-05; each completed round is charged its")
    assert "the true loss is ≈" in " ".join(first.output.split())
    assert "ε spent" in first.output and "of 5 asked" in first.output
    res = CliRunner().invoke(
        app, ["federated", "simulate", "-d", str(data), "--checkpoint-dir", str(ck), "--resume",
              "--rounds", "3"]
    )  # fmt: skip
    assert res.exit_code == 1 and "calibrated for 1 rounds" in res.output
