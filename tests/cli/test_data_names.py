"""``-d NAME``: every command reading ``--data`` finds a shared dataset by its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from privrec.cli.main import app


def test_train_reads_a_shared_dataset_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ml100k_like: Any
) -> None:
    """A reviewer found ``train -d ml-100k`` said "file not found" where ``evaluate`` and
    ``federated simulate`` read the shared dataset of that name."""
    ml100k_like(tmp_path / "shared" / "mini-100k", users=40, per_user=5)
    monkeypatch.setenv("PRIVREC_DATA", str(tmp_path / "shared"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "m.npz"
    res = CliRunner().invoke(app, ["train", "-d", "mini-100k", "-m", "popularity", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()
    missing = CliRunner().invoke(app, ["train", "-d", "nope", "-m", "popularity", "-o", str(out)])
    assert missing.exit_code == 1
    assert "no such file, folder or shared dataset" in " ".join(missing.output.split())
    # only a plain name is looked up beside the shared folder: never ../../anything
    (tmp_path / "outside.txt").write_text("1 2\n")
    escape = CliRunner().invoke(
        app, ["train", "-d", "../outside.txt", "-m", "popularity", "-o", str(out)]
    )
    assert escape.exit_code == 1 and "not found" in escape.output
    # a path into a shared/data folder as the docs write it works from any working directory
    docs_form = CliRunner().invoke(
        app, ["train", "-d", "../shared/data/mini-100k", "-m", "popularity", "-o", str(out)]
    )
    assert docs_form.exit_code == 0, docs_form.output
