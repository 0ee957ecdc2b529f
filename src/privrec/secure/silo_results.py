"""What cross-silo training releases (:class:`SiloResult`, :class:`SiloEASEResult`) and how a
silo scores its own users from it (see :mod:`privrec.secure.silo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from privrec.models.private import blend_popularity, head_item_scores
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.secure.silo_config import SiloConfig
from privrec.secure.silo_stats import binary, user_solve

__all__ = ["SiloEASEResult", "SiloResult"]


@dataclass
class SiloResult:
    """What cross-silo training releases, with its guarantee and timings."""

    item_factors: np.ndarray
    head_items: np.ndarray
    noisy_counts: np.ndarray
    noise_scale: float
    guarantee: PrivacyGuarantee
    #: the item ridge λ the driver used (from public settings and the planned noise)
    regularization: float = 0.0
    #: β of the popularity blend at scoring time (0: factor scores alone)
    popularity_blend: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    solve_seconds: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    #: per silo, seconds of local statistics computation per release (filled by run_local)
    silo_seconds: list[list[float]] = field(default_factory=list)
    #: per-release timings of every role (filled by run_local): ``driver`` (round, receive,
    #: decode), ``servers`` (noise, receive, sum, send, per server) and ``silos`` (compute,
    #: encode, send, per silo); "receive" counts from the first byte of a message, not waiting
    timings: dict[str, Any] = field(default_factory=dict)

    def user_factors(self, user_items: Any, config: SiloConfig) -> np.ndarray:
        """A silo's own users' factors from the released item factors (never leaves the silo)."""
        xh = binary(sp.csr_matrix(user_items)[:, self.head_items])
        y = self.item_factors[self.head_items].astype(np.float64)
        return user_solve(xh, y, config.alpha0, config.user_regularization)

    def scores(self, user_items: Any, config: SiloConfig) -> np.ndarray:
        """Scores over the catalogue for each row of ``user_items`` (``-inf`` off the head), as
        central DPALS scores: factor scores blended with the released noisy counts
        (:func:`~privrec.models.private.blend_popularity`, β = ``popularity_blend``); with
        β = 0, raw factor scores and the noisy-count ranking for users without history.

        Runs inside a silo on its own users' histories (joint DP: post-processing of the
        released item factors and counts plus the user's own data).
        """
        u = self.user_factors(user_items, config).astype(np.float32)  # float32, as central
        return head_item_scores(
            u, self.item_factors, self.head_items, self.noisy_counts, self.popularity_blend
        )


@dataclass
class SiloEASEResult:
    """What cross-silo DPEASE releases, with its guarantee and timings."""

    weights: np.ndarray
    head_items: np.ndarray
    item_popularity: np.ndarray
    noisy_counts: np.ndarray | None
    noise_multiplier: float
    guarantee: PrivacyGuarantee
    #: the EASE ridge λ the driver used (from public settings and the planned noise)
    regularization: float = 0.0
    #: β of the popularity blend at scoring time (0: EASE scores alone)
    popularity_blend: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    solve_seconds: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    #: per-release timings of every role (filled by run_local; see SiloResult.timings)
    timings: dict[str, Any] = field(default_factory=dict)

    def scores(self, user_items: Any) -> np.ndarray:
        """Scores for each row of ``user_items`` over the catalogue (``-inf`` off the head), as
        central DPEASE scores: ``x_u B`` blended with the released popularity (the Gram
        diagonal; :func:`~privrec.models.private.blend_popularity`, β = ``popularity_blend``);
        with β = 0, raw ``x_u B`` and the popularity for users without head history. Uses
        each user's own history only (joint DP)."""
        x = binary(sp.csr_matrix(user_items)[:, self.head_items])
        out = np.full((x.shape[0], sp.csr_matrix(user_items).shape[1]), -np.inf, np.float32)
        raw = np.asarray(x @ self.weights, dtype=np.float32)
        if self.popularity_blend > 0:
            out[:, self.head_items] = blend_popularity(
                raw, self.item_popularity, self.popularity_blend
            )
            return out
        out[:, self.head_items] = raw
        cold = np.diff(x.indptr) == 0
        if cold.any():
            out[np.ix_(cold, self.head_items)] = self.item_popularity
        return out
