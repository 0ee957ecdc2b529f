"""EASE's memory (issue 10, item 10): peak ≤ 2.5 dense n × n float64 copies, and a guard that
says how much memory a catalogue needs. Measured with tracemalloc (numpy reports its
allocations to it), never with timings."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.data.synthetic import synthetic
from privrec.errors import ConfigError
from privrec.models import EASE
from privrec.models import ease as ease_module
from privrec.models.ease import ease_from_gram, item_gram


def _peak(fn):  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak - base


def test_ease_fit_peak_is_at_most_two_and_a_half_dense_copies() -> None:
    n = 900
    data = synthetic(n_users=400, n_items=n, seed=0)
    dense = 8 * n * n
    model, peak = _peak(lambda: EASE(regularization=50.0).fit(data))
    # the fit keeps the training matrix (a few hundred KB here) besides the weights
    assert peak <= 2.5 * dense, f"peak {peak / dense:.2f} dense copies"
    assert model.weights_.dtype == np.float32


def test_in_place_inverse_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(1)
    x = sp.random(200, 60, density=0.1, random_state=2, format="csr", dtype=np.float64)
    g = item_gram(x)
    np.testing.assert_allclose(g, (x.T @ x).toarray(), rtol=1e-12)
    p = np.linalg.inv(g + 5.0 * np.eye(60))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(ease_from_gram(g, 5.0), b, rtol=1e-4, atol=1e-6)
    # an indefinite (noisy) Gram matrix takes the LU path and still gives the inverse formula
    noise = rng.standard_normal((60, 60))
    noisy = g + 40 * (noise + noise.T)
    p = np.linalg.inv(noisy + 5.0 * np.eye(60))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    assert np.linalg.eigvalsh(noisy + 5.0 * np.eye(60)).min() < 0
    work = noisy.copy()
    np.testing.assert_allclose(ease_from_gram(work, 5.0, overwrite=True), b, rtol=1e-3, atol=1e-5)


def test_guard_says_how_much_memory_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    x = sp.csr_matrix(np.ones((3, 50), dtype=np.float32))
    monkeypatch.setattr(ease_module, "available_memory", lambda: 10_000)
    with pytest.raises(
        ConfigError, match=r"needs about .* GB at its peak .* only .* GB is available"
    ):
        EASE().fit(x)
    monkeypatch.setattr(ease_module, "available_memory", lambda: None)
    EASE().fit(x)  # unknown memory: no guard
    with pytest.raises(ConfigError, match="max_items"):
        EASE(max_items=10).fit(x)
    # 40k items: the old fixed limit allowed a run that needs this much
    assert ease_module.ease_memory_bytes(40_000) > 20e9
