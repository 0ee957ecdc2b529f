"""EASE (Steck, WWW 2019): a closed-form linear item-item autoencoder."""

from __future__ import annotations

import numpy as np
import pydantic
import scipy.linalg
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError
from privrec.models.base import ModelConfig, Recommender, check_array, register

__all__ = ["EASE", "ease_from_gram", "item_gram"]


def item_gram(user_items: sp.csr_matrix, row_weights: np.ndarray | None = None) -> np.ndarray:
    """The item Gram matrix ``Xᵀ diag(w) X`` as a dense float64 array.

    Kept as its own step because it is EASE's only contact with user data: the
    private variant bounds each user's contribution with ``row_weights`` and adds
    symmetric noise to this matrix before :func:`ease_from_gram` is applied.
    """
    x = sp.csr_matrix(user_items, dtype=np.float64)
    wx = (
        x
        if row_weights is None
        else sp.csr_matrix(sp.diags(np.asarray(row_weights, np.float64)) @ x)
    )
    return np.asarray((x.T @ wx).toarray(), dtype=np.float64)


def ease_from_gram(gram: np.ndarray, regularization: float) -> np.ndarray:
    """EASE weights ``B`` from a Gram matrix: ``B = I − P / diag(P)``, ``P = (G + λI)⁻¹``.

    The zero diagonal constraint keeps an item from predicting itself. Solved
    with a Cholesky factorisation in float64 (the Gram matrix of real data is
    badly conditioned at small λ); returned as float32.
    """
    g = np.array(gram, dtype=np.float64, copy=True)
    n = g.shape[0]
    g[np.diag_indices(n)] += regularization
    try:
        c = scipy.linalg.cho_factor(g, lower=False, overwrite_a=True, check_finite=False)
        p = scipy.linalg.cho_solve(c, np.eye(n), overwrite_b=True, check_finite=False)
    except np.linalg.LinAlgError:
        # Noisy (private) Gram matrices can be indefinite; fall back to a general solve.
        g2 = np.array(gram, dtype=np.float64, copy=True)
        g2[np.diag_indices(n)] += regularization
        p = np.asarray(np.linalg.inv(g2), dtype=np.float64)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices(n)] = 0.0
    return b.astype(np.float32)


class EASEConfig(ModelConfig):
    regularization: float = pydantic.Field(default=300.0, gt=0, allow_inf_nan=False)
    max_items: int = pydantic.Field(default=40_000, ge=1)


@register
class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder: scores ``x_u B`` with a dense item-item ``B``.

    Parameters
    ----------
    regularization
        λ added to the Gram diagonal. Larger values shrink towards popularity.
    max_items
        Refuse catalogues larger than this (the dense ``n_items²`` matrix is
        ``8·n_items²`` bytes while solving: 12.8 GB at 40k items).

    Notes
    -----
    Cost is O(n_items³) time and O(n_items²) memory, independent of the number
    of users; the item Gram matrix is computed explicitly (:func:`item_gram`) so
    that the private variant can bound and noise it.
    """

    name = "ease"
    Config = EASEConfig

    weights_: np.ndarray

    def __init__(self, regularization: float = 300.0, max_items: int = 40_000) -> None:
        self.regularization = regularization
        self.max_items = max_items

    def _fit(self, data: Interactions, config: EASEConfig) -> None:
        if data.n_items > config.max_items:
            raise ConfigError(
                f"EASE needs a dense {data.n_items}×{data.n_items} matrix; "
                f"the catalogue exceeds max_items={config.max_items}. Filter the items or raise max_items."
            )
        self.weights_ = ease_from_gram(item_gram(data.matrix), config.regularization)

    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray(user_items @ self.weights_, dtype=np.float32)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._score_histories(self.user_items_[users])

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(self.item_ids_)
        self.weights_ = check_array(arrays, "weights", kind="f", shape=(n, n))
