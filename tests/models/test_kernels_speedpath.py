"""The fast DPALS/ALS kernels against plain numpy references on small random data.

Covers the BLAS-backed item statistics and exact solves (``syrk`` on gathered
blocks, LAPACK Cholesky), the PSD-aware batched solve, the packed symmetric
noise and the numba per-user sampler — each compared with a direct, obviously
correct numpy computation (or, for the sampler, with the lexsort algorithm it
replaced, bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from privrec.models import als_kernels
from privrec.models.als_kernels import cholesky_half_step, gramian, item_statistics
from privrec.models.dp_als import exact_user_solve
from privrec.models.dp_noise import _packed_normals
from privrec.models.dp_noise import symmetric_noise as _symmetric_noise
from privrec.privacy.contribution import _keyed_uniform, sample_per_user
from privrec.privacy.postprocessing import project_psd, psd_solve
from privrec.privacy.randomness import seeded_generator

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def _random_csr(
    rng: np.random.Generator, n_rows: int, n_cols: int, density: float
) -> sp.csr_matrix:
    m = sp.csr_matrix(sp.random(n_rows, n_cols, density=density, random_state=rng))
    m.sort_indices()
    return m


def _stats_reference(
    m: sp.csr_matrix, f: np.ndarray, w: np.ndarray, alpha0: float
) -> tuple[np.ndarray, np.ndarray]:
    k = f.shape[1]
    lhs = np.zeros((m.shape[1], k, k))
    rhs = np.zeros((m.shape[1], k))
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    for u, j, wj in zip(rows, m.indices, w, strict=True):
        lhs[j] += wj * np.outer(f[u], f[u])
        rhs[j] += (alpha0 + wj) * f[u]
    return lhs, rhs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_item_statistics_matches_numpy(dtype: type, threads: int) -> None:
    """Signed and zero weights, empty items, and one item longer than a gather block."""
    rng = np.random.default_rng(0)
    n_users = als_kernels._GATHER + 300
    m = _random_csr(rng, n_users, 12, 0.05)
    dense = m.toarray()
    dense[:, 3] = 1.0  # item 3: every user (more than one gather block)
    dense[:, 7] = 0.0  # item 7: nobody
    m = sp.csr_matrix(dense)
    f: np.ndarray = rng.standard_normal((n_users, 5)).astype(dtype)
    w = rng.standard_normal(m.nnz)
    w[::7] = 0.0
    lhs, rhs = item_statistics(m, f, w, alpha0=0.3, num_threads=threads)
    ref_l, ref_r = _stats_reference(m, f.astype(np.float64), w.astype(dtype), 0.3)
    assert lhs.dtype == dtype and rhs.dtype == dtype
    tol = 1e-10 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(lhs, ref_l, atol=tol, rtol=tol)
    np.testing.assert_allclose(rhs, ref_r, atol=tol, rtol=tol)
    np.testing.assert_array_equal(lhs, np.swapaxes(lhs, 1, 2))  # mirrored exactly
    assert not lhs[7].any() and not rhs[7].any()


def test_item_statistics_regroups_after_in_place_edits() -> None:
    """The memoised item grouping is reused for the same matrix and redone when it changes."""
    rng = np.random.default_rng(7)
    dense = (rng.random((40, 10)) < 0.3).astype(np.float64)
    dense[0] = 0.0
    dense[0, 2] = 1.0  # user 0 has exactly one item
    m = sp.csr_matrix(dense)
    f = rng.standard_normal((40, 3))
    w = rng.random(m.nnz)
    first, _ = item_statistics(m, f, w, alpha0=0.0)
    again, _ = item_statistics(m, f * 2.0, w, alpha0=0.0)  # cached grouping, new factors
    np.testing.assert_allclose(again, 4.0 * first, rtol=1e-12)
    m.indices[0] = 5  # user 0's item moves from 2 to 5, in place
    edited, _ = item_statistics(m, f, w, alpha0=0.0)
    assert not np.allclose(edited, first)
    ref, _ = _stats_reference(m, f, w, 0.0)
    np.testing.assert_allclose(edited, ref, atol=1e-12)


def test_item_statistics_rejects_misaligned_input() -> None:
    m = sp.csr_matrix(np.eye(3))
    with pytest.raises(ValueError, match="stored entries"):
        item_statistics(m, np.ones((3, 2)), np.ones(2), alpha0=0.0)
    with pytest.raises(ValueError, match="rows"):
        item_statistics(m, np.ones((4, 2)), np.ones(3), alpha0=0.0)


def test_by_column_is_the_transpose() -> None:
    rng = np.random.default_rng(1)
    m = _random_csr(rng, 50, 30, 0.2)
    t = m.T.tocsr()
    t.sort_indices()
    indptr = m.indptr.astype(np.int64)
    for chunks in (1, 3, 7):
        ptr, rows, vals = als_kernels._by_column(
            indptr, m.indices.astype(np.int32), m.data, 30, als_kernels._row_chunks(indptr, chunks)
        )
        np.testing.assert_array_equal(ptr, t.indptr)
        np.testing.assert_array_equal(ptr, t.indptr)
        np.testing.assert_array_equal(rows, t.indices)
        np.testing.assert_array_equal(vals, t.data)


def _solve_reference(
    m: sp.csr_matrix, w: np.ndarray, other: np.ndarray, alpha0: float, lam: float, nu: float
) -> np.ndarray:
    k = other.shape[1]
    out = np.zeros((m.shape[0], k))
    g = other.T @ other
    for u in range(m.shape[0]):
        s, e = m.indptr[u], m.indptr[u + 1]
        y, wu = other[m.indices[s:e]], w[s:e]
        reg = lam * ((e - s) + alpha0 * other.shape[0]) ** nu
        a = alpha0 * g + (y * wu[:, None]).T @ y + reg * np.eye(k)
        out[u] = np.linalg.solve(a, ((alpha0 + wu)[:, None] * y).sum(0))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cholesky_half_step_matches_numpy(dtype: type) -> None:
    """Exact row solves (syrk + LAPACK) equal numpy's, with a long row, an empty row, negative w."""
    rng = np.random.default_rng(2)
    n_items = als_kernels._GATHER + 100
    m = _random_csr(rng, 40, n_items, 0.03)
    dense = m.toarray()
    dense[5] = 1.0  # one row longer than a gather block
    dense[9] = 0.0  # an empty row
    m = sp.csr_matrix(dense)
    w = rng.uniform(0.5, 2.0, m.nnz)
    w[::11] = -0.05  # small negative weights: still positive definite
    other: np.ndarray = (rng.standard_normal((n_items, 6)) * 0.3).astype(dtype)
    x: np.ndarray = np.zeros((40, 6), dtype=dtype)
    ptr, idx = m.indptr.astype(np.int64), m.indices.astype(np.int32)
    cholesky_half_step(ptr, idx, w.astype(dtype), other, gramian(other), x, 0.5, 0.2, 0.5)
    ref = _solve_reference(m, w.astype(dtype).astype(np.float64), other.astype(np.float64),
                           0.5, 0.2, 0.5)  # fmt: skip
    tol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(x, ref, atol=tol, rtol=tol)


