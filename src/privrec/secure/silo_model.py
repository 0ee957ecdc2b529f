"""Cross-silo results as ordinary privrec models: a :class:`~privrec.models.DPALS` or
:class:`~privrec.models.DPEASE` holding exactly what the silos released, with its guarantee.

The object is built from the released arrays with the model classes' own
:meth:`~privrec.models.private.PrivateRecommender.from_release` (the arrays checked as a loaded
file's are, the guarantee verified against the parameters), so saving it with :meth:`~privrec.models.base.Recommender.save` gives a normal model
file: ``privrec privacy explain`` reads its guarantee, and ``recommend`` scores a user from
that user's own history, exactly as :meth:`SiloResult.scores` does inside a silo.

It holds no per-user data and not even a user count: no silo's users ever reach the driver,
so the model is built with **zero** training users (``user_items_`` is an empty ``0 × n``
matrix). The item catalogue (``item_ids``) is assumed public -- the silos agreed on it before
training -- and is given explicitly (``privrec silo split`` writes it), or defaults to the
indices ``0 .. n_items - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from privrec.errors import ConfigError, DataError
from privrec.models.dp_als import DPALS
from privrec.models.dp_ease import DPEASE
from privrec.models.private import PrivateRecommender
from privrec.secure.silo_config import SiloConfig, SiloEASEConfig
from privrec.secure.silo_results import SiloEASEResult, SiloResult

__all__ = ["read_catalogue", "to_model"]


def read_catalogue(path: str | Path) -> np.ndarray:
    """External item ids, one per line, in catalogue order (as :func:`privrec.cli` writes them).

    Integer ids come back as ``int64``, anything else as strings.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("catalogue file not found", file=p) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            "catalogue file is not readable UTF-8 text", file=p, found=str(exc)
        ) from None
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise DataError("catalogue file lists no item", file=p)
    if len(set(ids)) != len(ids):
        raise DataError("catalogue file lists an item twice", file=p)
    try:
        return np.asarray([int(i) for i in ids], dtype=np.int64)
    except ValueError:
        return np.asarray(ids, dtype=str)


def _catalogue(item_ids: Sequence[object] | np.ndarray | None, n_items: int) -> np.ndarray:
    if item_ids is None:
        return np.arange(n_items, dtype=np.int64)
    ids = np.asarray(item_ids)
    if ids.shape != (n_items,):
        raise ConfigError(
            f"the catalogue lists {ids.size} items, the training configuration has {n_items}"
        )
    return ids


def to_model(
    result: SiloResult | SiloEASEResult,
    config: SiloConfig | SiloEASEConfig,
    item_ids: Sequence[object] | np.ndarray | None = None,
) -> PrivateRecommender:
    """The released cross-silo model as a fitted :class:`DPALS` / :class:`DPEASE` (no users).

    Parameters
    ----------
    result, config
        What :meth:`Driver.train` / :meth:`EASEDriver.train` returned, and the configuration
        it trained with (its hyper-parameters become the model's; the accountant is RDP).
    item_ids
        External ids of the catalogue, in index order (public); default ``0 .. n_items-1``.
    """
    ids = _catalogue(item_ids, config.n_items)
    state: dict[str, np.ndarray]
    if isinstance(result, SiloResult):
        if not isinstance(config, SiloConfig):
            raise ConfigError("a DPALS result needs its SiloConfig")
        c = config
        params: dict[str, Any] = {
            "epsilon": c.epsilon,
            "delta": c.delta,
            "unit": "user",
            "accountant": "rdp",
            **{
                name: getattr(c, name)
                for name in (
                    "factors",
                    "iterations",
                    "method",
                    "max_per_user",
                    "adaptive_exponent",
                    "clip_norm",
                    "regularization",
                    "reg_exponent",
                    "user_regularization",
                    "alpha0",
                    "head_fraction",
                    "head_snr",
                    "head_min",
                    "count_sample",
                    "gram_noise_ratio",
                    "lhs_noise_ratio",
                    "rhs_noise_ratio",
                    "count_noise_ratio",
                    "init_scale",
                    "popularity_blend",
                )
            },
        }
        state = {
            "item_factors": np.asarray(result.item_factors, dtype=np.float32),
            "head_items": np.asarray(result.head_items, dtype=np.int64),
            "noisy_counts": np.asarray(result.noisy_counts, dtype=np.float32),
            "noise_scale": np.asarray(result.noise_scale),
            "fold": np.asarray([c.alpha0, c.user_regularization]),
            "popularity_blend": np.asarray(result.popularity_blend),
        }
        # the catalogue is the silos' agreed public list (config and items file), not learnt
        given = result.guarantee.with_disclosure(catalogue="given")
        return DPALS.from_release(params, item_ids=ids, state=state, guarantee=given)
    if not isinstance(config, SiloEASEConfig):
        raise ConfigError("a DPEASE result needs its SiloEASEConfig")
    e = config
    params = {
        "epsilon": e.epsilon,
        "delta": e.delta,
        "unit": "user",
        "accountant": "rdp",
        **{
            name: getattr(e, name)
            for name in (
                "regularization",
                "reg_scale",
                "max_contribution",
                "max_per_user",
                "max_items",
                "head_snr",
                "head_min",
                "count_budget_fraction",
                "popularity_blend",
            )
        },
    }
    state = {
        "weights": np.asarray(result.weights),
        "head_items": np.asarray(result.head_items, dtype=np.int64),
        "item_popularity": np.asarray(result.item_popularity, dtype=np.float32),
        "noise_multiplier": np.asarray(result.noise_multiplier),
        "popularity_blend": np.asarray(result.popularity_blend),
    }
    given = result.guarantee.with_disclosure(catalogue="given")
    return DPEASE.from_release(params, item_ids=ids, state=state, guarantee=given)
