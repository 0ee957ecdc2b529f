"""Shared fixtures: real-data finder that skips with a reason, small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from privrec.data.shared import ENV_VAR, shared_dataset

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def require_dataset(name: str) -> Path:
    """Path of a shared real dataset, or skip the test saying where it was looked for."""
    path = shared_dataset(name)
    if path is None:
        pytest.skip(f"real dataset {name!r} not found in ../shared/data or ${ENV_VAR}")
    return path


@pytest.fixture
def dataset():  # type: ignore[no-untyped-def]
    """``dataset("ml-100k")`` -> Path, skipping when the shared data are absent."""
    return require_dataset


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A small ImplicitALS model (40 users × 60 items, 8 factors) trained through the CLI."""
    import numpy as np
    from typer.testing import CliRunner

    from privrec.cli.main import app

    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 41):
        for t, i in enumerate(rng.choice(np.arange(1, 61), size=10, replace=False)):
            lines.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + t}")
    data = tmp_path / "u.data"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "als.npz"
    res = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--model", "als", "-o", str(out), "-p", "factors=8"],
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def pg_cluster():  # type: ignore[no-untyped-def]
    """One throw-away PostgreSQL cluster per test session (ledger and service tests share it),
    or the reason it could not start (a string)."""
    from privrec.governance.pgcluster import start, stop

    started = start()
    if isinstance(started, str):
        yield started
        return
    try:
        yield started
    finally:
        stop(started)