def test_cholesky_half_step_keeps_rows_that_are_not_positive_definite() -> None:
    m = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 0.0]]))
    other = np.eye(2)
    w = np.array([-5.0, -5.0, 1.0])  # row 0: indefinite system
    x = np.full((2, 2), 7.0)
    cholesky_half_step(m.indptr.astype(np.int64), m.indices.astype(np.int32), w, other,
                       np.zeros((2, 2)), x, 0.0, 0.1, 0.0)  # fmt: skip
    np.testing.assert_array_equal(x[0], [7.0, 7.0])
    np.testing.assert_allclose(x[1], [1.0 / 1.1, 0.0])


def test_exact_user_solve_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    m = _random_csr(rng, 30, 25, 0.3)
    y = rng.standard_normal((25, 4)) * 0.5
    got = exact_user_solve(m, y, 0.7, 0.1)
    ref = _solve_reference(m, np.ones(m.nnz), y, 0.7, 0.1, 0.0) / 1.7
    np.testing.assert_allclose(got, ref, atol=1e-10)


def _psd_reference(
    base: np.ndarray, stack: np.ndarray, rhs: np.ndarray, reg: np.ndarray, project: str
) -> tuple[np.ndarray, np.ndarray]:
    k = base.shape[0]
    out = np.zeros(rhs.shape)
    flags = np.zeros(len(rhs), dtype=bool)
    for j in range(len(rhs)):
        a = base + stack[j].astype(np.float64)
        test = a + (reg[j] if project == "if_indefinite" else 0.0) * np.eye(k)
        flags[j] = np.linalg.eigvalsh(test)[0] <= 0
        if flags[j]:
            a = project_psd(a)
        out[j] = np.linalg.solve(a + reg[j] * np.eye(k), rhs[j])
    return out, flags


