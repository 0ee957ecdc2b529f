"""The first hour of a new user, from the command line (issue 10) — and what it writes.

Train a private model, explain, verify and recommend from it by history (one user or a batch),
compare baselines and private models in one evaluate run, build the privacy–utility report;
every file written is opened and must not identify a training user.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app

runner = CliRunner()
N_USERS = 437  # 19 × 23: distinctive, and no decimal sampling rate is a multiple of 1/437


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of 437 users with distinctive string ids × 61 items, skewed popularity."""
    rng = np.random.default_rng(11)
    pop = 1.0 / np.arange(1, 62) ** 0.8
    pop /= pop.sum()
    rows = []
    for u in range(N_USERS):
        for i in rng.choice(61, size=int(rng.integers(6, 20)), replace=False, p=pop):
            rows.append((f"member-{u:04d}-zq", f"item-{i:03d}", int(rng.integers(1, 6))))
    path = tmp_path_factory.mktemp("data") / "members.csv"
    pd.DataFrame(rows, columns=["user", "item", "rating"]).to_csv(path, index=False)
    return path


def _ids(path: Path) -> dict[str, Any]:
    df = pd.read_csv(path)
    return {
        "user_ids": sorted(set(df["user"])),
        "counts": [df["user"].nunique(), len(df)],
        "denominators": [df["user"].nunique()],
    }


PRIVATE = ["--epsilon", "2", "--delta", "1e-6", "--unit", "user"]


def test_private_model_end_to_end(members: Path, tmp_path: Path, no_user_data: Any) -> None:
    model = tmp_path / "dpals.npz"
    res = runner.invoke(
        app,
        [
            "train",
            "-d",
            str(members),
            "-f",
            "csv",
            "-m",
            "dpals",
            *PRIVATE,
            "-p",
            "factors=8",
            "-o",
            str(model),
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"{N_USERS}" not in res.output and "≈ 440 users" in res.output  # no exact count in logs
    no_user_data(model, **_ids(members))

    res = runner.invoke(app, ["privacy", "explain", str(model)])
    assert res.exit_code == 0, res.output
    assert "88.1%" in res.output  # (e^2 + δ) / (1 + e^2): the hypothesis-testing reading at ε = 2
    assert "additive slack" in res.output and "Assumed public" in res.output

    res = runner.invoke(app, ["privacy", "verify", str(model)])
    assert res.exit_code == 0 and "OK" in res.output

    history = tmp_path / "me.txt"
    history.write_text("item\nitem-001\nitem-004\nitem-nope\n")
    res = runner.invoke(app, ["recommend", str(model), "--history", str(history), "-k", "5"])
    assert res.exit_code == 0, res.output
    assert "item-0" in res.output and "item-001 " not in res.output  # own items excluded
    assert "not in the model's catalogue" in res.output

    res = runner.invoke(app, ["recommend", str(model), "--user", "member-0001-zq"])
    assert res.exit_code == 1 and "--history" in res.output
    # a history that is a folder (or a device) is named as such, not as missing
    res = runner.invoke(app, ["recommend", str(model), "--history", str(tmp_path)])
    assert res.exit_code == 1 and "history file is not a regular file" in res.output, res.output
    res = runner.invoke(app, ["recommend", str(model), "--history", str(tmp_path / "nope.txt")])
    assert res.exit_code == 1 and "history file not found" in res.output


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_batch_recommendations_from_histories(members: Path, tmp_path: Path, suffix: str) -> None:
    model = tmp_path / "pop.npz"
    assert (
        runner.invoke(
            app,
            [
                "train",
                "-d",
                str(members),
                "-f",
                "csv",
                "-m",
                "dppopularity",
                *PRIVATE,
                "-o",
                str(model),
            ],
        ).exit_code
        == 0
    )
    users = tmp_path / "users.csv"
    pd.DataFrame(
        {"user": ["a", "a", "b", "c"], "item": ["item-000", "item-002", "item-001", "zzz"]}
    ).to_csv(users, index=False)
    out = tmp_path / f"recs{suffix}"
    res = runner.invoke(
        app, ["recommend", str(model), "--users", str(users), "--out", str(out), "-k", "3"]
    )
    assert res.exit_code == 0, res.output
    recs = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    assert list(recs.columns) == ["user", "rank", "item", "score"]
    assert sorted(set(recs["user"])) == ["a", "b", "c"] and len(recs) == 9
    seen_a = set(recs[recs["user"] == "a"]["item"])
    assert not seen_a & {"item-000", "item-002"}
    # the same lists as the library gives
    from privrec.models import load_model

    m = load_model(model)
    row = np.zeros(m.n_items_, np.float32)
    row[[list(m.item_ids_).index("item-001")]] = 1
    ids, _ = m.recommend_history(row, k=3)
    assert list(recs[recs["user"] == "b"]["item"]) == [m.item_ids_[i] for i in ids]


def test_batch_known_users_of_a_non_private_model(members: Path, tmp_path: Path) -> None:
    model = tmp_path / "pop.npz"
    assert (
        runner.invoke(
            app, ["train", "-d", str(members), "-f", "csv", "-m", "popularity", "-o", str(model)]
        ).exit_code
        == 0
    )
    users = tmp_path / "users.csv"
    users.write_text("user\nmember-0003-zq\nmember-0007-zq\n")
    out = tmp_path / "recs.tsv"
    res = runner.invoke(
        app, ["recommend", str(model), "--users", str(users), "--out", str(out), "-k", "2"]
    )
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out, sep="\t")) == 4


