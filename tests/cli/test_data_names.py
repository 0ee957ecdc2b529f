"""``-d NAME``: every command reading ``--data`` finds a shared dataset by its name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app


def test_train_and_info_read_a_shared_dataset_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reviewer found ``train -d ml-100k`` said "file not found" where ``evaluate`` and
    ``federated simulate`` read the shared dataset of that name."""
    rng = np.random.default_rng(0)
    ml = tmp_path / "shared" / "mini-100k"
    ml.mkdir(parents=True)
    lines = [
        f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + i}"
        for u in range(1, 41)
        for i in rng.choice(np.arange(1, 21), size=5, replace=False)
    ]
    (ml / "u.data").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PRIVREC_DATA", str(tmp_path / "shared"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "m.npz"
    res = CliRunner().invoke(app, ["train", "-d", "mini-100k", "-m", "popularity", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()
    missing = CliRunner().invoke(app, ["train", "-d", "nope", "-m", "popularity", "-o", str(out)])
    assert missing.exit_code == 1
    assert "no such file, folder or shared dataset" in " ".join(missing.output.split())
