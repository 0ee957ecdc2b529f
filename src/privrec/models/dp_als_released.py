"""DPALS's released model: scoring from the released item factors and the model file.

Split from :mod:`privrec.models.dp_als` by concern: that module trains (and accounts for) the
item factors; this one holds what is released — item factors on the head, noisy counts, the
blend — and everything that only reads it: folding a user in from their own history, scoring,
and the file layout and checks. Nothing here touches training data beyond a user's own history.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from privrec.errors import ModelFileError
from privrec.models.base import check_array
from privrec.models.dp_als_users import exact_user_solve
from privrec.models.dp_rules import MAX_ADAPTIVE_FACTORS, item_norm_scale
from privrec.models.file_layout import ArraySpec, FileLayout
from privrec.models.private import (
    PrivateRecommender,
    blend_neighbours,
    rank_head_scores,
    read_blend_state,
    read_fold,
    read_head_items,
)

__all__ = ["ReleasedItemFactors"]


class ReleasedItemFactors(PrivateRecommender):
    """Base of :class:`~privrec.models.dp_als.DPALS`: the released item factors, scored and saved."""

    factors: int | None
    item_factors_: np.ndarray
    head_items_: np.ndarray
    noisy_counts_: np.ndarray
    noise_scale_: float
    popularity_blend_: float
    popularity_shrinkage_: float
    factors_: int
    _fit_alpha0: float
    _fit_user_reg: float

    def _fold(self, user_items_head: sp.csr_matrix) -> np.ndarray:
        y = self.item_factors_[self.head_items_].astype(np.float64)
        return exact_user_solve(user_items_head, y, self._fit_alpha0, self._fit_user_reg)

    # ------------------------------------------------------------- scoring
    def fold_in(self, user_items: Any) -> np.ndarray:
        """User factors from the released item factors and the given histories only."""
        from privrec.models.base import as_user_items

        self._check_fitted()
        hist = as_user_items(user_items, self.n_items_)
        return self._fold(sp.csr_matrix(hist[:, self.head_items_])).astype(np.float32)

    def _scores_from_factors(self, u: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Catalogue scores; ``lengths`` (the users' own history lengths) set the per-user blend."""
        scores = u @ self.item_factors_[self.head_items_].T
        return self._rank_head(scores, lengths, cold=~np.any(u != 0, axis=1))

    def _rank_head(
        self, scores: np.ndarray, lengths: np.ndarray | None, cold: np.ndarray | None
    ) -> np.ndarray:
        """The ranking half of the scoring, from raw head scores ``u·Vᵀ`` — also what a
        private-scoring client applies to its decrypted scores (``privrec he score``)."""
        shrink = getattr(self, "popularity_shrinkage_", 0.0)
        scale = item_norm_scale(
            self.item_factors_[self.head_items_], float(getattr(self, "item_norm_exponent_", 0.0))
        )
        if scale is not None:  # x_u·y_j / |y_j|^γ (item_norm_exponent; post-processing)
            scores = np.asarray(scores) * scale[None, :].astype(np.asarray(scores).dtype)
        # the per-user blend only when both β and the shrinkage are on (β + s/n_u)
        per_user = lengths is not None and shrink > 0 and self.popularity_blend_ > 0
        return rank_head_scores(
            scores,
            self.head_items_,
            self.item_factors_.shape[0],
            self.noisy_counts_,
            self.popularity_blend_,
            shrinkage=shrink if per_user else 0.0,
            lengths=lengths if per_user else None,
            cold=cold,
        )

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        rows = sp.csr_matrix(self.user_items_[users])
        lengths = np.diff(rows.indptr)
        return self._with_neighbours(
            self._scores_from_factors(self.user_factors_[users], lengths), rows
        )

    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        rows = sp.csr_matrix(user_items)
        lengths = np.diff(rows.indptr)
        return self._with_neighbours(self._scores_from_factors(self.fold_in(rows), lengths), rows)

    def _with_neighbours(self, ranked: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        """The ``neighbour_blend`` post-processing (:func:`blend_neighbours`), when on."""
        weight = float(getattr(self, "neighbour_blend", 0.0) or 0.0)
        if weight <= 0:
            return ranked
        head = self.head_items_
        return blend_neighbours(ranked, rows[:, head], self.item_factors_[head], head, weight)

    @classmethod
    def _file_layout(cls, config: Any, n_items: int) -> FileLayout:
        # factors are zero off the head (sparse, pinned to n × k); data-adaptive k ≤ 64
        k = "k" if config.factors is None else int(config.factors)
        return FileLayout(
            {
                "item_factors": ArraySpec((n_items, k), sparse=True),
                "head_items": ArraySpec(("h",), kinds="iu"),
                "noisy_counts": ArraySpec((n_items,), sparse=True),
                "noise_scale": ArraySpec(()),
                "fold": ArraySpec((2,)),
                "popularity_blend": ArraySpec((), optional=True),
                "popularity_shrinkage": ArraySpec((), optional=True),
                "item_norm_exponent": ArraySpec((), optional=True),
            },
            bounds={"h": n_items, "k": MAX_ADAPTIVE_FACTORS},
        )

    def _state(self) -> dict[str, np.ndarray]:
        # user factors are derived from user data and are not part of the release
        return {
            "item_factors": self.item_factors_,
            "head_items": self.head_items_,
            "noisy_counts": self.noisy_counts_,
            "noise_scale": np.asarray(self.noise_scale_),
            "fold": np.asarray([self._fit_alpha0, self._fit_user_reg]),
            "popularity_blend": np.asarray(self.popularity_blend_),
            "popularity_shrinkage": np.asarray(self.popularity_shrinkage_),
            "item_norm_exponent": np.asarray(float(getattr(self, "item_norm_exponent_", 0.0))),
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_factors_ = check_array(
            arrays, "item_factors", kind="f", shape=(self._known_n_items(), None)
        )
        n = self.item_factors_.shape[0]
        self.head_items_ = read_head_items(arrays, n)
        self.noisy_counts_ = check_array(arrays, "noisy_counts", kind="f", shape=(n,))
        self.noise_scale_ = float(check_array(arrays, "noise_scale", kind="f", shape=(), low=0))
        self._fit_alpha0, self._fit_user_reg = read_fold(arrays)
        # files older than the blend read as 0: see read_blend_state
        self.popularity_blend_, self.popularity_shrinkage_ = read_blend_state(arrays)
        # files older than the item-norm rule (2026-12-07) scored with γ = 0
        self.item_norm_exponent_ = (
            float(check_array(arrays, "item_norm_exponent", kind="f", shape=(), low=0, high=2))
            if "item_norm_exponent" in arrays
            else 0.0
        )
        self.factors_ = int(self.item_factors_.shape[1])

    def _check_state(self) -> None:
        # a file's factors must have the width its parameters say (any width ≥ 1 when k was
        # read from the data: the released factors then define it)
        check_array(
            self.item_factors_, "item_factors", kind="f", shape=(len(self.item_ids_), self.factors)
        )
        if self.item_factors_.shape[1] < 1:
            raise ModelFileError("item factors need at least one column", field="item_factors")

    def _set_extra_meta(self, extra: dict[str, Any]) -> None:
        super()._set_extra_meta(extra)
        # recompute user factors for known users only when their data came with the file
        if self.user_items_.nnz:
            self.user_factors_ = self._fold(
                sp.csr_matrix(self.user_items_[:, self.head_items_])
            ).astype(np.float32)
        else:
            self.user_factors_ = np.zeros(
                (self.user_items_.shape[0], self.item_factors_.shape[1]), np.float32
            )
