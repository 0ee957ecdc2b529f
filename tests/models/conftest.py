"""Fixtures shared by the model-file tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from privrec.data.synthetic import synthetic
from privrec.errors import PrivacyWarning
from privrec.models import DPALS


@pytest.fixture(scope="module")
def dpals_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small saved DPALS file (200 users × 40 items, seeded: a fixture, not a release)."""
    data = synthetic(n_users=200, n_items=40, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        model = DPALS(epsilon=2.0, delta=1e-6, unit="user", factors=4, seed=0).fit(data)
    return model.save(tmp_path_factory.mktemp("m") / "dpals.npz")
