"""The contract every privrec recommender follows.

Habits borrowed from scikit-learn and ``implicit``: ``__init__`` only stores
hyper-parameters; ``fit`` learns and returns ``self``; learned attributes end in
``_``; ``recommend`` takes internal user indices (one or a batch) and returns
``(item_indices, scores)``. Hyper-parameters are validated by a pydantic
``Config`` so they can be written to TOML/JSON and read back unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

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

if TYPE_CHECKING:
    from privrec.models.file_layout import FileLayout
    from privrec.models.signing import FileSignature, SigningKey, VerifyKey

__all__ = ["MODEL_REGISTRY", "ModelConfig", "Recommender", "load_model", "register"]

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


#: what ``recommend_history`` / ``fold_in`` take, said when given something else (most often a
#: list of item ids, which is how a user's history usually arrives)
_HISTORY_SHAPE = (
    "user histories must be a users × items matrix over the model's catalogue: one row per "
    "user, one column per item of model.item_ids_ (in that order), non-zero where the user "
    "interacted; to give the ids of the items one user interacted with, build the row with "
    "model.history_row(item_ids)"
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
        try:
            arr = np.asarray(user_items, dtype=np.float32)
        except (TypeError, ValueError):  # e.g. a list of string item ids
            raise DataError(
                _HISTORY_SHAPE, field="value", expected="numbers", found="non-numeric values"
            ) from None
        if arr.ndim == 1:
            arr = arr[None, :]
        m = sp.csr_matrix(arr)
    if m.shape[1] != n_items:
        raise DataError(
            _HISTORY_SHAPE, field="n_items", expected=f"{n_items} columns", found=m.shape[1]
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
    #: the signature block of the file the model was loaded from (``None``: not loaded, or
    #: not signed); ``verified`` only when ``load_model(..., verify_key=...)`` checked it
    file_signature_: FileSignature | None = None

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
    def with_catalogue(self, item_ids: npt.ArrayLike) -> Self:
        """Fix the item catalogue before ``fit``: columns are these ids, in this order.

        Every item of the training data must be in it; catalogue items nobody interacted with
        get empty columns. For a private model this is how the catalogue stops depending on
        the data: without it, the catalogue is the set of items someone interacted with, which
        the guarantee then has to assume public. Returns ``self`` (chainable).
        """
        ids = np.asarray(item_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise DataError(
                "the item catalogue must be a non-empty 1-D list of ids",
                field="item_ids",
                found=ids.shape,
            )
        if ids.dtype == object:
            ids = ids.astype(str)
        if len(np.unique(ids)) != len(ids):
            raise DataError("the item catalogue holds duplicate ids", field="item_ids")
        self._catalogue = ids
        return self

    @contextlib.contextmanager
    def _unchanged_on_failure(self) -> Any:
        """A ``fit`` that raises leaves the model as it was: parameters' state, catalogue and
        learned arrays (a reviewer's refit that failed validation had already replaced the
        noise scale and the catalogue of a fitted model, whose file then paired them with the
        old guarantee). Fits build new arrays rather than change the old ones in place, so the
        attributes themselves are what must come back."""
        before = dict(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def fit(self, interactions: Interactions | sp.spmatrix | sp.sparray) -> Self:
        """Learn from a users × items matrix; returns ``self``.

        The columns are the data's items unless a catalogue was fixed with
        :meth:`with_catalogue` (the private models also take it as ``fit(..., item_ids=...)``).
        A fit that raises leaves the model as it was.
        """
        with self._unchanged_on_failure():
            return self._fit_all(interactions)

    def _fit_all(self, interactions: Interactions | sp.spmatrix | sp.sparray) -> Self:
        cfg = self.config()
        data = as_interactions(interactions)
        catalogue = getattr(self, "_catalogue", None)
        if catalogue is not None:
            data = on_catalogue(data, catalogue)
        self._catalogue_source = "data" if catalogue is None else "given"
        self._fit(data, cfg)
        self.user_ids_ = np.asarray(data.user_ids)
        self.item_ids_ = np.asarray(data.item_ids)
        self.user_items_ = data.matrix
        self._released_only = False
        self._after_fit()
        return self

    def _after_fit(self) -> None:  # noqa: B027 (optional hook)
        """Called once the learned state is complete (private models complete their guarantee)."""

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
        self._check_user_data()
        return Interactions(self.user_items_, self.user_ids_, self.item_ids_).user_index(
            np.atleast_1d(np.asarray(external_ids))
        )

    def _check_user_data(self) -> None:
        if getattr(self, "_released_only", False):
            raise MissingUserDataError(
                f"this {type(self).__name__} holds only its released parameters (no training users "
                "or interactions); serve a user from their own history: recommend_history(user_items, k) "
                "in Python, `privrec recommend MODEL --history FILE` on the command line"
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
        self._check_user_data()
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

        ``user_items`` is a (n, n_items) matrix of histories (or one 1-D row): one column
        per item of :attr:`item_ids_`, in that order — not a list of item ids, which
        :meth:`history_row` turns into such a row. The returned arrays have one row per
        history (1-D for a 1-D row).

        Examples
        --------
        >>> from privrec.data.synthetic import synthetic
        >>> from privrec.models import Popularity
        >>> m = Popularity().fit(synthetic(n_users=50, n_items=20, seed=0))
        >>> items, scores = m.recommend_history(m.history_row(m.item_ids_[:3]), k=2)
        >>> items.shape, bool(set(items) & set(range(3)))
        ((2,), False)
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

    def history_row(self, item_ids: npt.ArrayLike, *, ignore_unknown: bool = False) -> np.ndarray:
        """One new user's history as the row :meth:`recommend_history` and :meth:`fold_in`
        take, from the external ids of the items they interacted with.

        Those methods take a users × items matrix — one column per item of
        :attr:`item_ids_`, in that order — because that is what the models compute with
        and it batches many users; a user's history usually comes as a list of item ids.

        Parameters
        ----------
        item_ids
            External item ids (as in :attr:`item_ids_`); repeats count once. An id given as
            text names the integer item it spells (``"17"``), an integer the text item it
            prints as (``5`` → ``"5"``), as the service reads a history.
        ignore_unknown
            Leave out ids the model's catalogue does not hold (they cannot change the
            recommendation) instead of raising.

        Returns
        -------
        numpy.ndarray
            A float32 row of length ``n_items_``: 1 at the given items, 0 elsewhere. Stack
            rows (``np.vstack``) for several users.

        Raises
        ------
        UnknownItemError
            An id not in the catalogue (unless ``ignore_unknown``).
        """
        self._check_fitted()
        ids = np.atleast_1d(np.asarray(item_ids))
        if ids.ndim != 1:
            raise DataError(
                "history_row takes one user's item ids (a 1-D list)",
                field="item_ids",
                expected="1-D",
                found=f"shape {ids.shape}",
            )
        row = np.zeros(self.n_items_, dtype=np.float32)
        if ids.size == 0:
            return row
        # ids as text (a CSV, JSON, a command line) name the items whose ids print as they do,
        # as the service takes them: "17" is item 17 of an integer catalogue, 5 is item "5"
        known = np.asarray(self.item_ids_)
        if np.issubdtype(known.dtype, np.integer) and ids.dtype.kind in "US":
            with contextlib.suppress(ValueError, OverflowError):
                ids = ids.astype(known.dtype)
        elif np.issubdtype(ids.dtype, np.integer) and (
            known.dtype.kind in "US"
            or (known.dtype == object and known.size > 0 and isinstance(known[0], str))
        ):
            ids = np.array([str(v) for v in ids.tolist()], dtype=object)  # never cut to width
        if ignore_unknown:
            import pandas as pd

            pos = pd.Index(np.asarray(self.item_ids_)).get_indexer(pd.Index(ids))
            row[pos[pos >= 0]] = 1.0
            return row
        row[Interactions(self.user_items_, self.user_ids_, self.item_ids_).item_index(ids)] = 1.0
        return row

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

    def _known_n_items(self) -> int | None:
        """Catalogue size when the catalogue is already set (always, when loading a file)."""
        ids = getattr(self, "item_ids_", None)
        return None if ids is None else len(ids)

    def _check_state(self) -> None:  # noqa: B027 (optional hook)
        """Validate arrays restored by ``_set_state`` against the catalogue and the parameters.

        Raise :class:`~privrec.errors.ModelFileError` (see :func:`check_array`); called by
        :func:`load_model` before the model is used.
        """

    @classmethod
    def _file_layout(cls, config: Any, n_items: int) -> FileLayout | None:
        """The arrays this model's file holds, with shapes from ``config`` and ``n_items``.

        :func:`load_model` checks the declared shapes against it from the ``.npy`` headers,
        before any array is decompressed (:mod:`privrec.models.file_layout`), so a file
        declaring arrays larger than such a model holds fails at its header. ``None`` (plug-in
        models that state nothing) leaves only the generic size and ratio bounds.
        """
        return None

    def save(
        self,
        path: str | Path,
        *,
        include_user_data: bool | None = None,
        signing_key: SigningKey | None = None,
    ) -> Path:
        """Write the fitted model to one ``.npz`` file: arrays plus JSON metadata, no pickle.

        ``include_user_data`` stores the training users and interactions too (needed to
        recommend to known users by id after loading). It defaults to ``True`` for non-private
        models and ``False`` for private ones, whose file then holds only what the privacy
        guarantee releases and what a user's own side needs — the item catalogue, the
        released arrays, the hyper-parameters and the guarantee; no user ids, no user count.
        Asking for it on a private model warns (:class:`~privrec.errors.PrivacyWarning`).
        Such a model serves users through :meth:`recommend_history`.

        ``signing_key`` (an Ed25519 private key, or the path of ``signing.key`` from
        :func:`privrec.models.signing.generate_keypair`) signs the file, so that a reader with
        the public key can refuse any edited or forged copy (:mod:`privrec.models.signing`).
        """
        from privrec.models.persistence import save_model

        return save_model(self, path, include_user_data=include_user_data, signing_key=signing_key)

    @classmethod
    def load(cls, path: str | Path, *, verify_key: VerifyKey | None = None) -> Recommender:
        """Read a model written by :meth:`save` (of this class or, from the base, any registered
        class); ``verify_key`` requires a valid signature by that key (see :func:`load_model`)."""
        model = load_model(path, verify_key=verify_key)
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


def on_catalogue(data: Interactions, catalogue: np.ndarray) -> Interactions:
    """``data`` with its columns re-indexed to ``catalogue`` (every data item must be in it)."""
    import pandas as pd

    ids = np.asarray(data.item_ids)
    cat = np.asarray(catalogue)
    if np.issubdtype(ids.dtype, np.integer) and cat.dtype.kind == "U":
        with contextlib.suppress(ValueError):  # a catalogue read from a text file, for integer ids
            cat = cat.astype(ids.dtype)
    index = pd.Index(cat)
    if not index.is_unique:  # e.g. "1" and "01" in a text catalogue, both item 1 once cast
        raise DataError(
            "the catalogue lists an item twice",
            field="item_ids",
            expected="each item once (after reading the ids as the data's integers)",
            found=f"{len(index) - index.nunique(dropna=False)} repeated",
        )
    pos = index.get_indexer(pd.Index(ids))
    if (pos < 0).any():
        missing = ids[pos < 0]
        raise DataError(
            f"{len(missing)} item(s) of the training data are not in the given catalogue",
            field="item_ids",
            expected="every interacted item listed in the catalogue",
            found=missing[:5].tolist(),
        )
    m = data.matrix
    new = sp.csr_matrix(
        (m.data.copy(), pos[m.indices].astype(np.int32), m.indptr.copy()),
        shape=(m.shape[0], len(cat)),
    )
    new.sort_indices()
    return Interactions(new, np.array(data.user_ids), cat.copy(), None)


def check_array(
    arrays: dict[str, np.ndarray] | np.ndarray,
    name: str,
    *,
    kind: str,
    shape: tuple[int | None, ...],
    low: float | None = None,
    high: float | None = None,
) -> np.ndarray:
    """One restored array, checked: dtype kind (``"f"``, ``"iu"``…), shape (``None`` = any length)
    and value range; raises :class:`~privrec.errors.ModelFileError` naming it."""
    from privrec.errors import ModelFileError

    a = arrays.get(name) if isinstance(arrays, dict) else arrays
    field = f"state_{name}"
    if a is None:
        raise ModelFileError("the model file lacks this array", field=field)
    a = np.asarray(a)
    if a.dtype.kind not in kind:
        raise ModelFileError("wrong array type", field=field, expected=kind, found=str(a.dtype))
    if a.ndim != len(shape) or any(
        w is not None and w != s for w, s in zip(shape, a.shape, strict=True)
    ):
        raise ModelFileError(
            "wrong array shape",
            field=field,
            expected=str(tuple("*" if w is None else w for w in shape)),
            found=a.shape,
        )
    if a.size and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ModelFileError("array holds non-finite values", field=field)
    if a.size and low is not None and float(a.min()) < low:
        raise ModelFileError(
            "array value out of range", field=field, expected=f">= {low:g}", found=float(a.min())
        )
    if a.size and high is not None and float(a.max()) > high:
        raise ModelFileError(
            "array value out of range", field=field, expected=f"<= {high:g}", found=float(a.max())
        )
    return a


def load_model(
    path: str | Path,
    *,
    verify: bool = True,
    max_bytes: int | None = None,
    verify_key: VerifyKey | None = None,
) -> Recommender:
    """Load any registered model saved with :meth:`Recommender.save` (see :mod:`privrec.models.persistence`)."""
    from privrec.models.persistence import load_model as _load

    return _load(path, verify=verify, max_bytes=max_bytes, verify_key=verify_key)


__all__ += ["UnknownUserError", "as_interactions", "as_user_items", "check_array", "on_catalogue"]
