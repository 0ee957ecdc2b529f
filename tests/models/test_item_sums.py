"""The per-item weighted sums equal the sparse products they replace."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from privrec.models.item_sums import item_sums


@settings(max_examples=30)
@given(st.integers(1, 40), st.integers(1, 30), st.integers(1, 9), st.integers(0, 2**31))
def test_item_sums_equal_sparse_products(n: int, m: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = sp.csr_matrix((rng.random((n, m)) < 0.3) * rng.standard_normal((n, m)), dtype=np.float32)
    x = rng.standard_normal((n, k)).astype(np.float32)
    a, b = item_sums(w, x, square=True)
    np.testing.assert_allclose(a, w.T @ x, rtol=1e-4, atol=1e-4)
    assert b is not None
    np.testing.assert_allclose(b, w.T @ (x * x), rtol=1e-4, atol=1e-4)
    assert item_sums(w, x)[1] is None
    with pytest.raises(ValueError):
        item_sums(w, x[:-1] if n > 1 else np.zeros((2, k), np.float32))
