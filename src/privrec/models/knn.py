"""Item-based k-nearest-neighbours with cosine similarity."""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ModelFileError
from privrec.models.base import ModelConfig, Recommender, check_array, register
from privrec.models.file_layout import ArraySpec, FileLayout

__all__ = ["ItemKNN", "cosine_neighbours"]

_BLOCK_CELLS = 1 << 25  # dense similarity cells per block (256 MB of float64)


def cosine_neighbours(
    user_items: sp.csr_matrix, neighbours: int, shrink: float = 0.0
) -> sp.csr_matrix:
    """Sparse item × item matrix keeping each item's ``neighbours`` most similar items.

    ``S[j, i]`` is the cosine similarity between items ``j`` and ``i`` (shrunk by
    ``co / (co + shrink)``-style damping when ``shrink > 0``: ``sim · n/(n + shrink)``
    is approximated by dividing by ``norm_i·norm_j + shrink``), kept only if ``j``
    is among the top neighbours of ``i``; the diagonal is zero. Computed in
    column blocks so memory stays O(n_items × block).
    """
    x = sp.csc_matrix(user_items, dtype=np.float64)
    n_items = x.shape[1]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    xt = sp.csr_matrix(x.T)
    k = int(min(neighbours, max(n_items - 1, 0)))
    block = max(1, _BLOCK_CELLS // max(n_items, 1))
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    vals_out: list[np.ndarray] = []
    for lo in range(0, n_items, block):  # blocks of items, vectorised inside
        hi = min(n_items, lo + block)
        co = np.asarray((xt @ x[:, lo:hi]).toarray())  # (n_items, b)
        denom = np.outer(norms, norms[lo:hi]) + shrink
        sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
        sim[np.arange(lo, hi), np.arange(hi - lo)] = 0.0
        if k == 0:
            continue
        top = np.argpartition(-sim, k - 1, axis=0)[:k]  # (k, b)
        vals = np.take_along_axis(sim, top, axis=0)
        keep = vals > 0
        rows_out.append(top[keep])
        cols_out.append(np.broadcast_to(np.arange(lo, hi), top.shape)[keep])
        vals_out.append(vals[keep])
    if not rows_out:
        return sp.csr_matrix(
            (np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(n_items + 1, np.int64)),
            shape=(n_items, n_items),
        )
    s = sp.csr_matrix(
        (
            np.concatenate(vals_out).astype(np.float32),
            (np.concatenate(rows_out), np.concatenate(cols_out)),
        ),
        shape=(n_items, n_items),
    )
    s.sort_indices()
    return s


class ItemKNNConfig(ModelConfig):
    neighbours: int = pydantic.Field(default=100, ge=1)
    shrink: float = pydantic.Field(default=0.0, ge=0, allow_inf_nan=False)


@register
class ItemKNN(Recommender):
    """Score an item by summing its cosine similarity to the user's items.

    Parameters
    ----------
    neighbours
        How many most-similar items each item keeps (sparsifies the model).
    shrink
        Added to the cosine denominator to damp similarities built on few
        co-occurrences.
    """

    name = "itemknn"
    Config = ItemKNNConfig

    similarity_: sp.csr_matrix

    def __init__(self, neighbours: int = 100, shrink: float = 0.0) -> None:
        self.neighbours = neighbours
        self.shrink = shrink

    def _fit(self, data: Interactions, config: ItemKNNConfig) -> None:
        self.similarity_ = cosine_neighbours(data.matrix, config.neighbours, config.shrink)

    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray((user_items @ self.similarity_).toarray(), dtype=np.float32)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._score_histories(self.user_items_[users])

    @classmethod
    def _file_layout(cls, config: Any, n_items: int) -> FileLayout:
        # each item keeps at most `neighbours` others: nnz ≤ n·min(neighbours, n)
        nnz = n_items * min(int(config.neighbours), n_items)
        return FileLayout(
            {
                "sim_indptr": ArraySpec((n_items + 1,), kinds="iu"),
                "sim_indices": ArraySpec(("nnz",), kinds="iu"),
                "sim_data": ArraySpec(("nnz",), sparse=True),
            },
            bounds={"nnz": nnz},
        )

    def _state(self) -> dict[str, np.ndarray]:
        s = self.similarity_
        return {"sim_data": s.data, "sim_indices": s.indices, "sim_indptr": s.indptr}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        n = self._known_n_items()
        if n is None:  # state set directly, without a catalogue
            n = len(np.asarray(arrays.get("sim_indptr", np.zeros(1)))) - 1
        ptr = check_array(arrays, "sim_indptr", kind="iu", shape=(n + 1,), low=0)
        nnz = int(ptr[-1])
        ind = check_array(arrays, "sim_indices", kind="iu", shape=(nnz,), low=0, high=n - 1)
        data = check_array(arrays, "sim_data", kind="f", shape=(nnz,))
        if ptr[0] != 0 or np.any(np.diff(ptr.astype(np.int64)) < 0):
            raise ModelFileError(
                "similarity offsets must start at 0 and not decrease", field="state_sim_indptr"
            )
        self.similarity_ = sp.csr_matrix((data, ind, ptr), shape=(n, n))
