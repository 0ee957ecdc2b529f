"""A configuration's ``../shared/data/...`` path works from any working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from privrec.data.shared import ENV_VAR, resolve_shared_path


def test_a_shared_data_path_is_found_under_privrec_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "elsewhere" / "data"
    (root / "ml-x").mkdir(parents=True)
    (root / "ml-x" / "u.data").write_text("1\t2\t3\t4\n")
    monkeypatch.setenv(ENV_VAR, str(root))
    monkeypatch.chdir(tmp_path)  # "../shared/data" does not exist from here
    assert resolve_shared_path("../shared/data/ml-x") == root / "ml-x"
    assert resolve_shared_path("../shared/data/ml-x/u.data") == root / "ml-x" / "u.data"
    # existing paths and paths elsewhere are left alone (the loader reports what is missing)
    (tmp_path / "here.csv").write_text("user,item\n")
    assert resolve_shared_path("here.csv") == Path("here.csv")
    assert resolve_shared_path("../shared/data/nope") == Path("../shared/data/nope")
    assert resolve_shared_path("nowhere/ml-x") == Path("nowhere/ml-x")
