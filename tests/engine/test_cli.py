"""``privrec data shard`` and ``privrec train --engine ray`` end to end (one per-step progress line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_shard_then_train_on_ray(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "ratings.parquet"
    small_data.to_dataframe()[["user", "item"]].to_parquet(csv)
    runner = CliRunner()
    out = runner.invoke(app, ["data", "shard", str(csv), str(tmp_path / "shards"), "--shards", "4"])
    assert out.exit_code == 0, out.output
    assert "wrote 4 shard files" in out.output
    res = runner.invoke(
        app,
        ["train", "--engine", "ray", "--workers", "2", "--data", str(tmp_path / "shards"),
         "-m", "dpals", "--epsilon", "1", "--delta", "1e-6", "--unit", "user",
         "-p", "iterations=2", "-p", "factors=4", "-o", str(tmp_path / "m.npz")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "step 1/2" in res.output and "step 2/2" in res.output
    assert "users" in res.output and "≈ ≈" not in res.output  # counts rounded once, as in train
    assert "privacy: (1, 1.0e-06)-DP per user" in res.output
    from privrec.models import DPALS

    model = DPALS.load(tmp_path / "m.npz")
    assert model.item_factors_.shape == (small_data.n_items, 4)
    assert np.isfinite(model.item_factors_).all()


def test_weak_delta_and_non_distributed_models_are_refused(shards: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["train", "--engine", "ray", "--data", str(shards), "-o", str(tmp_path / "m.npz")]
    res = runner.invoke(app, [*base, "-m", "dppopularity", "--epsilon", "1", "--delta", "0.1",
                              "--unit", "user"])  # fmt: skip
    assert res.exit_code == 1 and "delta" in res.output
    assert not (tmp_path / "m.npz").exists()
    res = runner.invoke(app, [*base, "-m", "ease"])
    assert res.exit_code == 1 and "--engine ray trains dpals" in res.output
    res = runner.invoke(app, [*base, "-m", "dpals", "--epsilon", "1", "--delta", "1e-6",
                              "--unit", "user", "--engine", "spark"])  # fmt: skip
    assert res.exit_code == 1 and "unknown engine" in res.output
