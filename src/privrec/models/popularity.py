"""Most-popular baseline: the floor every personalised model must clear."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.models.base import ModelConfig, Recommender, check_array, register
from privrec.models.file_layout import ArraySpec, FileLayout

__all__ = ["Popularity", "PopularityScores"]


class PopularityScores:
    """Scoring shared by the popularity models: the same ``item_popularity_`` for every user."""

    item_popularity_: np.ndarray

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._broadcast(len(users))

    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        return self._broadcast(user_items.shape[0])

    def _broadcast(self, n: int) -> np.ndarray:
        return np.broadcast_to(self.item_popularity_, (n, len(self.item_popularity_))).copy()


class PopularityConfig(ModelConfig):
    weighting: Literal["users", "values"] = "users"


@register
class Popularity(PopularityScores, Recommender):
    """Rank items by how many users interacted with them.

    Parameters
    ----------
    weighting
        ``"users"`` counts distinct users per item (the usual baseline, and the
        one whose private version has bounded sensitivity); ``"values"`` sums
        the stored weights (ratings, play counts).

    Every user gets the same list (minus their own seen items), so this model
    reveals nothing personal beyond aggregate counts; its private counterpart is
    the cold-start fallback of the private models.

    Examples
    --------
    >>> from privrec.data import Interactions
    >>> x = Interactions.from_arrays([0, 0, 1, 2], ["a", "b", "b", "b"])
    >>> Popularity().fit(x).recommend(0, k=1, exclude_seen=False)[0].tolist()
    [1]
    """

    name = "popularity"
    Config = PopularityConfig

    item_popularity_: np.ndarray

    def __init__(self, weighting: Literal["users", "values"] = "users") -> None:
        self.weighting = weighting

    def _fit(self, data: Interactions, config: PopularityConfig) -> None:
        m = data.matrix
        if config.weighting == "users":
            pop = np.bincount(m.indices, minlength=data.n_items).astype(np.float32)
        else:
            pop = np.asarray(m.sum(axis=0), dtype=np.float32).ravel()
        self.item_popularity_ = pop

    @classmethod
    def _file_layout(cls, config: Any, n_items: int) -> FileLayout:
        return FileLayout({"item_popularity": ArraySpec((n_items,), sparse=True)})

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_popularity": self.item_popularity_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_popularity_ = arrays["item_popularity"]

    def _check_state(self) -> None:
        check_array(
            self.item_popularity_, "item_popularity", kind="f", shape=(len(self.item_ids_),)
        )
