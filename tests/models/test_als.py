"""ImplicitALS and its kernels on small synthetic matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.errors import ConfigError
from privrec.models.als import AUTO_ALPHA0, ImplicitALS
from privrec.models.als_kernels import (
    cg_half_step,
    cholesky_half_step,
    gramian,
    item_statistics,
    regularization_weights,
    solve_from_statistics,
)
from privrec.models.base import load_model

from .contract import RecommenderContract


def planted(
    n_users: int = 120, n_items: int = 80, rank: int = 3, per_user: int = 12, seed: int = 0
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Users pick items from a low-rank preference; returns (train, held-out probabilities)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_users, rank))
    v = rng.standard_normal((n_items, rank))
    logits = 2.0 * (u @ v.T)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    rows, cols = [], []
    for user in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False, p=p[user])
        rows.extend([user] * per_user)
        cols.extend(items.tolist())
    m = sp.csr_matrix(
        (rng.integers(1, 4, size=len(rows)).astype(np.float32), (rows, cols)),
        shape=(n_users, n_items),
    )
    return m, p


def ro(a: np.ndarray) -> np.ndarray:
    """Read-only view: the model passes CSR arrays read-only, so tests reuse its compiled kernels."""
    v = a.view()
    v.flags.writeable = False
    return v


def kernel_inputs(
    m: sp.csr_matrix, k: int = 8, seed: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Item-side CSR arrays (the transposed matrix) and random user factors."""
    rng = np.random.default_rng(seed)
    iu = m.T.tocsr()
    iu.sort_indices()
    users = (rng.standard_normal((m.shape[0], k)) * 0.3).astype(np.float32)
    return (
        ro(iu.indptr.astype(np.int64)),
        ro(iu.indices.astype(np.int32)),
        ro(iu.data.astype(np.float32)),
        users,
        gramian(users).astype(np.float32),
    )


@pytest.fixture(scope="module")
def data() -> sp.csr_matrix:
    return planted()[0]


def test_loss_decreases_over_iterations(data: sp.csr_matrix) -> None:
    for solver in ("cg", "cholesky"):
        model = ImplicitALS(factors=8, iterations=6, solver=solver, num_threads=1)
        model.fit(data, record_loss=True)
        losses = np.array(model.loss_history_)
        assert len(losses) == 6
        assert np.all(np.diff(losses) <= 1e-4 * losses[:-1]), losses
        assert losses[-1] < losses[0]
        assert model.loss() == pytest.approx(losses[-1], rel=1e-4)


def test_cg_converges_to_cholesky(data: sp.csr_matrix) -> None:
    ptr, idx, w, users, gram = kernel_inputs(data)
    args = (ptr, idx, w, users, gram)
    params = (0.1, 0.05, 1.0)
    exact = np.zeros((data.shape[1], users.shape[1]), dtype=np.float32)
    cholesky_half_step(*args, exact, *params)
    errors = []
    for steps in (1, 2, 4, 8):
        x = np.zeros_like(exact)
        cg_half_step(*args, x, *params, steps)
        errors.append(float(np.abs(x - exact).max()))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 1e-3 * max(1.0, float(np.abs(exact).max()))


def test_explicit_statistics_equal_the_kernel(data: sp.csr_matrix) -> None:
    alpha0, lam, nu = 0.2, 0.03, 1.0
    ptr, idx, w, users, gram = kernel_inputs(data)
    exact = np.zeros((data.shape[1], users.shape[1]), dtype=np.float32)
    cholesky_half_step(ptr, idx, w, users, gram, exact, alpha0, lam, nu)

    lhs, rhs = item_statistics(data, users, data.data, alpha0=alpha0)
    assert lhs.shape == (data.shape[1], 8, 8) and rhs.shape == (data.shape[1], 8)
    reg = regularization_weights(np.diff(ptr), lam, alpha0, data.shape[0], nu)
    solved = solve_from_statistics(gramian(users), lhs, rhs, alpha0, reg)
    np.testing.assert_allclose(solved, exact, atol=1e-4, rtol=1e-4)

    # the statistics themselves, written out naively for one item
    j = int(np.argmax(np.diff(ptr)))
    rows = idx[ptr[j] : ptr[j + 1]]
    wj = w[ptr[j] : ptr[j + 1]]
    np.testing.assert_allclose(lhs[j], (users[rows] * wj[:, None]).T @ users[rows], rtol=1e-4)
    np.testing.assert_allclose(rhs[j], ((alpha0 + wj)[:, None] * users[rows]).sum(0), rtol=1e-4)


def test_solve_from_statistics_survives_singular_systems() -> None:
    gram = np.zeros((3, 3))
    lhs = np.zeros((2, 3, 3))
    rhs = np.ones((2, 3), dtype=np.float32)
    out = solve_from_statistics(gram, lhs, rhs, alpha0=0.0, reg_per_item=0.0)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_float64_matches_float32(data: sp.csr_matrix) -> None:
    a = ImplicitALS(factors=4, iterations=3, solver="cholesky").fit(data)
    b = ImplicitALS(factors=4, iterations=3, solver="cholesky", dtype="float64").fit(data)
    assert b.item_factors_.dtype == np.float64
    np.testing.assert_allclose(a.item_factors_, b.item_factors_, atol=1e-3)


