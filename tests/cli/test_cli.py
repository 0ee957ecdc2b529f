"""The command line: each command end to end on small files, and its error behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app

runner = CliRunner()


@pytest.fixture
def udata(tmp_path: Path) -> Path:
    """A small MovieLens-100K-style file (user, item, rating, timestamp; tab-separated)."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 61):
        items = rng.choice(np.arange(1, 41), size=12, replace=False)
        for t, i in enumerate(items):
            lines.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + t}")
    path = tmp_path / "u.data"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_data_stats(udata: Path) -> None:
    res = runner.invoke(app, ["data", "stats", str(udata)])
    assert res.exit_code == 0, res.output
    assert "720" in res.output and "users" in res.output


def test_train_then_recommend(udata: Path, tmp_path: Path) -> None:
    out = tmp_path / "pop.npz"
    res = runner.invoke(
        app, ["train", "--data", str(udata), "--model", "popularity", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert out.exists()
    res = runner.invoke(app, ["recommend", str(out), "--user", "3", "-k", "5"])
    assert res.exit_code == 0, res.output
    assert res.output.count("│ 3 ") >= 5 or res.output.count(" 3 ") >= 5


def test_train_from_toml_config(udata: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'model = "itemknn"\n[params]\nneighbours = 5\n[data]\npath = "{udata}"\nformat = "ml-100k"\nbinarize = 3\n'
    )
    out = tmp_path / "knn.npz"
    res = runner.invoke(app, ["train", "--config", str(cfg), "-o", str(out)])
    assert res.exit_code == 0, res.output
    from privrec.models import load_model

    assert load_model(out).get_params()["neighbours"] == 5


def test_evaluate_writes_json(udata: Path, tmp_path: Path) -> None:
    js = tmp_path / "res.json"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(udata),
            "-m",
            "popularity",
            "-m",
            "ease",
            "-p",
            "regularization=10",
            "--k",
            "5",
            "--json",
            str(js),
        ],
    )
    # ease accepts regularization; popularity does not -> clear config error, exit 1
    assert res.exit_code == 1
    assert "regularization" in res.output
    res = runner.invoke(
        app, ["evaluate", "--data", str(udata), "-m", "popularity", "--k", "5", "--json", str(js)]
    )
    assert res.exit_code == 0, res.output
    assert "recall" in res.output.lower()
    payload = json.loads(js.read_text())
    assert payload[0]["model"]


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["data", "stats", str(tmp_path / "missing.dat"), "--format", "ml-100k"]
    )
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert "error" in res.output.lower()


def test_bad_line_reports_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\t4\n1\tx\t3\t4\n")
    res = runner.invoke(app, ["data", "stats", str(bad)])
    assert res.exit_code == 1
    assert "line 2" in res.output


def test_debug_shows_traceback(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["--debug", "data", "stats", str(tmp_path / "missing.dat"), "--format", "ml-100k"]
    )
    assert res.exit_code != 0
    assert res.exception is not None


def test_unknown_model_and_user(udata: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["train", "--data", str(udata), "--model", "nope", "-o", str(tmp_path / "m.npz")]
    )
    assert res.exit_code == 1 and "unknown model" in res.output
    out = tmp_path / "pop.npz"
    runner.invoke(app, ["train", "--data", str(udata), "--model", "popularity", "-o", str(out)])
    res = runner.invoke(app, ["recommend", str(out), "--user", "99999"])
    assert res.exit_code == 1 and "unknown user" in res.output


def test_train_private_model_and_explain(udata: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpals.npz"
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(udata),
            "--model",
            "dpals",
            "--epsilon",
            "2",
            "--delta",
            "1e-4",
            "--unit",
            "user",
            "-p",
            "factors=4",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "privacy: (2, 1.0e-04)-DP per user" in res.output
    res = runner.invoke(app, ["privacy", "explain", str(out)])
    assert res.exit_code == 0, res.output
    assert "differentially private" in res.output and "joint DP" in res.output
    assert "noisy item counts" in res.output
    res = runner.invoke(app, ["privacy", "explain", str(out), "--json"])
    assert res.exit_code == 0 and '"epsilon"' in res.output


def test_private_model_needs_budget_and_unit(udata: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(udata),
            "--model",
            "dppopularity",
            "--epsilon",
            "1",
            "-o",
            str(tmp_path / "m"),
        ],
    )
    assert res.exit_code == 1 and "missing: delta, unit" in res.output
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(udata),
            "--model",
            "ease",
            "--epsilon",
            "1",
            "-o",
            str(tmp_path / "m"),
        ],
    )
    assert res.exit_code == 1 and "not a private model" in res.output


def test_explain_refuses_non_private_model(udata: Path, tmp_path: Path) -> None:
    out = tmp_path / "pop.npz"
    runner.invoke(app, ["train", "--data", str(udata), "--model", "popularity", "-o", str(out)])
    res = runner.invoke(app, ["privacy", "explain", str(out)])
    assert res.exit_code == 1 and "not a private model" in res.output


def test_demo_writes_report(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    res = runner.invoke(app, ["demo", "--users", "400", "--items", "120", "--report", str(report)])
    assert res.exit_code == 0, res.output
    text = report.read_text()
    assert "dpals (ε=1)" in text and "dppopularity (ε=4)" in text
    assert "data:image/png;base64," in text and "differentially private" in text
    assert report.with_suffix(".png").stat().st_size > 1000


def test_typed_ids_are_matched_exactly_never_cut_to_the_models_width(tmp_path: Path) -> None:
    """String ids were cast to the model's fixed width: "u100XYZ" became "u100" and was served
    (and written) as that other person; a history item "i10ZZZ" was read as "i10"."""
    rows = [f"u{u},i{(u * 7 + j) % 40}" for u in range(300) for j in range(5)]
    data = tmp_path / "s.csv"
    data.write_text("user,item\n" + "\n".join(rows) + "\n")
    out = tmp_path / "als.npz"
    res = runner.invoke(app, ["train", "-d", str(data), "-f", "csv", "-m", "popularity", "-o", str(out),
                              "--include-user-data"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", str(out), "--user", "u100XYZ", "-k", "3"])
    assert res.exit_code == 1 and "u100XYZ" in res.output
    assert runner.invoke(app, ["recommend", str(out), "--user", "u100", "-k", "3"]).exit_code == 0
    hist = tmp_path / "h.txt"
    hist.write_text("i10ZZZ\n")
    res = runner.invoke(app, ["recommend", str(out), "--history", str(hist), "-k", "3"])
    assert "not in the model's catalogue" in res.output
