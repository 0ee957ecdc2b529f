"""Contribution bounds: removing any one user changes bounded statistics by at most the sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from privrec.errors import ConfigError
from privrec.models.dp_popularity import bounded_counts
from privrec.privacy.contribution import adaptive_weights, clip_rows, sample_per_user
from privrec.privacy.randomness import seeded_generator
from privrec.privacy.units import PrivacyUnit

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


@st.composite
def matrices(draw: st.DrawFn) -> sp.csr_matrix:
    n_users = draw(st.integers(1, 25))
    n_items = draw(st.integers(1, 30))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    return sp.csr_matrix(dense)


def _without_user(m: sp.csr_matrix, u: int) -> sp.csr_matrix:
    """Neighbouring dataset: user ``u``'s whole history removed (row emptied, indices kept)."""
    d = m.toarray()
    d[u] = 0
    return sp.csr_matrix(d)


@given(matrices(), st.integers(1, 8), st.integers(0, 10**6), st.data())
def test_sampled_counts_user_sensitivity(
    m: sp.csr_matrix, b: int, seed: int, data: st.DataObject
) -> None:
    u = data.draw(st.integers(0, m.shape[0] - 1))
    c1, sens = bounded_counts(m, PrivacyUnit.USER, b, seeded_generator(seed, warn=False))
    c2, _ = bounded_counts(
        _without_user(m, u), PrivacyUnit.USER, b, seeded_generator(seed, warn=False)
    )
    assert sens == pytest.approx(np.sqrt(b))
    assert np.linalg.norm(c1 - c2) <= sens + 1e-9


@given(matrices(), st.integers(0, 10**6), st.data())
def test_counts_interaction_sensitivity(m: sp.csr_matrix, seed: int, data: st.DataObject) -> None:
    if m.nnz == 0:
        return
    j = data.draw(st.integers(0, m.nnz - 1))
    d = m.toarray()
    rows, cols = np.nonzero(d)
    d[rows[j], cols[j]] = 0
    c1, sens = bounded_counts(m, PrivacyUnit.INTERACTION, 5, seeded_generator(seed, warn=False))
    c2, _ = bounded_counts(
        sp.csr_matrix(d), PrivacyUnit.INTERACTION, 5, seeded_generator(seed, warn=False)
    )
    assert np.linalg.norm(c1 - c2) <= sens + 1e-9


@given(matrices(), st.integers(1, 6))
def test_sample_per_user_caps_rows(m: sp.csr_matrix, b: int) -> None:
    out = sample_per_user(m, b, seeded_generator(0, warn=False))
    lens = np.diff(out.indptr)
    assert (lens <= b).all()
    assert (lens == np.minimum(np.diff(m.indptr), b)).all()
    assert ((out.toarray() > 0) <= (m.toarray() > 0)).all(), "only the user's own items are kept"


def test_least_popular_sampling_prefers_tail() -> None:
    m = sp.csr_matrix(np.ones((3, 6), dtype=np.float32))
    counts = np.array([60, 50, 40, 30, 20, 10])
    out = sample_per_user(m, 2, seeded_generator(0, warn=False), "least_popular", counts)
    assert (out.toarray()[:, 4:] == 1).all() and out.nnz == 6
    with pytest.raises(ConfigError):
        sample_per_user(m, 2, seeded_generator(0, warn=False), "least_popular")
    with pytest.raises(ConfigError):
        sample_per_user(m, 0, seeded_generator(0, warn=False))


@given(matrices(), st.floats(0.0, 2.0), st.floats(0.5, 50.0))
def test_adaptive_weights_budget(m: sp.csr_matrix, mu: float, budget: float) -> None:
    counts = np.asarray(m.sum(axis=0)).ravel() + 1
    w = adaptive_weights(m, counts, mu, budget)
    sq = np.asarray(w.multiply(w).sum(axis=1)).ravel()
    has = np.diff(m.indptr) > 0
    np.testing.assert_allclose(sq[has], budget, rtol=1e-9)
    assert (sq[~has] == 0).all()


def test_adaptive_weights_favour_tail() -> None:
    m = sp.csr_matrix(np.ones((1, 3), dtype=np.float32))
    w = adaptive_weights(m, np.array([100.0, 10.0, 1.0]), 0.5, 3.0).toarray().ravel()
    assert w[0] < w[1] < w[2]
    np.testing.assert_allclose(
        adaptive_weights(m, np.array([100.0, 10.0, 1.0]), 0.0, 3.0).data, 1.0
    )


def test_clip_rows() -> None:
    x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = clip_rows(x, 1.0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), [1.0, 0.5, 0.0])
    with pytest.raises(ConfigError):
        clip_rows(x, 0.0)