def test_recommend_needs_exactly_one_source(members: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["recommend", str(tmp_path / "x.npz")])
    assert res.exit_code == 1 and "exactly one" in res.output
    res = runner.invoke(
        app,
        ["recommend", str(tmp_path / "x.npz"), "--user", "1", "--out", str(tmp_path / "x.xlsx")],
    )
    assert res.exit_code == 1 and "--out must end in" in res.output


def test_evaluate_mixes_baselines_and_private_models(
    members: Path, tmp_path: Path, no_user_data: Any
) -> None:
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "-d",
            str(members),
            "-f",
            "csv",
            "-m",
            "popularity",
            "-m",
            "dppopularity",
            "-m",
            "itemknn",
            *PRIVATE,
            "-p",
            "itemknn.neighbours=10",
            "--k",
            "10",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    assert [r["model"] for r in results] == ["popularity", "dppopularity", "itemknn"]
    no_user_data(out, **_ids(members))
    res = runner.invoke(
        app, ["evaluate", "-d", str(members), "-f", "csv", "-m", "popularity", "--epsilon", "1"]
    )
    assert res.exit_code == 1 and "applies to private models" in res.output


def test_report_curve_with_error_bars(members: Path, tmp_path: Path, no_user_data: Any) -> None:
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    res = runner.invoke(
        app,
        [
            "report",
            "-d",
            str(members),
            "-f",
            "csv",
            "-m",
            "popularity",
            "-m",
            "itemknn",
            "-m",
            "dppopularity",
            "-m",
            "dpals",
            "--epsilons",
            "1,4",
            "--seeds",
            "2",
            "-p",
            "dpals.factors=4",
            "-o",
            str(html),
            "--json",
            str(js),
        ],
    )
    assert res.exit_code == 0, res.output
    text = html.read_text()
    for needle in (
        "δ",
        "unit",
        "accountant",
        "seeded noise",
        "hyper-parameters",
        "privrec",
        " ± ",
        "Q1",
        "Q4",
        "no (CSPRNG)",
        "factors=4",
        "dpals (ε=4)",
        "popularity",
        "itemknn",
    ):
        assert needle in text, needle
    doc = json.loads(js.read_text())
    assert "not for release" in doc["not_private"]  # the HTML's caveat travels with the numbers
    rows = {r["model"]: r for r in doc["rows"]}
    assert rows["dpals (ε=1)"]["draws"] == 2 and "Recall@20" in rows["dpals (ε=1)"]["std"]
    assert set(rows["dpals (ε=4)"]["quartiles"]) == {"Q1", "Q2", "Q3", "Q4"}
    assert (
        rows["popularity"]["epsilon"] is None and rows["dpals (ε=1)"]["details"]["delta"] == "1e-06"
    )
    for artifact in (html, js, html.with_suffix(".png")):
        no_user_data(artifact, **_ids(members))


def test_report_plot_draws_baselines_distinctly() -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    from privrec.report import ReportRow
    from privrec.report.html import _draw

    rows = [
        ReportRow(n, n, math.inf, {"R": 0.1 * i}) for i, n in enumerate(["a", "b", "c", "d"], 1)
    ]
    rows.append(ReportRow("p (ε=1)", "p", 1.0, {"R": 0.2}, spread={"R": 0.01}))
    fig = matplotlib.pyplot.figure()
    ax = fig.add_subplot()
    _draw(ax, rows, "R", [1.0], None)
    styles = {
        (
            line.get_color(),
            str(line.get_linestyle()),
            str(line.get_dashes() if hasattr(line, "get_dashes") else ""),
        )
        for line in ax.get_lines()[-4:]
    }
    assert len(styles) == 4, "baselines must not all look alike"


def test_demo_uses_the_report_code(tmp_path: Path, no_user_data: Any) -> None:
    report = tmp_path / "demo.html"
    res = runner.invoke(app, ["demo", "--users", "437", "--items", "61", "--report", str(report)])
    assert res.exit_code == 0, res.output
    text = report.read_text()
    assert "accountant" in text and "seeded noise" in text and "Q1" in text
    no_user_data(report, user_ids=[], counts=[N_USERS])


