"""``privrec privacy verify`` / ``explain`` on a private file that carries data its guarantee
does not cover (artifact review): verify used to say OK and exit 0."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.data.synthetic import synthetic
from privrec.errors import PrivacyWarning
from privrec.models import DPPopularity

runner = CliRunner()


def _out(res: object) -> str:
    return " ".join(res.output.split())  # type: ignore[attr-defined]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("review")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        model = DPPopularity(epsilon=2.0, delta=1e-6, unit="user")
        model.fit(synthetic(n_users=150, n_items=30, seed=0))
    good = model.save(root / "pop.npz")
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(np.load(io.BytesIO(members["__meta__.npy"])).tobytes())
    lengths = np.arange(150, dtype=np.int64)  # per-user history lengths, smuggled in
    meta["arrays"]["state_history_lengths"] = {"dtype": lengths.dtype.str, "shape": [150]}
    members["state_history_lengths.npy"] = _npy(lengths)
    members["__meta__.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    bad = root / "smuggled.npz"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return good, bad


def test_verify_passes_a_genuine_file(files: tuple[Path, Path]) -> None:
    res = runner.invoke(app, ["privacy", "verify", str(files[0])])
    assert res.exit_code == 0, res.output
    assert "NOT PRIVATE" not in _out(res)


def test_verify_fails_a_file_with_uncovered_members(files: tuple[Path, Path]) -> None:
    res = runner.invoke(app, ["privacy", "verify", str(files[1])])
    assert res.exit_code == 1, res.output
    out = _out(res)
    assert "NOT A PRIVATE RELEASE" in out and "state_history_lengths" in out
    # --consistency-only keeps the arithmetic check only
    res = runner.invoke(app, ["privacy", "verify", "--consistency-only", str(files[1])])
    assert res.exit_code == 0, res.output


def test_explain_warns_about_uncovered_members(files: tuple[Path, Path]) -> None:
    res = runner.invoke(app, ["privacy", "explain", str(files[1])])
    assert res.exit_code == 0, res.output
    assert "does NOT cover" in _out(res) and "state_history_lengths" in _out(res)
