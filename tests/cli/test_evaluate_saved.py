"""``privrec evaluate --model-file``: a saved (private) model evaluated without training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.data import Interactions
from privrec.evaluation import evaluate, on_split, random_holdout
from privrec.models import load_model
from privrec.models.popularity import Popularity

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


@pytest.fixture
def udata(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 121):
        items = rng.choice(
            np.arange(1, 41), size=12, replace=False, p=np.r_[np.full(20, 0.04), np.full(20, 0.01)]
        )
        lines += [f"{u}\t{i}\t5\t{880000000 + t}" for t, i in enumerate(items)]
    path = tmp_path / "u.data"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_saved_private_model_is_evaluated_without_training(udata: Path, tmp_path: Path) -> None:
    model = tmp_path / "dppop.npz"
    res = runner.invoke(
        app,
        ["train", "-d", str(udata), "-m", "dppopularity", "--epsilon", "4", "--delta", "1e-4", "--unit", "user",
         "-o", str(model)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert load_model(model).n_users_ == 0  # a private file: no users to recommend to by id
    js = tmp_path / "res.json"
    args = ["evaluate", "--model-file", str(model), "-d", str(udata), "--k", "5", "--json", str(js)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "dppopularity (dppop.npz)" in res.output and "guarantee verified" in res.output
    (row,) = json.loads(js.read_text())
    assert row["model"] == "dppopularity (dppop.npz)" and row["metrics"]["recall"]["5"] > 0
    # mixed with a model trained on the same split, in one run
    both = runner.invoke(app, [*args[:-2], "-m", "popularity"])
    assert both.exit_code == 0, both.output
    assert "dppopularity (dppop.npz)" in both.output and "popularity" in both.output


def test_catalogues_are_matched_by_external_id() -> None:
    """A model over another catalogue (fewer items, other order, text ids) scores the same
    users the same way: unknown items are never recommended, unknown targets are misses."""
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(50), 6)
    items = rng.integers(0, 12, size=users.size)
    data = Interactions.from_arrays(users, items)
    split = random_holdout(data, test_fraction=0.3, seed=0)
    here = Popularity().fit(split.train)
    direct = evaluate(here, split, k=3)
    via = evaluate(on_split(here, split), split, k=3)  # the same catalogue: the same numbers
    assert via.metric("recall", 3) == pytest.approx(direct.metric("recall", 3))
    # a model whose catalogue is the split's items 0..5 only, as text ids, in reverse order
    known = np.flatnonzero(np.isin(split.train.item_ids, np.arange(6)))
    sub = Interactions.from_arrays(users[items < 6], np.asarray([str(i) for i in items[items < 6]]))
    other = Popularity().fit(sub)
    wrapped = on_split(other, split)
    top, _ = wrapped.recommend(np.arange(10), k=3)
    assert set(top[top >= 0].tolist()) <= set(known.tolist())
    assert evaluate(wrapped, split, k=3).n_users == direct.n_users


def test_a_model_sharing_no_item_is_refused(udata: Path, tmp_path: Path) -> None:
    other = Interactions.from_arrays(np.arange(4), np.asarray(["a", "b", "c", "d"]))
    path = Popularity().fit(other).save(tmp_path / "other.npz")
    res = runner.invoke(app, ["evaluate", "--model-file", str(path), "-d", str(udata)])
    assert res.exit_code == 1 and "shares no item" in res.output
    assert "Traceback" not in res.output
    none = runner.invoke(app, ["evaluate", "-d", str(udata)])
    assert none.exit_code == 1 and "nothing to evaluate" in none.output