def test_python_dash_m_privrec() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "privrec", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "privrec" in res.stdout and "report" in res.stdout


def test_train_with_explicit_catalogue_and_tuning_declaration(
    members: Path, tmp_path: Path
) -> None:
    items = tmp_path / "catalogue.txt"
    catalogue = [f"item-{i:03d}" for i in range(61)] + ["item-new-release"]
    items.write_text("item\n" + "\n".join(catalogue) + "\n")
    model = tmp_path / "pop.npz"
    res = runner.invoke(
        app,
        ["train", "-d", str(members), "-f", "csv", "-m", "dppopularity", *PRIVATE,
         "--items", str(items), "--tuning", "private", "-o", str(model)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    from privrec.models import load_model

    m = load_model(model)
    assert list(m.item_ids_) == catalogue and m.guarantee_.catalogue == "given"
    # the line names the given (public) catalogue's exact size, which the file holds — not
    # the number of items in the data (learnt from it, and exact)
    assert "users × 62 items" in " ".join(res.stdout.split()), res.stdout
    text = runner.invoke(app, ["privacy", "explain", str(model)]).output
    assert "passed explicitly" in text and "NOT charged" in text
    res = runner.invoke(
        app, ["train", "-d", str(members), "-f", "csv", "-m", "popularity", "--tuning", "public"]
    )
    assert res.exit_code == 1 and "not a private model" in res.output
    items.write_text("item-000\n")
    res = runner.invoke(
        app,
        ["train", "-d", str(members), "-f", "csv", "-m", "dppopularity", *PRIVATE, "--items", str(items),
         "-o", str(tmp_path / "x.npz")],
    )  # fmt: skip
    assert res.exit_code == 1 and "not in the given catalogue" in res.output


def test_train_without_a_catalogue_rounds_the_data_item_count(
    members: Path, tmp_path: Path
) -> None:
    """Without --items a private model's catalogue is the data's items: its size is learnt
    from the data and prints rounded, like the users; a non-private model prints it exact."""
    n_items = pd.read_csv(members)["item"].nunique()
    res = runner.invoke(
        app,
        ["train", "-d", str(members), "-f", "csv", "-m", "dppopularity", *PRIVATE,
         "-o", str(tmp_path / "pop.npz")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    line = " ".join(res.stdout.split())
    assert f"× ≈ {round(n_items, -1)} items" in line and f"× {n_items} items" not in line, line
    plain = runner.invoke(
        app,
        [
            "train",
            "-d",
            str(members),
            "-f",
            "csv",
            "-m",
            "popularity",
            "-o",
            str(tmp_path / "p.npz"),
        ],
    )
    assert plain.exit_code == 0, plain.output
    assert f"× {n_items} items" in " ".join(plain.stdout.split()), plain.stdout


def test_seeded_training_does_not_print_a_bare_privacy_claim(members: Path, tmp_path: Path) -> None:
    """The warning goes to stderr; stdout's summary line must itself say the model is not private."""
    args = ["train", "-d", str(members), "-f", "csv", "-m", "dppopularity", *PRIVATE]
    seeded = runner.invoke(app, [*args, "-p", "seed=3", "-o", str(tmp_path / "seeded.npz")])
    assert seeded.exit_code == 0, seeded.output
    line = " ".join(seeded.stdout.split())
    assert "-DP per user" in line and "seeded: this model is NOT private" in line, line
    fresh = runner.invoke(app, [*args, "-o", str(tmp_path / "fresh.npz")])
    assert fresh.exit_code == 0, fresh.output
    assert "NOT private" not in fresh.stdout


def test_verify_says_an_unsigned_consistent_forgery_is_not_proof_of_origin(
    members: Path, tmp_path: Path
) -> None:
    """Someone who edits both the events and ε keeps the file consistent: ``verify`` cannot
    refuse it without a signature, so it must not read as proof; a signature or the ledger can."""
    from privrec.privacy.guarantee import PrivacyGuarantee

    model = tmp_path / "pop.npz"
    args = ["train", "-d", str(members), "-f", "csv", "-m", "dppopularity", *PRIVATE]
    assert runner.invoke(app, [*args, "-o", str(model)]).exit_code == 0
    with np.load(model, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes().decode())
    g = meta["extra"]["guarantee"]
    for e in g["events"]:
        e["event"]["noise_multiplier"] *= 10  # claims 10× the noise that was drawn
    g["epsilon"] = PrivacyGuarantee.model_validate(g).recompute_epsilon()
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    forged = tmp_path / "forged.npz"
    np.savez_compressed(forged, **arrays)
    res = runner.invoke(app, ["privacy", "verify", str(forged)])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "does not show who produced the file" in out, out