@pytest.mark.parametrize("project", ["always", "if_indefinite"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_psd_solve_matches_numpy(project: str, dtype: type) -> None:
    rng = np.random.default_rng(4)
    k, n = 9, 70
    base = np.eye(k) * 0.3
    noise = rng.standard_normal((n, k, k))
    stack: np.ndarray = (
        (noise + np.swapaxes(noise, 1, 2)) * rng.uniform(0.0, 1.0, (n, 1, 1))
    ).astype(dtype)
    stack[: n // 2] += (np.eye(k) * 6.0).astype(dtype)  # half clearly positive definite
    rhs: np.ndarray = rng.standard_normal((n, k)).astype(dtype)
    reg = rng.uniform(0.5, 2.0, n)
    y, flags = psd_solve(base, stack, rhs, reg, project)  # type: ignore[arg-type]
    ref, ref_flags = _psd_reference(base, stack, rhs, reg, project)
    np.testing.assert_array_equal(flags, ref_flags)
    assert flags.any() and not flags.all()
    np.testing.assert_allclose(y, ref, atol=1e-8, rtol=1e-8)


def test_symmetric_noise_is_stack_plus_symmetric_gaussian() -> None:
    rng = np.random.default_rng(5)
    stack = rng.standard_normal((3000, 8, 8)).astype(np.float32)
    stack = stack + np.swapaxes(stack, 1, 2)
    noisy = _symmetric_noise(stack, 0.5, seeded_generator(7, warn=False))
    assert noisy.dtype == np.float32 and noisy.shape == stack.shape
    e = noisy - stack
    np.testing.assert_array_equal(e, np.swapaxes(e, 1, 2))
    iu = np.triu_indices(8)
    draws = e[:, iu[0], iu[1]].ravel() / 0.5
    assert stats.kstest(draws, "norm").pvalue > 1e-3
    again = _symmetric_noise(stack, 0.5, seeded_generator(7, warn=False))
    np.testing.assert_array_equal(noisy, again)  # reproducible in seeded mode
    g = _symmetric_noise(np.eye(3), 1.0, seeded_generator(8, warn=False))
    assert g.dtype == np.float64 and np.allclose(g, g.T)


def test_packed_normals_blocks_are_independent_streams() -> None:
    """Large draws come from independently keyed child streams, never repeating a block."""
    per = 64
    rows = (1 << 22) // per
    z = _packed_normals(3 * rows, per, seeded_generator(9, warn=False))
    assert z.dtype == np.float32
    blocks = z.reshape(3, -1)
    assert not np.array_equal(blocks[0], blocks[1])
    assert abs(float(np.corrcoef(blocks[0][:100_000], blocks[1][:100_000])[0, 1])) < 0.02
    assert stats.kstest(z[::97].ravel(), "norm").pvalue > 1e-3
    # a non-ChaCha generator draws in one stream
    z2 = _packed_normals(5, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(
        z2, np.random.default_rng(0).standard_normal((5, 4), dtype=np.float32)
    )


def _sample_reference(
    m: sp.csr_matrix, b: int, salt: int, key_counts: np.ndarray | None
) -> sp.csr_matrix:
    """The lexsort algorithm the numba sampler replaced."""
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    noise = _keyed_uniform(salt, rows, m.indices)
    key = noise if key_counts is None else key_counts[m.indices] + noise * 1e-6
    order = np.lexsort((key, rows))
    rank = np.empty(m.nnz, dtype=np.int64)
    rank[order] = np.arange(m.nnz) - np.repeat(m.indptr[:-1], np.diff(m.indptr))
    keep = rank < b
    out = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], m.indices[keep])), shape=m.shape
    )
    out.sort_indices()
    return out


@pytest.mark.parametrize("strategy", ["uniform", "least_popular"])
def test_sample_per_user_equals_lexsort_reference(strategy: str) -> None:
    rng = np.random.default_rng(6)
    for trial in range(20):
        m = _random_csr(rng, int(rng.integers(1, 40)), int(rng.integers(1, 60)), rng.random())
        b = int(rng.integers(1, 12))
        counts = rng.integers(0, 4, m.shape[1]).astype(np.float64)  # many ties
        got = sample_per_user(m, b, seeded_generator(trial, warn=False), strategy, counts)  # type: ignore[arg-type]
        salt = int(seeded_generator(trial, warn=False).integers(0, 2**63))
        ref = _sample_reference(m, b, salt, counts if strategy == "least_popular" else None)
        np.testing.assert_array_equal(got.indptr, ref.indptr)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_array_equal(got.data, ref.data)
