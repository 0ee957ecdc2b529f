"""Evaluating a model that was fitted elsewhere — a saved file, a cross-silo or federated result.

:func:`~privrec.evaluation.protocol.evaluate` expects a model fitted on ``split.train``: it asks
for known users by row. A model trained somewhere else (another process, the silos, the
devices) knows none of the split's users and may speak another item catalogue. :func:`on_split`
wraps it so that every evaluated user is scored **from their own history** through the model's
``recommend_history`` — exactly how such a model serves a user — with items matched between the
split and the model by external id. A split item the model does not know can still be a
target (it is then a miss); a model item the split does not know is never recommended.

Private models keep no users, so this is the only way to evaluate them after saving; nothing
here reads anything but the model's released state and the split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from privrec.errors import DataError
from privrec.evaluation.splits import Split

__all__ = ["SavedModelOnSplit", "on_split"]


def _positions(ids: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Index of each of ``ids`` in ``known`` (``-1`` where absent); ids compared as text when
    the two catalogues have different types (e.g. ``"42"`` and ``42``)."""
    a, b = np.asarray(ids), np.asarray(known)
    if a.dtype.kind != b.dtype.kind:
        a, b = a.astype(str), b.astype(str)
    order = np.argsort(b, kind="stable")
    pos = np.searchsorted(b[order], a)
    pos = np.minimum(pos, max(len(b) - 1, 0))
    hit = (b[order][pos] == a) if len(b) else np.zeros(len(a), dtype=bool)
    out = np.full(len(a), -1, dtype=np.int64)
    out[hit] = order[pos[hit]]
    return out


class SavedModelOnSplit:
    """``model`` scored on ``split``'s users from their histories (see the module docstring).

    Has the two methods :func:`~privrec.evaluation.protocol.evaluate` calls; both fold the users
    in from their training (or fold-in) rows, mapped to the model's catalogue.
    """

    def __init__(self, model: Any, split: Split, label: str | None = None) -> None:
        if not hasattr(model, "recommend_history") or not hasattr(model, "item_ids_"):
            raise DataError("not a fitted privrec model", field="model", found=type(model).__name__)
        self.model = model
        self.label = label or str(getattr(model, "name", type(model).__name__))
        self.train = sp.csr_matrix(split.train.matrix)
        self.n_split = self.train.shape[1]
        model_ids = np.asarray(model.item_ids_)
        #: model index of each split item (-1: unknown to the model)
        self.model_of_split = _positions(np.asarray(split.train.item_ids), model_ids)
        #: split index of each model item (-1: unknown to the split)
        self.split_of_model = _positions(model_ids, np.asarray(split.train.item_ids))
        if not (self.model_of_split >= 0).any():
            raise DataError(
                "the model's item catalogue shares no item with the data",
                field="item_ids",
                expected=f"ids like {model_ids[:3].tolist()}",
                found=np.asarray(split.train.item_ids)[:3].tolist(),
            )
        self._foreign = int((self.split_of_model < 0).sum())

    def _to_model(self, hist: sp.csr_matrix) -> sp.csr_matrix:
        coo = sp.coo_matrix(hist)
        cols = self.model_of_split[coo.col]
        keep = cols >= 0
        return sp.csr_matrix(
            (np.ones(int(keep.sum())), (coo.row[keep], cols[keep])),
            shape=(hist.shape[0], len(self.split_of_model)),
        )

    def _rank(self, hist: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        n_model = len(self.split_of_model)
        # items the split does not know are dropped from the lists: ask for that many more
        ask = min(k + self._foreign, n_model)
        items_m, scores = self.model.recommend_history(self._to_model(hist), k=ask)
        items_m, scores = np.asarray(items_m), np.asarray(scores, dtype=np.float32)
        mapped = np.where(items_m >= 0, self.split_of_model[np.maximum(items_m, 0)], -1)
        kk = min(k, self.n_split, mapped.shape[1])
        # compact each row: known items first, in the model's order (a stable sort)
        order = np.argsort(mapped < 0, axis=1, kind="stable")[:, :kk]
        out = np.take_along_axis(mapped, order, axis=1)
        out_s = np.where(out >= 0, np.take_along_axis(scores, order, axis=1), -np.inf)
        return out.astype(np.int64), out_s.astype(np.float32)

    def recommend(
        self, user_ids: npt.ArrayLike, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` split items for split training rows ``user_ids``, from their histories."""
        users = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
        return self._rank(self.train[users], k)

    def recommend_history(
        self, user_items: Any, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` split items for fold-in histories over the split's items."""
        return self._rank(sp.csr_matrix(user_items), k)


def on_split(model: Any, split: Split, label: str | None = None) -> SavedModelOnSplit:
    """Wrap a model fitted elsewhere for :func:`~privrec.evaluation.protocol.evaluate`.

    >>> import numpy as np
    >>> from privrec.data import Interactions
    >>> from privrec.evaluation import evaluate, random_holdout
    >>> from privrec.models import Popularity
    >>> data = Interactions.from_arrays(np.repeat(np.arange(20), 3), np.arange(60) % 7)
    >>> split = random_holdout(data, test_fraction=0.34, seed=0)
    >>> elsewhere = Popularity().fit(data)  # fitted on other data (here: everything)
    >>> evaluate(on_split(elsewhere, split), split, k=5).n_users
    20
    """
    return SavedModelOnSplit(model, split, label)
