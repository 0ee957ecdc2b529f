"""What a hostile review of the drift monitor found, each pinned.

* Quality tracking of a NON-private model trained on the monitored users had no valid
  sensitivity (one user moved the recall sum by 2.3 against the √2 the noise is sized for): such
  a model is refused unless declared trained elsewhere; a private model's guarantee is named.
* A model over remapped item ids passed the catalogue check (the size only) and its quality
  was noise about other items.
* Without a ledger nothing says that a run is not charged and composes with nothing.
* Bad arguments of the library and the simulation gave untyped errors or meaningless summaries.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.data import Interactions
from privrec.errors import ConfigError, DataError, PrivacyWarning
from privrec.models import EASE, DPPopularity
from privrec.monitor import DriftMonitor, MonitorConfig, synthetic_stream
from privrec.monitor.core import check_model_catalogue
from privrec.monitor.evaluate import simulate

from .files import timed_udata

CFG = MonitorConfig(epsilon_per_window=1.0)


def _timestamped(n_users: int = 300, n_items: int = 40) -> Interactions:
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(rng.random((n_users, n_items)) < 0.2)
    m = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_users, n_items))
    ts = 1_600_000_000 + rng.integers(0, 60 * 86400, m.nnz).astype(np.float64)
    users = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    items = np.array([f"i{j}" for j in range(n_items)], dtype=object)
    with pytest.raises(DataError, match="numpy array"):
        Interactions(m, list(users), items, timestamps=ts)  # type: ignore[arg-type]
    return Interactions(m, users, items, timestamps=ts)


def test_a_non_private_model_is_refused_unless_declared_trained_elsewhere() -> None:
    stream = synthetic_stream(4, users_per_window=200, n_items=60, seed=0)
    ease = EASE(regularization=50.0).fit(sp.vstack(stream[:3]))
    with pytest.raises(ConfigError, match="not differentially private"):
        DriftMonitor(CFG, 60, model=ease)
    with pytest.warns(PrivacyWarning, match="declared, not checked"):
        mon = DriftMonitor(CFG, 60, model=ease, model_trained_elsewhere=True)
    mon.observe(stream[3])
    assert "trained on data holding none of the monitored users" in mon.guarantee.threat_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeded = DPPopularity(epsilon=1.0, delta=1e-5, unit="user", seed=0).fit(stream[0])
        private = DPPopularity(epsilon=1.0, delta=1e-5, unit="user").fit(stream[0])
    with pytest.raises(ConfigError, match="seeded"):
        DriftMonitor(CFG, 60, model=seeded)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)  # nothing to warn about
        mon = DriftMonitor(CFG, 60, model=private)
    assert "tracked model's own guarantee" in mon.guarantee.threat_model


def test_the_catalogue_check_compares_item_ids_in_order() -> None:
    data = _timestamped()
    ease = EASE(regularization=50.0).fit(data)
    check_model_catalogue(ease, data.n_items, data.item_ids)  # the same ids: fine
    with pytest.raises(DataError, match="item ids differ"):
        check_model_catalogue(ease, data.n_items, list(reversed(data.item_ids)))
    with pytest.raises(DataError, match="catalogue differs"):
        check_model_catalogue(ease, data.n_items + 1)


def test_cli_refuses_a_non_private_model_and_warns_without_a_ledger(tmp_path: Path) -> None:
    data = timed_udata(tmp_path)
    model = tmp_path / "ease.npz"
    res = CliRunner().invoke(
        app, ["train", "-d", str(data), "-f", "ml-100k", "-m", "ease", "-o", str(model)]
    )
    assert res.exit_code == 0, res.output
    base = ["monitor", "run", "-d", str(data), "-f", "ml-100k", "--epsilon", "1", "--days", "14"]
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, [*base, "--model", str(model), "--json", str(out)])
    assert res.exit_code == 1 and "not differentially private" in " ".join(res.output.split())
    assert not out.exists()
    res = CliRunner().invoke(
        app, [*base, "--model", str(model), "--model-trained-elsewhere", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # the CLI prints its warnings
    assert "charged to no budget" in said and "declared, not checked" in said
    shown = json.loads(out.read_text())
    assert "none of the monitored users" in shown["tracked_model"]
    assert "refused" in shown["assumed_public"]


def test_bad_arguments_are_typed_errors() -> None:
    for n in (float("nan"), "5", True):
        with pytest.raises(ConfigError, match="n_items"):
            DriftMonitor(CFG, n)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="users × items"):
        DriftMonitor(CFG, 10).observe("hello")
    with pytest.raises(ConfigError):
        simulate(epsilon=math.nan, trials=1)
    for kw in ({"mean_activity": -1.0}, {"temperature": 0.0}, {"shift_size": math.nan}):
        with pytest.raises(ConfigError):
            synthetic_stream(2, 10, 10, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown shift"):
        synthetic_stream(2, 10, 10, shift="bogus", shift_at=1)  # type: ignore[arg-type]
    # a shift the summary cannot mean anything about: before any tested window, or past the end
    for shift, at, windows in (("popularity", 0, 14), ("popularity", -3, 14), ("activity", 99, 14),
                               ("popularity", 4, 14), ("quality", 7, 14), ("quality", 8, 3)):  # fmt: skip
        with pytest.raises(ConfigError, match=r"shift_at|n_windows"):
            simulate(shift=shift, shift_at=at, n_windows=windows, trials=1)  # type: ignore[arg-type]
    res = CliRunner().invoke(app, ["monitor", "simulate", "--shift-at", "0", "--trials", "1"])
    assert res.exit_code == 1 and "shift_at" in res.output


def test_non_finite_timestamps_are_a_typed_error() -> None:
    """A reviewer's NaN timestamp failed as an untyped ``ValueError`` (cannot convert float NaN
    to integer) in both ``check_windows`` and ``time_windows``."""
    from types import SimpleNamespace

    from privrec.monitor.streams import check_windows, time_windows

    m = sp.csr_matrix(np.ones((3, 4)))
    for bad in (np.nan, np.inf):
        data = SimpleNamespace(timestamps=np.array([0.0] * 11 + [bad]), matrix=m)
        for f in (check_windows, time_windows):
            with pytest.raises(DataError, match="not finite"):
                f(data, 7.0)


def test_window_values_must_be_positive_and_stored_zeros_are_none() -> None:
    """A reviewer's negative window values were counted as interactions, and so (binarised
    before zeros were dropped) were explicitly stored zeros; negatives and NaN are refused
    before anything is charged, stored zeros count as nothing."""
    charged: list[object] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mon = DriftMonitor(CFG, 5, charge=lambda events, what: charged.append(what))
    for bad in (-1.0, np.nan):
        w = sp.csr_matrix(np.array([[1.0, bad, 0, 0, 0], [0, 0, 1.0, 0, 0]]))
        with pytest.raises(DataError, match=r"positive|finite"):
            mon.observe(w)
    assert charged == [] and mon.reports == []
    zeros = sp.csr_matrix((np.zeros(3), ([0, 1, 1], [0, 2, 3])), shape=(2, 5))
    assert zeros.nnz == 3
    rep = mon.observe(zeros)
    assert charged and rep.window == 1
