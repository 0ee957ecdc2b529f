"""The contract every privrec recommender follows.

Habits borrowed from scikit-learn and ``implicit``: ``__init__`` only stores
hyper-parameters; ``fit`` learns and returns ``self``; learned attributes end in
``_``; ``recommend`` takes internal user indices (one or a batch) and returns
``(item_indices, scores)``. Hyper-parameters are validated by a pydantic
``Config`` so they can be written to TOML/JSON and read back unchanged.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
import numpy.typing as npt
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import (
    ConfigError,
    DataError,
    MissingUserDataError,
    NotFittedError,
    UnknownUserError,
)
from privrec.models.ranking import mask_seen, top_k

__all__ = ["MODEL_REGISTRY", "ModelConfig", "Recommender", "load_model", "register"]

FORMAT = "privrec-model"
FORMAT_VERSION = 1
_SCORE_BLOCK = 1 << 24  # floats per scoring block (64 MB of float32)

MODEL_REGISTRY: dict[str, type[Recommender]] = {}

R = TypeVar("R", bound="type[Recommender]")


def _config_error(cls_name: str, exc: pydantic.ValidationError) -> ConfigError:
    """One readable line for the first validation problem."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    if err["type"] == "missing":
        return ConfigError(f"{cls_name}: missing required parameter {field!r}")
    if err["type"] == "extra_forbidden":
        return ConfigError(f"{cls_name} has no parameter {field!r}")
    return ConfigError(f"{cls_name}: invalid {field}={err.get('input')!r}: {err['msg']}")


def register(cls: R) -> R:
    """Class decorator: make a model loadable by name (CLI, ``load_model``)."""
    MODEL_REGISTRY[cls.name] = cls
    return cls