def test_fold_in_of_a_training_row_matches_its_factors(data: sp.csr_matrix) -> None:
    model = ImplicitALS(factors=8, iterations=10, solver="cholesky", num_threads=1).fit(data)
    # one more exact user step makes the stored factors the fold-in solution
    y = model.item_factors_
    ptr = ro(data.indptr.astype(np.int64))
    w = ro((data.data * model.alpha).astype(np.float32))
    cholesky_half_step(
        ptr, ro(data.indices.astype(np.int32)), w, y, gramian(y), model.user_factors_,
        model.alpha0_, model.regularization, model.reg_exponent,
    )  # fmt: skip
    before = model.item_factors_.copy()
    folded = model.fold_in(data[:5])
    np.testing.assert_allclose(folded, model.user_factors_[:5], atol=1e-5)
    np.testing.assert_array_equal(model.item_factors_, before)
    items, _ = model.recommend_history(data[:5], k=5)
    np.testing.assert_array_equal(items, model.recommend(np.arange(5), k=5)[0])


def test_beats_random_on_planted_low_rank() -> None:
    train, p = planted(n_users=200, n_items=100, per_user=15, seed=3)
    model = ImplicitALS(factors=6, iterations=8, num_threads=1).fit(train)
    items, _ = model.recommend(np.arange(200), k=10)
    # expected preference mass of the recommended (unseen) items vs random unseen items
    got = np.take_along_axis(p, items, axis=1).sum(axis=1).mean()
    seen = train.toarray() > 0
    rand = (np.where(seen, 0.0, p).sum(axis=1) / (~seen).sum(axis=1) * 10).mean()
    assert got > 2.0 * rand


def test_defaults_and_types(data: sp.csr_matrix) -> None:
    model = ImplicitALS(factors=4, iterations=2)
    assert model.fit(data) is model
    assert model.user_factors_.dtype == np.float32 and model.item_factors_.dtype == np.float32
    assert model.user_factors_.shape == (data.shape[0], 4)
    scores = model._score_users(np.array([0, 1]))
    np.testing.assert_allclose(scores, model.user_factors_[:2] @ model.item_factors_.T)


def test_auto_alpha0_scales_with_density(data: sp.csr_matrix) -> None:
    model = ImplicitALS(factors=4, iterations=1).fit(data)
    density = data.nnz / (data.shape[0] * data.shape[1])
    assert model.alpha0_ == pytest.approx(AUTO_ALPHA0 * density)
    fixed = ImplicitALS(factors=4, iterations=1, alpha0=0.25).fit(data)
    assert fixed.alpha0_ == 0.25


def test_deterministic_for_a_seed(data: sp.csr_matrix) -> None:
    a = ImplicitALS(factors=8, iterations=3, seed=5, num_threads=1).fit(data)
    b = ImplicitALS(factors=8, iterations=3, seed=5, num_threads=1).fit(data)
    c = ImplicitALS(factors=8, iterations=3, seed=6, num_threads=1).fit(data)
    # equal up to float32 rounding: OpenBLAS's Gramian can differ in the last bits between runs
    # (3.3e-7 apart once in a fresh-clone CI run, single-threaded)
    np.testing.assert_allclose(a.item_factors_, b.item_factors_, rtol=1e-4, atol=1e-5)
    assert not np.allclose(a.item_factors_, c.item_factors_, rtol=1e-4, atol=1e-5)


def test_progress_callback(data: sp.csr_matrix) -> None:
    calls: list[tuple[int, int]] = []
    ImplicitALS(factors=4, iterations=3).fit(data, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    "bad",
    [
        {"factors": -1},
        {"factors": 0},
        {"regularization": -0.1},
        {"alpha0": -1.0},
        {"alpha0": "sometimes"},
        {"solver": "lu"},
        {"cg_steps": 0},
        {"reg_exponent": 3.0},
    ],
)
def test_config_validation(data: sp.csr_matrix, bad: dict[str, object]) -> None:
    model = ImplicitALS(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        model.fit(data)


def test_save_load_round_trip(data: sp.csr_matrix, tmp_path: Path) -> None:
    model = ImplicitALS(factors=6, iterations=3, alpha0=0.3).fit(data)
    path = model.save(tmp_path / "als.npz")
    loaded = load_model(path)
    assert isinstance(loaded, ImplicitALS)
    assert loaded.get_params() == model.get_params()
    users = np.arange(data.shape[0])
    np.testing.assert_array_equal(loaded.recommend(users, k=7)[0], model.recommend(users, k=7)[0])
    np.testing.assert_array_equal(loaded.fold_in(data[:3]), model.fold_in(data[:3]))


class TestImplicitALSContract(RecommenderContract):
    def make_model(self) -> ImplicitALS:
        return ImplicitALS(factors=8, iterations=10, regularization=0.05, seed=0, num_threads=1)
