"""``privrec tune`` and ``privrec train-tiers`` end to end, with the saved guarantees opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.models import load_model

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


@pytest.fixture
def udata(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 121):
        for t, i in enumerate(rng.choice(np.arange(1, 41), size=10, replace=False)):
            lines.append(f"{u}\t{i}\t5\t{880000000 + t}")
    path = tmp_path / "u.data"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tune_charges_the_selection(udata: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text("[[candidates]]\nmax_per_user = 3\n\n[[candidates]]\nmax_per_user = 8\n")
    out = tmp_path / "tuned.npz"
    res = runner.invoke(
        app,
        ["tune", "-d", str(udata), "-m", "dppopularity", "-g", str(grid), "--epsilon", "1",
         "--delta", "1e-4", "-o", str(out), "--format", "ml-100k"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "selection included" in res.output
    g = load_model(out).privacy_guarantee
    assert g.accountant.value == "rdp" and g.epsilon <= 1.0
    assert g.events[0]["event"]["type"] == "RepeatAndSelectDpEvent"
    bad = tmp_path / "bad.toml"
    bad.write_text("candidates = []\n")
    res = runner.invoke(
        app,
        ["tune", "-d", str(udata), "-m", "dppopularity", "-g", str(bad), "--epsilon", "1",
         "--delta", "1e-4", "--format", "ml-100k"],
    )  # fmt: skip
    assert res.exit_code == 1 and "candidates" in res.output
    for text, encoding, want in (
        ("candidates = [1, 2]\n", "utf-8", "candidates"),  # not tables
        ("[[candidates]]\nbogus = 1\n", "utf-8", "bogus"),  # checked before any charge
        ("[[candidates]]\nmax_per_user = 3\n", "utf-16", "UTF-8"),
    ):
        bad.write_text(text, encoding=encoding)
        res = runner.invoke(
            app,
            ["tune", "-d", str(udata), "-m", "dppopularity", "-g", str(bad), "--epsilon", "1",
             "--delta", "1e-4", "--format", "ml-100k", "-o", str(tmp_path / "never.npz")],
        )  # fmt: skip
        assert res.exit_code == 1 and want in res.output and "Traceback" not in res.output
        assert not (tmp_path / "never.npz").exists()


def test_train_tiers_from_a_csv(udata: Path, tmp_path: Path) -> None:
    asks = tmp_path / "asks.csv"
    rows = ["user,epsilon"] + [f"{u},{[0.5, 1.0, 3.0][u % 3]}" for u in range(1, 121)]
    asks.write_text("\n".join(rows) + "\n")
    out = tmp_path / "tiered.npz"
    args = ["train-tiers", "-d", str(udata), "-m", "dppopularity", "--user-epsilons", str(asks),
            "--epsilon", "3", "--delta", "1e-4", "--tiers", "0.5,1", "-o", str(out),
            "--format", "ml-100k"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    tiers = load_model(out).privacy_guarantee.tiers
    assert [t["requested_epsilon"] for t in tiers] == [0.5, 1.0, 3.0]
    asks.write_text("\n".join(rows[:-1]) + "\n")  # one user without a tier
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "every training user needs a tier" in res.output
    asks.write_text("\n".join([*rows[:-1], "120,0.7"]) + "\n")  # an undeclared tier
    res = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert res.exit_code == 1 and "declared tier" in res.output
    assert "one of 0.5, 1, 3" in res.output  # the tiers on offer are shown, not eaten as markup
    # a user twice (the last row would have won: 0.5 then 3) is refused, at the file's own line
    asks.write_text("\n".join(["# tiers", *rows, "3,3"]) + "\n")
    res = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert res.exit_code == 1 and "more than one row" in res.output
    assert f"asks.csv:{len(rows) + 2}" in res.output
    # a byte-order mark (spreadsheet exports) is not part of the header; NaN is not an ε
    asks.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    assert runner.invoke(app, args).exit_code == 0
    asks.write_text("\n".join([*rows[:-1], "120,nan"]) + "\n")
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "finite" in res.output
    assert not any(p.name.startswith("tiered.npz.") for p in tmp_path.iterdir())
    for extra in ("tiers=0.1", "unit=interaction", "epsilon=9"):  # never silently overridden
        res = runner.invoke(app, [*args, "-p", extra])
        assert res.exit_code == 1 and "not accepted" in res.output


def test_train_federated_dpals_from_the_cli(udata: Path, tmp_path: Path) -> None:
    # FederatedDPALS is a privrec.models entry point: `privrec train -m federated_dpals`
    out = tmp_path / "fed.npz"
    res = runner.invoke(
        app,
        ["train", "-d", str(udata), "-m", "federated_dpals", "--epsilon", "5", "--delta", "1e-4", "--unit", "user",
         "-p", "factors=4", "-p", "secure=fast", "-o", str(out), "--format", "ml-100k"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    g = load_model(out).privacy_guarantee
    assert g.accountant.value == "rdp" and g.epsilon <= 5.0
    with np.load(out, allow_pickle=False) as z:
        assert not any("user" in n for n in z.files), z.files


def test_train_tiers_through_the_ledger(udata: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    def invoke(*args: str, key: str | None = None) -> tuple[int, str]:
        env = {"COLUMNS": "250", **({"PRIVREC_API_KEY": key} if key else {})}
        res = runner.invoke(app, list(args), env=env)
        return res.exit_code, res.output

    code, out = invoke("ledger", "init", "--db", url, "--owner", "olga")
    assert code == 0, out
    owner = out.strip().splitlines()[-1]
    pol = tmp_path / "policy.toml"
    pol.write_text(
        'purpose = "recs"\nunit = "user"\ncolumns = ["user", "item"]\n\n'
        "[budget]\nepsilon = 4\ndelta = 1e-4\n"
    )
    assert invoke("policy", "set", str(pol), "--dataset", "ml", "--db", url, key=owner)[0] == 0
    assert invoke("forget", "5", "--dataset", "ml", "--db", url, key=owner)[0] == 0
    code, out = invoke("keys", "create", "ann", "--role", "analyst", "--db", url, key=owner)
    analyst = out.strip().splitlines()[-1]
    asks = tmp_path / "asks.csv"
    rows = ["user,epsilon"] + [f"{u},{[0.5, 1.0, 3.0][u % 3]}" for u in range(1, 121)]
    out_path = tmp_path / "tiered.npz"
    args = ["train-tiers", "-d", str(udata), "-m", "dppopularity", "--user-epsilons", str(asks),
            "--epsilon", "3", "--delta", "1e-4", "--tiers", "0.5,1", "-o", str(out_path),
            "--format", "ml-100k", "--ledger", url, "--dataset", "ml"]  # fmt: skip
    # user 5 was forgotten, user 6 was not: a file without the one or the other is refused
    # alike (checked against the data file, before the policy), so the refusal does not tell
    # the analyst, for free, whom the policy removed
    refusals = []
    for gone in ("5,", "6,"):
        asks.write_text("\n".join(r for r in rows if not r.startswith(gone)) + "\n")
        code, out = invoke(*args, key=analyst)
        assert code == 1 and "every training user needs a tier" in out
        refusals.append(" ".join(out.split()).replace("'6'", "'5'"))
    assert refusals[0] == refusals[1]
    # the same for a row asking for an undeclared tier: the forgotten user's row (5) is refused
    # as the kept user's (6) is, naming the file's line (it was checked on the kept users only)
    refusals = []
    for who in ("5,", "6,"):
        odd = [r if not r.startswith(who) else f"{who}0.7" for r in rows]
        asks.write_text("\n".join(odd) + "\n")
        code, out = invoke(*args, key=analyst)
        flat = " ".join(out.split())
        assert code == 1 and "not a declared tier" in flat, out
        line = 1 + next(i for i, r in enumerate(odd) if r.startswith(who))
        assert f"asks.csv:{line}" in flat.replace(" ", "")
        refusals.append(flat.replace(f"asks.csv:{line}", "asks.csv:N"))
    assert refusals[0] == refusals[1]
    assert invoke("ledger", "status", "--dataset", "ml", "--db", url, key=owner)[0] == 0
    asks.write_text("\n".join(rows) + "\n")  # user 5's row is ignored: not trained on
    code, out = invoke(*args, key=analyst)
    assert code == 0, out
    assert "ledger: charge" in out and "remaining 1" in out
    model = load_model(out_path)
    assert [t["requested_epsilon"] for t in model.privacy_guarantee.tiers] == [0.5, 1.0, 3.0]
    code, out = invoke(*args, key=analyst)  # over the recorded release: refused, nothing charged
    assert code == 1 and "PolicyViolation" in out and "artifact 1" in " ".join(out.split())
    args[args.index(str(out_path))] = str(tmp_path / "tiered-2.npz")
    code, out = invoke(*args, key=analyst)  # a second fit at ε = 3 exceeds the budget of 4
    assert code == 1 and "BudgetExceededError" in out
    asks.write_text("\n".join([*rows, "999,1"]) + "\n")  # a typo is refused before any charge
    code, out = invoke(*args[:-4], "--ledger", url, "--dataset", "ml", key=analyst)
    assert code == 1 and "unknown user" in out