class ModelConfig(pydantic.BaseModel):
    """Base of every model's hyper-parameter schema (strict: unknown keys are errors)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def as_interactions(data: Interactions | sp.spmatrix | sp.sparray) -> Interactions:
    if isinstance(data, Interactions):
        return data
    if sp.issparse(data):
        return Interactions.from_csr(data)
    raise DataError(
        "fit expects an Interactions object or a scipy.sparse matrix",
        expected="Interactions | scipy.sparse matrix",
        found=type(data).__name__,
    )


def as_user_items(
    user_items: Interactions | sp.spmatrix | sp.sparray | npt.ArrayLike, n_items: int
) -> sp.csr_matrix:
    """Histories of new users as a float32 CSR with ``n_items`` columns."""
    if isinstance(user_items, Interactions):
        m = user_items.matrix
    elif sp.issparse(user_items):
        m = sp.csr_matrix(user_items)  # type: ignore[arg-type]
    else:
        arr = np.asarray(user_items, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        m = sp.csr_matrix(arr)
    if m.shape[1] != n_items:
        raise DataError(
            "user histories must cover the model's catalogue",
            field="n_items",
            expected=str(n_items),
            found=m.shape[1],
        )
    m = sp.csr_matrix(m, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.sort_indices()
    if m.nnz and not np.isfinite(m.data).all():
        raise DataError(
            "user histories hold non-finite values", field="value", expected="finite numbers"
        )
    return m


class Recommender(ABC):
    """Base class: fit on interactions, recommend items to known or new users.

    Subclasses define ``name``, ``Config`` and implement ``_fit``,
    ``_score_users`` (known users) and ``_score_histories`` (new users folded
    in from their histories), plus ``_state``/``_set_state`` for persistence.
    """

    name: ClassVar[str] = "recommender"
    Config: ClassVar[type[ModelConfig]] = ModelConfig

    # learned state shared by every model
    user_ids_: np.ndarray
    item_ids_: np.ndarray
    user_items_: sp.csr_matrix

    # ------------------------------------------------------------- parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__``."""
        return {p: getattr(self, p) for p in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        names = set(self._param_names())
        for key, value in params.items():
            if key not in names:
                raise ConfigError(
                    f"{type(self).__name__} has no parameter {key!r}; known: {sorted(names)}"
                )
            setattr(self, key, value)
        return self

    def config(self) -> ModelConfig:
        """Validated, typed hyper-parameters (raises :class:`ConfigError`)."""
        try:
            return self.Config(**self.get_params())
        except pydantic.ValidationError as exc:
            raise _config_error(type(self).__name__, exc) from None

    @classmethod
    def from_config(cls, config: ModelConfig | dict[str, Any]) -> Self:
        """Build a model from a ``Config`` (or a plain dict, validated first)."""
        if isinstance(config, dict):
            try:
                config = cls.Config(**config)
            except pydantic.ValidationError as exc:
                raise _config_error(cls.__name__, exc) from None
        return cls(**config.model_dump())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -------------------------------------------------------------------- fit
    def fit(self, interactions: Interactions | sp.spmatrix | sp.sparray) -> Self:
        """Learn from a users × items matrix; returns ``self``."""
        cfg = self.config()
        data = as_interactions(interactions)
        self._fit(data, cfg)
        self.user_ids_ = np.asarray(data.user_ids)
        self.item_ids_ = np.asarray(data.item_ids)
        self.user_items_ = data.matrix
        self._released_only = False
        return self

    @abstractmethod
    def _fit(self, data: Interactions, config: Any) -> None: ...

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "user_items_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet: call fit(interactions) or load(path) first"
            )

    @property
    def n_users_(self) -> int:
        self._check_fitted()
        return int(self.user_items_.shape[0])

    @property
    def n_items_(self) -> int:
        self._check_fitted()
        return int(self.user_items_.shape[1])

    # ---------------------------------------------------------------- scoring
    @abstractmethod
    def _score_users(self, users: np.ndarray) -> np.ndarray:
        """Dense (len(users), n_items) scores for known user indices."""

    @abstractmethod
    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Dense (n, n_items) scores for new users given their histories."""

    def fold_in(
        self, user_items: Interactions | sp.spmatrix | sp.sparray | npt.ArrayLike
    ) -> np.ndarray:
        """Representation of users not seen in training, from their histories alone.

        Factor models return user factors; memory-based models (popularity,
        EASE, ItemKNN) are scored from the history itself, which is returned
        as a dense array. Training state is never modified.
        """
        self._check_fitted()
        return as_user_items(user_items, self.n_items_).toarray()

    def user_index(self, external_ids: npt.ArrayLike) -> np.ndarray:
        """Internal indices of external user ids (:class:`~privrec.errors.UnknownUserError` if unseen)."""
        self._check_fitted()
        return Interactions(self.user_items_, self.user_ids_, self.item_ids_).user_index(
            np.atleast_1d(np.asarray(external_ids))
        )

    def _check_users(self, user_ids: npt.ArrayLike) -> tuple[np.ndarray, bool]:
        arr = np.asarray(user_ids)
        single = arr.ndim == 0
        arr = np.atleast_1d(arr)
        if arr.ndim != 1:
            raise IndexError(
                f"user_ids must be an index or a 1-D array of indices, got shape {arr.shape}"
            )
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise IndexError(
                f"user_ids must be integer row indices, got dtype {arr.dtype}; "
                "map external ids with model.user_index(ids) or use recommend_ids(...)"
            )
        arr = arr.astype(np.int64)
        n = self.n_users_
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            raise IndexError(
                f"user index {int(arr[bad][0])} out of range: the model was fitted on {n} users "
                f"(indices 0..{n - 1}); score new users with recommend_history(user_items, k)"
            )
        return arr, single

    def recommend(
        self, user_ids: npt.ArrayLike, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for known users.

        Parameters
        ----------
        user_ids
            One internal user index (returns 1-D arrays) or a 1-D array of them
            (returns 2-D arrays, one row per user). Results for a user are the
            same whichever way it is asked.
        k
            List length, capped at the catalogue size.
        exclude_seen
            Leave out items the user interacted with in training. When fewer
            than ``k`` items remain, the tail is padded with item ``-1`` and
            score ``-inf``.

        Returns
        -------
        (item_indices, scores), best first.
        """
        self._check_fitted()
        if getattr(self, "_released_only", False):
            raise MissingUserDataError(
                f"this {type(self).__name__} was loaded from a file holding only its released parameters "
                "(no training interactions); serve users with recommend_history(user_items, k)"
            )
        users, single = self._check_users(user_ids)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        items, scores = self._recommend_blocks(
            users.shape[0],
            lambda lo, hi: self._score_users(users[lo:hi]),
            lambda lo, hi: self.user_items_[users[lo:hi]],
            k,
            exclude_seen,
        )
        return (items[0], scores[0]) if single else (items, scores)

    def recommend_ids(
        self, external_user_ids: npt.ArrayLike, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`recommend` but with external user ids in and external item ids out.

        Unknown ids raise :class:`~privrec.errors.UnknownUserError` (a ``KeyError``).
        Padding entries (item ``-1``) come back as ``None``.
        """
        single = np.ndim(external_user_ids) == 0
        idx = self.user_index(external_user_ids)
        items, scores = self.recommend(idx, k, exclude_seen)
        ext = np.empty(items.shape, dtype=object)
        ok = items >= 0
        ext[ok] = self.item_ids_[items[ok]]
        ext[~ok] = None
        return (ext[0], scores[0]) if single else (ext, scores)

    def recommend_history(
        self,
        user_items: Interactions | sp.spmatrix | sp.sparray | npt.ArrayLike,
        k: int = 10,
        exclude_seen: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for users not seen in training, folded in from their histories.

        ``user_items`` is a (n, n_items) matrix of histories (or one 1-D row);
        the returned arrays have one row per history.
        """
        self._check_fitted()
        single = (
            not sp.issparse(user_items)
            and not isinstance(user_items, Interactions)
            and np.ndim(user_items) == 1  # type: ignore[arg-type]
        )
        hist = as_user_items(user_items, self.n_items_)
        items, scores = self._recommend_blocks(
            hist.shape[0],
            lambda lo, hi: self._score_histories(hist[lo:hi]),
            lambda lo, hi: hist[lo:hi],
            k,
            exclude_seen,
        )
        return (items[0], scores[0]) if single else (items, scores)

    def _recommend_blocks(
        self,
        n: int,
        score: Callable[[int, int], np.ndarray],
        seen: Callable[[int, int], sp.csr_matrix],
        k: int,
        exclude_seen: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        kk = int(min(k, self.n_items_))
        items = np.empty((n, kk), dtype=np.int64)
        scores = np.empty((n, kk), dtype=np.float32)
        block = max(1, _SCORE_BLOCK // max(self.n_items_, 1))
        for lo in range(0, n, block):  # blocks of users, not single users
            hi = min(n, lo + block)
            s = np.asarray(score(lo, hi), dtype=np.float32)
            if exclude_seen:
                mask_seen(s, sp.csr_matrix(seen(lo, hi)))
            items[lo:hi], scores[lo:hi] = top_k(s, kk)
        return items, scores

    # ------------------------------------------------------------ persistence
    def _state(self) -> dict[str, np.ndarray]:
        """Learned arrays specific to the model (saved in the npz)."""
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:  # noqa: B027 (optional hook)
        """Restore what ``_state`` returned."""

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    #: whether ``save`` stores the training interactions by default (private models: no)
    save_user_data: ClassVar[bool] = True

    def _set_extra_meta(self, extra: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what ``_extra_meta`` returned."""

    def save(self, path: str | Path, *, include_user_data: bool | None = None) -> Path:
        """Write the fitted model to one ``.npz`` file: arrays plus JSON metadata, no pickle.

        ``include_user_data`` stores the training interactions too (needed to
        recommend to known users with seen items excluded after loading). It
        defaults to ``True`` for non-private models and ``False`` for private
        ones, whose file then holds only what the privacy guarantee releases;
        such a model serves users through :meth:`recommend_history`.
        """
        self._check_fitted()
        with_data = self.save_user_data if include_user_data is None else include_user_data
        path = Path(path)
        if path.suffix != ".npz":
            path = (
                path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
            )
        from privrec import __version__

        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "class": type(self).__name__,
            "privrec_version": __version__,
            "params": self.config().model_dump(mode="json"),
            "extra": self._extra_meta(),
            "has_user_data": with_data,
        }
        um = self.user_items_ if with_data else _empty_csr(self.user_items_.shape)
        arrays: dict[str, np.ndarray] = {
            "__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "user_ids": _ids_for_npz(self.user_ids_),
            "item_ids": _ids_for_npz(self.item_ids_),
            "ui_data": um.data,
            "ui_indices": um.indices,
            "ui_indptr": um.indptr,
            "ui_shape": np.asarray(um.shape, dtype=np.int64),
        }
        for key, value in self._state().items():
            arrays[f"state_{key}"] = np.asarray(value)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Read a model written by :meth:`save` (of this class or, from the base, any registered class)."""
        model = load_model(path)
        if cls is not Recommender and not isinstance(model, cls):
            raise DataError(
                "the file holds a different model",
                file=path,
                field="model",
                expected=cls.name,
                found=model.name,
            )
        return model


def _empty_csr(shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix(
        (np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(shape[0] + 1, np.int64)),
        shape=shape,
    )


def _ids_for_npz(ids: np.ndarray) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype == object:
        return arr.astype(str)
    return arr


def load_model(path: str | Path) -> Recommender:
    """Load any registered model saved with :meth:`Recommender.save`."""
    import privrec.models.all  # noqa: F401  (registers every built-in model)

    path = Path(path)
    if not path.exists():
        raise DataError("model file not found", file=path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise DataError("not a privrec model file", file=path, found=str(exc)) from None
    if "__meta__" not in arrays:
        raise DataError("not a privrec model file (no metadata)", file=path, field="__meta__")
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            "unsupported model file format",
            file=path,
            field="format",
            expected=f"{FORMAT} v{FORMAT_VERSION}",
            found=f"{meta.get('format')} v{meta.get('format_version')}",
        )
    name = meta["model"]
    if name not in MODEL_REGISTRY:
        raise DataError(
            "unknown model type",
            file=path,
            field="model",
            expected=" | ".join(MODEL_REGISTRY),
            found=name,
        )
    cls = MODEL_REGISTRY[name]
    model = cls.from_config(meta["params"])
    n_rows, n_cols = (int(s) for s in arrays.pop("ui_shape"))
    shape = (n_rows, n_cols)
    model.user_items_ = sp.csr_matrix(
        (arrays.pop("ui_data"), arrays.pop("ui_indices"), arrays.pop("ui_indptr")), shape=shape
    )
    model.user_ids_ = arrays.pop("user_ids")
    model.item_ids_ = arrays.pop("item_ids")
    model._set_state(
        {k.removeprefix("state_"): v for k, v in arrays.items() if k.startswith("state_")}
    )
    model._set_extra_meta(meta.get("extra", {}))
    model._released_only = not meta.get("has_user_data", True)
    return model


__all__ += ["UnknownUserError", "as_interactions", "as_user_items"]
