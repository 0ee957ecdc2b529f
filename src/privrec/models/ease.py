"""EASE (Steck, WWW 2019): a closed-form linear item-item autoencoder."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pydantic
import scipy.linalg
import scipy.linalg.lapack
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError
from privrec.models.base import ModelConfig, Recommender, check_array, register
from privrec.models.file_layout import ArraySpec, FileLayout

__all__ = [
    "EASE",
    "available_memory",
    "check_ease_memory",
    "ease_from_gram",
    "ease_memory_bytes",
    "item_gram",
]


def item_gram(user_items: sp.csr_matrix, row_weights: np.ndarray | None = None) -> np.ndarray:
    """The item Gram matrix ``Xᵀ diag(w) X`` as a dense float64 array.

    Kept as its own step because it is EASE's only contact with user data: the
    private variant bounds each user's contribution with ``row_weights`` and adds
    symmetric noise to this matrix before :func:`ease_from_gram` is applied.

    Built in blocks of item rows straight into the dense result, so the sparse
    product never exists whole (it can hold nearly n² entries at 12 bytes each):
    peak memory is the dense matrix plus one block.
    """
    x = sp.csr_matrix(user_items, dtype=np.float64)
    wx = (
        x
        if row_weights is None
        else sp.csr_matrix(sp.diags(np.asarray(row_weights, np.float64)) @ x)
    )
    n = x.shape[1]
    xt = sp.csr_matrix(x.T)
    g = np.zeros((n, n), dtype=np.float64)
    rows = max(1, n // _GRAM_BLOCKS)
    for i0 in range(0, n, rows):  # blocks of items, not single items
        i1 = min(n, i0 + rows)
        part = sp.csr_matrix(xt[i0:i1] @ wx)
        part.toarray(out=g[i0:i1])
    return g


_GRAM_BLOCKS = 16
#: Peak of an EASE fit in units of one dense n × n float64 matrix: the Gram matrix, inverted in
#: place (1), the float32 weights (0.5) and one block of the Gram product (≤ 1/16 of a dense
#: matrix at 12 bytes per entry), rounded up.
PEAK_DENSE_COPIES = 1.75


def ease_memory_bytes(n_items: int) -> int:
    """Bytes an EASE fit on ``n_items`` items needs at its peak (see :data:`PEAK_DENSE_COPIES`)."""
    return int(PEAK_DENSE_COPIES * 8 * n_items * n_items)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_ease_memory(n_items: int, max_items: int | None, what: str = "EASE") -> None:
    """Refuse a catalogue whose dense EASE solve would not fit, saying how much it needs."""
    need = ease_memory_bytes(n_items)
    if max_items is not None and n_items > max_items:
        raise ConfigError(
            f"{what} needs dense {n_items:,} × {n_items:,} matrices (about {need / 1e9:.2g} GB at "
            f"its peak); the catalogue exceeds max_items={max_items:,}. Filter the items or raise "
            "max_items."
        )
    free = available_memory()
    if free is not None and need > free:
        raise ConfigError(
            f"{what} on {n_items:,} items needs about {need / 1e9:.2g} GB at its peak "
            f"({PEAK_DENSE_COPIES:g} dense {n_items:,} × {n_items:,} float64 matrices) but only "
            f"{free / 1e9:.2g} GB is available; filter the catalogue (e.g. drop rare items) or "
            "use a machine with more memory."
        )


def _mirror(a: np.ndarray, lower_to_upper: bool, block: int = 512) -> None:
    """Copy one triangle of the square C-ordered ``a`` onto the other, in place, by blocks."""
    n = a.shape[0]
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        if lower_to_upper:
            a[i0:i1, i1:] = a[i1:, i0:i1].T
        else:
            a[i1:, i0:i1] = a[i0:i1, i1:].T
        blk = a[i0:i1, i0:i1]
        iu = np.triu_indices(i1 - i0, 1)
        if lower_to_upper:
            blk[iu] = blk.T[iu]
        else:
            blk.T[iu] = blk[iu]


def _invert_symmetric_in_place(a: np.ndarray) -> None:
    """Overwrite the symmetric float64 C-ordered ``a`` with its inverse, using no n² workspace.

    LAPACK works on ``a.T`` (the same memory, Fortran-ordered): Cholesky ``dpotrf`` and
    ``dpotri`` fill one triangle, which is then mirrored. ``dpotrf`` reads and writes only
    that triangle, so when the matrix is not positive definite (a noisy Gram matrix can be
    indefinite) the other triangle still holds the original and an LU inverse (``dgetrf`` /
    ``dgetri``, also in place) takes over.
    """
    f = a.T  # Fortran view: its "upper" triangle is a's lower one
    diag = np.diag(a).copy()
    c, info = scipy.linalg.lapack.dpotrf(f, lower=False, overwrite_a=True, clean=False)
    if info == 0:
        if not np.shares_memory(c, a):  # pragma: no cover - LAPACK copied; keep the result
            f[...] = c
        inv, info = scipy.linalg.lapack.dpotri(f, lower=False, overwrite_c=True)
        if not np.shares_memory(inv, a):  # pragma: no cover
            f[...] = inv
        if info == 0:
            _mirror(a, lower_to_upper=True)
            return
    # not positive definite: rebuild the matrix from the untouched upper triangle, then LU
    _mirror(a, lower_to_upper=False)
    a[np.diag_indices_from(a)] = diag
    lu, piv, info = scipy.linalg.lapack.dgetrf(f, overwrite_a=True)
    if info == 0:
        if not np.shares_memory(lu, a):  # pragma: no cover
            f[...] = lu
        inv, info = scipy.linalg.lapack.dgetri(f, piv, overwrite_lu=True)
        if not np.shares_memory(inv, a):  # pragma: no cover
            f[...] = inv
    if info != 0:
        raise np.linalg.LinAlgError("the regularised Gram matrix is singular")


def ease_from_gram(
    gram: np.ndarray, regularization: float, *, overwrite: bool = False
) -> np.ndarray:
    """EASE weights ``B`` from a Gram matrix: ``B = I − P / diag(P)``, ``P = (G + λI)⁻¹``.

    The zero diagonal constraint keeps an item from predicting itself. Solved
    in float64 (the Gram matrix of real data is badly conditioned at small λ)
    by an in-place Cholesky inverse (LU when a noisy Gram matrix is indefinite);
    returned as float32. With ``overwrite=True`` the (float64, C-ordered) ``gram``
    is consumed as workspace, so the peak is that matrix plus the float32 result.
    """
    g = gram if overwrite and gram.dtype == np.float64 and gram.flags.c_contiguous else None
    if g is None:
        g = np.array(gram, dtype=np.float64, order="C", copy=True)
    n = g.shape[0]
    g[np.diag_indices(n)] += regularization
    _invert_symmetric_in_place(g)
    d = np.diag(g).copy()
    g /= -d[None, :]
    g[np.diag_indices(n)] = 0.0
    return g.astype(np.float32)


class EASEConfig(ModelConfig):
    regularization: float = pydantic.Field(default=300.0, gt=0, allow_inf_nan=False)
    max_items: int | None = pydantic.Field(default=None, ge=1)


@register
class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder: scores ``x_u B`` with a dense item-item ``B``.

    Parameters
    ----------
    regularization
        λ added to the Gram diagonal. Larger values shrink towards popularity.
    max_items
        Refuse catalogues larger than this. Default (``None``): whatever fits — the
        fit needs about 1.75 dense ``n_items × n_items`` float64 matrices at its peak
        (:func:`ease_memory_bytes`: 2.0 GB at 12k items, 22 GB at 40k), and a catalogue
        whose need exceeds the memory available is refused up front with the figure.

    Notes
    -----
    Cost is O(n_items³) time and O(n_items²) memory, independent of the number
    of users; the item Gram matrix is computed explicitly (:func:`item_gram`) so
    that the private variant can bound and noise it. Memory: the Gram matrix is
    built by blocks straight into its dense array, inverted in place (LAPACK
    ``potrf``/``potri`` on the same buffer) and turned into ``B`` in place; only
    the float32 weights are a second allocation.
    """

    name = "ease"
    Config = EASEConfig

    weights_: np.ndarray

    def __init__(self, regularization: float = 300.0, max_items: int | None = None) -> None:
        self.regularization = regularization
        self.max_items = max_items

    def _fit(self, data: Interactions, config: EASEConfig) -> None:
        check_ease_memory(data.n_items, config.max_items)
        self.weights_ = ease_from_gram(
            item_gram(data.matrix), config.regularization, overwrite=True
        )

    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray(user_items @ self.weights_, dtype=np.float32)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._score_histories(self.user_items_[users])

    @classmethod
    def _file_layout(cls, config: Any, n_items: int) -> FileLayout:
        return FileLayout({"weights": ArraySpec((n_items, n_items))})

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        n = self._known_n_items()
        if n is None:  # state set directly, without a catalogue: a square matrix of any size
            n = int(np.asarray(arrays.get("weights", np.zeros((0, 0)))).shape[0])
        self.weights_ = check_array(arrays, "weights", kind="f", shape=(n, n))
