"""The few-users fold-in path of DPALS (what a service request takes) equals the batch kernel."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from privrec.models.dp_als import _FEW_USERS, exact_user_solve


def test_few_user_solve_matches_the_parallel_kernel() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(300, 16)) * 0.3
    x = sp.random(12, 300, density=0.05, random_state=1, format="lil")
    x.rows[3], x.data[3] = [], []  # a user with no history solves to zero on both paths
    x = sp.csr_matrix(x)
    x.data[:] = 1.0
    batch = exact_user_solve(x, y, 2.0, 0.1)  # 12 users: the numba kernel
    assert x.shape[0] > _FEW_USERS
    for u in range(x.shape[0]):
        one = exact_user_solve(sp.csr_matrix(x[u]), y, 2.0, 0.1)  # one user: numpy/LAPACK
        np.testing.assert_allclose(one[0], batch[u], rtol=1e-9, atol=1e-12)
    assert not batch[3].any()
