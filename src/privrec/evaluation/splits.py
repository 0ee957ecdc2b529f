"""Train / validation / test splits for offline evaluation of recommenders.

Two families of protocols are supported, and a :class:`Split` says which one
it holds through the type of its :class:`EvalSet`:

* **Weak generalisation** (``EvalSet.users`` set): the evaluated users are rows
  of the training matrix; part of their history is held out as targets, the
  model is fitted on the rest and scores them with ``model.recommend``, which
  leaves out their training items. :func:`random_holdout`,
  :func:`leave_last_out`, :func:`load_split` and :func:`split_from_interactions`
  produce these.
* **Strong generalisation** (``EvalSet.fold_in`` set): the evaluated users are
  absent from training. Their history is split into a *fold-in* part, given to
  ``model.recommend_history``, and targets. :func:`strong_generalization`
  (Liang et al. 2018) produces these. It is the protocol that matches a
  privacy setting where a user's data never enter the trained model.

Every part of a split shares the training item index space, so a column means
the same item everywhere. Targets on items that no training user touched are
kept: dropping them would flatter models that cannot recommend unseen items.

All splitting is vectorised: one random key (or timestamp) per interaction,
a single ``lexsort`` by (user, key) and the position inside each row decide
where an interaction goes; there is no Python loop over users.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import DataError, DataWarning

__all__ = [
    "EvalSet",
    "Split",
    "leave_last_out",
    "load_split",
    "random_holdout",
    "split_from_frames",
    "split_from_interactions",
    "strong_generalization",
]


# --------------------------------------------------------------------------- data model
@dataclass(frozen=True, eq=False, kw_only=True)
class EvalSet:
    """The users evaluated at one stage (validation or test) and their targets.

    Exactly one of ``users`` and ``fold_in`` is set.

    Attributes
    ----------
    targets
        ``(n_eval, n_items)`` CSR; row ``r`` holds the held-out items of the
        ``r``-th evaluated user. Rows may be empty (such users are counted but
        not averaged by the metrics).
    user_ids
        External ids of the evaluated users, for reports.
    users
        Weak generalisation: row indices of the evaluated users in
        ``Split.train`` (the model scores them with ``recommend``).
    fold_in
        Strong generalisation: ``(n_eval, n_items)`` histories of users absent
        from training (the model scores them with ``recommend_history``).
    """

    targets: sp.csr_matrix
    user_ids: np.ndarray
    users: np.ndarray | None = None
    fold_in: sp.csr_matrix | None = None

    def __post_init__(self) -> None:
        if (self.users is None) == (self.fold_in is None):
            raise DataError(
                "an EvalSet needs exactly one of users (weak) or fold_in (strong)",
                field="users/fold_in",
                expected="exactly one set",
                found="both" if self.users is not None else "neither",
            )
        if not sp.isspmatrix_csr(self.targets):
            raise DataError("targets must be a CSR matrix", found=type(self.targets).__name__)
        n = int(self.targets.shape[0])
        if len(self.user_ids) != n:
            raise DataError(
                "user_ids must have one entry per target row",
                field="user_ids",
                expected=str(n),
                found=len(self.user_ids),
            )
        if self.users is not None and len(self.users) != n:
            raise DataError(
                "users must have one entry per target row",
                field="users",
                expected=str(n),
                found=len(self.users),
            )
        if self.fold_in is not None and self.fold_in.shape != self.targets.shape:
            raise DataError(
                "fold_in and targets must have the same shape",
                field="fold_in",
                expected=str(self.targets.shape),
                found=self.fold_in.shape,
            )

    @property
    def n_users(self) -> int:
        """Number of evaluated users (rows of ``targets``)."""
        return int(self.targets.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.targets.shape[1])

    @property
    def strong(self) -> bool:
        """True when the users are scored from ``fold_in`` (not in training)."""
        return self.fold_in is not None

    @property
    def n_targets(self) -> np.ndarray:
        """Number of targets of each evaluated user."""
        return np.diff(self.targets.indptr)

    def history_counts(self, train: Interactions) -> np.ndarray:
        """Interactions the model sees for each evaluated user.

        Training rows for weak generalisation, fold-in rows for strong; used to
        group users by activity in reports.
        """
        if self.fold_in is not None:
            return np.diff(self.fold_in.indptr)
        assert self.users is not None
        return np.asarray(np.asarray(train.user_counts)[self.users])


@dataclass(frozen=True, eq=False)
class Split:
    """A training set plus the held-out sets it is evaluated on.

    Attributes
    ----------
    train
        What the model is fitted on.
    valid, test
        Evaluation sets (``valid`` may be ``None``), in ``train``'s item space.
    protocol
        Human-readable name of the protocol that built the split.
    seed
        Seed of the random choices (``None`` when the split is deterministic or
        was drawn from fresh entropy).
    """

    train: Interactions
    valid: EvalSet | None
    test: EvalSet
    protocol: str
    seed: int | None = field(default=None)

    def __post_init__(self) -> None:
        for name, es in (("valid", self.valid), ("test", self.test)):
            if es is None:
                continue
            if es.n_items != self.train.n_items:
                raise DataError(
                    f"{name} targets are not in the training item space",
                    field=name,
                    expected=f"{self.train.n_items} items",
                    found=es.n_items,
                )
            if (
                es.users is not None
                and es.users.size
                and (es.users.min() < 0 or es.users.max() >= self.train.n_users)
            ):
                raise DataError(
                    f"{name} users are not rows of the training matrix",
                    field=name,
                    expected=f"indices in 0..{self.train.n_users - 1}",
                    found=int(es.users.max()),
                )

    def eval_set(self, on: Literal["test", "valid"] = "test") -> EvalSet:
        """The evaluation set named ``on``; :class:`DataError` if it is absent."""
        if on == "test":
            return self.test
        if on == "valid":
            if self.valid is None:
                raise DataError(
                    "this split has no validation set", field="on", expected="'test'", found=on
                )
            return self.valid
        raise DataError("unknown evaluation set", field="on", expected="'test' | 'valid'", found=on)

    def __repr__(self) -> str:
        def desc(es: EvalSet | None) -> str:
            if es is None:
                return "None"
            kind = "fold-in" if es.strong else "in-train"
            return f"{es.n_users} {kind} users, {es.targets.nnz} targets"

        return (
            f"Split(protocol={self.protocol!r}, seed={self.seed}, train={self.train!r}, "
            f"valid=[{desc(self.valid)}], test=[{desc(self.test)}])"
        )


# --------------------------------------------------------------------------- helpers
def _check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    lo_ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not (lo_ok and value < 1):
        raise DataError(
            "fraction out of range",
            field=name,
            expected="a number in [0, 1)" if allow_zero else "a number in (0, 1)",
            found=value,
        )
    return float(value)


def _row_of(m: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))


def _position_in_row(m: sp.csr_matrix, key: np.ndarray) -> np.ndarray:
    """0-based rank of each stored entry inside its row when the row is sorted by ``key``."""
    rows = _row_of(m)
    order = np.lexsort((key, rows))  # rows ascending (already), key ascending inside a row
    pos = np.empty(m.nnz, dtype=np.int64)
    # order keeps rows contiguous, so entry order[j] sits at j - (start of its row)
    pos[order] = np.arange(m.nnz, dtype=np.int64) - m.indptr[rows]
    return pos


def _mask_csr(m: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """The stored entries where ``keep`` is true, same shape, CSR order preserved."""
    rows = _row_of(m)[keep]
    indptr = np.zeros(m.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=m.shape[0]), out=indptr[1:])
    return sp.csr_matrix(
        (np.asarray(m.data[keep], dtype=np.float32), np.asarray(m.indices[keep], np.int32), indptr),
        shape=m.shape,
    )


def _mask_interactions(data: Interactions, keep: np.ndarray) -> Interactions:
    ts = None if data.timestamps is None else np.array(data.timestamps[keep])
    return Interactions(
        _mask_csr(data.matrix, keep), np.array(data.user_ids), np.array(data.item_ids), ts
    )


def _n_held(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Interactions to hold out per user: ``fraction`` of them rounded half up, at least 1."""
    if fraction <= 0:
        return np.zeros_like(counts)
    n = np.floor(counts * fraction + 0.5).astype(np.int64)
    return np.where(counts > 0, np.maximum(n, 1), 0)


def _weak_eval(data: Interactions, held: np.ndarray, users: np.ndarray) -> EvalSet:
    """EvalSet of ``users`` (rows of ``data``) whose targets are the entries marked ``held``."""
    targets = _mask_csr(data.matrix, held)[users]
    return EvalSet(
        targets=sp.csr_matrix(targets),
        user_ids=np.array(data.user_ids[users]),
        users=users.astype(np.int64),
    )


def _rng_seed(seed: int | None) -> np.random.Generator:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise DataError("seed must be an integer or None", field="seed", found=seed)
    return np.random.default_rng(seed)


def _check_min(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise DataError("invalid count", field=name, expected=f"an integer >= {low}", found=value)
    return int(value)


# --------------------------------------------------------------------------- protocols
def random_holdout(
    data: Interactions,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.0,
    seed: int | None = 0,
    min_train: int = 1,
) -> Split:
    """Hold out a random fraction of every user's interactions (weak generalisation).

    Each user with ``c`` interactions gives ``round(c * test_fraction)`` of them
    (at least one) to the test targets and likewise to validation when
    ``valid_fraction > 0``. A user who would keep fewer than ``min_train``
    training interactions stays train-only, so that no evaluated user is a pure
    cold-start case by accident.

    Parameters
    ----------
    data
        All interactions.
    test_fraction, valid_fraction
        Shares of each user's history held out; ``test_fraction`` in (0, 1),
        ``valid_fraction`` in [0, 1), their sum below 1.
    seed
        Seed of the random choice (same seed, same split).
    min_train
        Training interactions a user must keep to be evaluated.

    Returns
    -------
    Split
        ``train`` keeps every user and item of ``data`` (index spaces unchanged).

    Examples
    --------
    >>> x = Interactions.from_arrays([0] * 5 + [1] * 5, list(range(5)) * 2)
    >>> s = random_holdout(x, test_fraction=0.4, seed=1)
    >>> s.train.nnz, s.test.targets.nnz, s.test.users.tolist()
    (6, 4, [0, 1])
    """
    tf = _check_fraction("test_fraction", test_fraction)
    vf = _check_fraction("valid_fraction", valid_fraction, allow_zero=True)
    if tf + vf >= 1:
        raise DataError(
            "test and validation fractions leave nothing to train on",
            field="test_fraction+valid_fraction",
            expected="a sum below 1",
            found=tf + vf,
        )
    min_train = _check_min("min_train", min_train, 0)
    rng = _rng_seed(seed)
    counts = np.asarray(data.user_counts, dtype=np.int64)
    n_test = _n_held(counts, tf)
    n_valid = _n_held(counts, vf)
    ok = (counts > 0) & (counts - n_test - n_valid >= min_train)
    if not ok.any():
        raise DataError(
            "no user has enough interactions to hold some out",
            field="min_train",
            expected=f"a user with at least {min_train + 1 + (vf > 0)} interactions",
            found=int(counts.max(initial=0)),
        )
    n_test = np.where(ok, n_test, 0)
    n_valid = np.where(ok, n_valid, 0)
    pos = _position_in_row(data.matrix, rng.random(data.nnz))
    rows = _row_of(data.matrix)
    is_test = pos < n_test[rows]
    is_valid = ~is_test & (pos < (n_test + n_valid)[rows])
    train = _mask_interactions(data, ~(is_test | is_valid))
    test = _weak_eval(data, is_test, np.flatnonzero(n_test > 0))
    valid = _weak_eval(data, is_valid, np.flatnonzero(n_valid > 0)) if vf > 0 else None
    return Split(train, valid, test, "random_holdout", None if seed is None else int(seed))


def leave_last_out(
    data: Interactions, n: int = 1, valid: bool = True, *, min_train: int = 1
) -> Split:
    """Hold out each user's ``n`` latest interactions (weak generalisation, temporal).

    The last ``n`` become test targets and, with ``valid=True``, the ``n``
    before them validation targets. Ties between equal timestamps are broken
    by item index (a higher index counts as later), so the split is fully
    deterministic. Users who would keep fewer than ``min_train`` training
    interactions stay train-only.

    Raises
    ------
    DataError
        When ``data`` has no timestamps, or no user has enough interactions.

    Examples
    --------
    >>> x = Interactions.from_arrays([0, 0, 0], [5, 6, 7], timestamps=[3, 1, 2])
    >>> s = leave_last_out(x, valid=False)
    >>> s.train.item_ids[s.train.matrix.indices].tolist(), s.test.targets.indices.tolist()
    ([6, 7], [0])
    """
    n = _check_min("n", n, 1)
    min_train = _check_min("min_train", min_train, 0)
    if data.timestamps is None:
        raise DataError(
            "leave_last_out needs timestamps to know which interactions are the latest",
            field="timestamps",
            expected="Interactions built with timestamps",
            found=None,
        )
    m = data.matrix
    counts = np.asarray(data.user_counts, dtype=np.int64)
    n_held = n * (2 if valid else 1)
    ok = counts - n_held >= max(min_train, 0)
    ok &= counts > 0
    if not ok.any():
        raise DataError(
            "no user has enough interactions to hold out the latest ones",
            field="n",
            expected=f"a user with at least {n_held + min_train} interactions",
            found=int(counts.max(initial=0)),
        )
    rows = _row_of(m)
    ts = np.asarray(data.timestamps, dtype=np.float64)
    order = np.lexsort((m.indices, ts, rows))
    pos = np.empty(m.nnz, dtype=np.int64)
    pos[order] = np.arange(m.nnz, dtype=np.int64) - m.indptr[rows]
    from_end = counts[rows] - 1 - pos
    eligible = ok[rows]
    is_test = eligible & (from_end < n)
    is_valid = eligible & (from_end >= n) & (from_end < 2 * n) & valid
    train = _mask_interactions(data, ~(is_test | is_valid))
    users = np.flatnonzero(ok)
    test = _weak_eval(data, is_test, users)
    valid_set = _weak_eval(data, is_valid, users) if valid else None
    return Split(train, valid_set, test, f"leave_last_out(n={n})", None)


def _count_users(value: int | float, n_users: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise DataError(
            "held-out users must be a count or a fraction",
            field="n_heldout_users",
            expected="int >= 1 or float in (0, 1)",
            found=value,
        )
    if isinstance(value, float | np.floating):
        frac = _check_fraction("n_heldout_users", float(value))
        return max(1, int(np.floor(frac * n_users + 0.5)))
    if value < 1:
        raise DataError(
            "held-out users must be at least 1",
            field="n_heldout_users",
            expected="int >= 1 or float in (0, 1)",
            found=value,
        )
    return int(value)


def strong_generalization(
    data: Interactions,
    n_heldout_users: int | float,
    fold_in_fraction: float = 0.8,
    seed: int | None = 0,
    *,
    valid: bool = True,
    min_interactions: int = 2,
) -> Split:
    """Hold out whole users (strong generalisation, Liang et al. 2018).

    ``n_heldout_users`` test users (and as many validation users when
    ``valid``) are drawn at random among those with at least
    ``min_interactions`` interactions; the training set is every other user's
    full history. Each held-out history is split at random into a fold-in part
    (``fold_in_fraction``, at least one item) and targets (the rest, at least
    one item). Models never see held-out users during ``fit``; they score them
    from the fold-in rows with ``recommend_history``.

    Parameters
    ----------
    n_heldout_users
        Users per held-out set: an int is a count, a float a fraction of all users.
    fold_in_fraction
        Share of a held-out history given to the model, in (0, 1).
    seed
        Seed of both random choices.
    valid
        Also build a validation set of held-out users.
    min_interactions
        Users with fewer interactions are never held out (they always train).

    Examples
    --------
    >>> x = Interactions.from_arrays(np.repeat(np.arange(6), 5), np.tile(np.arange(5), 6))
    >>> s = strong_generalization(x, 2, seed=0)
    >>> s.train.n_users, s.test.n_users, s.test.fold_in.nnz, s.test.targets.nnz
    (2, 2, 8, 2)
    """
    ff = _check_fraction("fold_in_fraction", fold_in_fraction)
    min_interactions = _check_min("min_interactions", min_interactions, 2)
    rng = _rng_seed(seed)
    n_per = _count_users(n_heldout_users, data.n_users)
    n_sets = 2 if valid else 1
    counts = np.asarray(data.user_counts, dtype=np.int64)
    candidates = np.flatnonzero(counts >= min_interactions)
    if n_per * n_sets > candidates.size or n_per * n_sets >= data.n_users:
        raise DataError(
            "too few users to hold out",
            field="n_heldout_users",
            expected=(
                f"{n_per * n_sets} users with >= {min_interactions} interactions "
                "and at least one user left for training"
            ),
            found=f"{candidates.size} eligible of {data.n_users} users",
        )
    perm = rng.permutation(candidates)
    test_users = np.sort(perm[:n_per])
    valid_users = np.sort(perm[n_per : 2 * n_per]) if valid else None
    heldout = np.zeros(data.n_users, dtype=bool)
    heldout[perm[: n_per * n_sets]] = True
    train = data.subset_users(~heldout)

    def held_set(users: np.ndarray) -> EvalSet:
        sub = data.matrix[users]
        sub = sp.csr_matrix(sub)
        c = np.diff(sub.indptr).astype(np.int64)
        n_target = np.clip(np.floor(c * (1.0 - ff) + 0.5).astype(np.int64), 1, c - 1)
        pos = _position_in_row(sub, rng.random(sub.nnz))
        is_target = pos < n_target[_row_of(sub)]
        return EvalSet(
            targets=_mask_csr(sub, is_target),
            fold_in=_mask_csr(sub, ~is_target),
            user_ids=np.array(data.user_ids[users]),
        )

    test = held_set(test_users)
    valid_set = held_set(valid_users) if valid_users is not None else None
    return Split(
        train, valid_set, test, "strong_generalization", None if seed is None else int(seed)
    )


# --------------------------------------------------------------------------- given splits
def _read_lists(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from privrec.data.loaders import read_user_item_lists

    users, items, all_users = read_user_item_lists(path)
    return np.asarray(users), np.asarray(items), np.asarray(all_users)


def _resolve(
    folder_or_paths: str | Path | Mapping[str, str | Path],
    train: str,
    valid: str | None,
    test: str,
) -> dict[str, Path]:
    if isinstance(folder_or_paths, Mapping):
        paths = {k: Path(v) for k, v in folder_or_paths.items()}
        unknown = set(paths) - {"train", "valid", "test"}
        if unknown or "train" not in paths or "test" not in paths:
            raise DataError(
                "a mapping of split files needs keys 'train' and 'test' (and optionally 'valid')",
                field="folder_or_paths",
                expected="{'train', 'test'[, 'valid']}",
                found=sorted(paths),
            )
    else:
        folder = Path(folder_or_paths)
        if not folder.is_dir():
            raise DataError("split folder not found", file=folder)
        paths = {"train": folder / train, "test": folder / test}
        if valid is not None:
            paths["valid"] = folder / valid
    for name, p in paths.items():
        if not p.is_file():
            hint = " (pass valid=None for a folder without one)" if name == "valid" else ""
            raise DataError(f"{name} file not found{hint}", file=p)
    return paths


def _warn_overlap(a: sp.csr_matrix, b: sp.csr_matrix, what: str) -> None:
    shared = int(a.multiply(b).nnz)
    if shared:
        warnings.warn(
            f"{shared} (user, item) pairs are both in {what}; the model excludes them from "
            "recommendations, so those targets can never be hit",
            DataWarning,
            stacklevel=3,
        )


def load_split(
    folder_or_paths: str | Path | Mapping[str, str | Path],
    *,
    train: str = "train.txt",
    valid: str | None = "valid.txt",
    test: str = "test.txt",
    merge_valid_into_train: bool = False,
) -> Split:
    """Read a ready-made split stored one line per user (``user item item …``).

    This is the format of the LightGCN family of benchmarks (e.g. the
    ``ml-1m-implicit-r3`` and ``gowalla-lightgcn`` folders). Users and items
    get one shared index space: the sorted union of the ids in all files, so a
    user or item that appears only in the test file still has a row/column.

    Parameters
    ----------
    folder_or_paths
        A folder holding the files, or a mapping ``{"train": path, "test":
        path[, "valid": path]}``.
    train, valid, test
        File names inside the folder (``valid=None`` when there is none).
    merge_valid_into_train
        Train on train + valid and keep only the test set. This is how the
        published reference numbers on these benchmarks are measured.

    Returns
    -------
    Split
        Weak generalisation: every user listed in the test (validation) file
        is evaluated, scored as a training row with training items excluded.
    """
    paths = _resolve(folder_or_paths, train, valid, test)
    raw = {name: _read_lists(p) for name, p in paths.items()}
    user_space = np.unique(np.concatenate([r[2] for r in raw.values()]))
    item_space = np.unique(np.concatenate([r[1] for r in raw.values()]))

    def build(name: str) -> Interactions:
        users, items, _ = raw[name]
        with warnings.catch_warnings():
            # a repeated item on one line is one implicit interaction, not two
            warnings.simplefilter("ignore", DataWarning)
            return Interactions.from_arrays(
                users,
                items,
                duplicates="last",
                user_ids=user_space,
                item_ids=item_space,
                source=str(paths[name]),
            )

    parts = {name: build(name) for name in raw}
    has_valid = "valid" in parts
    train_x = parts["train"]
    if merge_valid_into_train and has_valid:
        _warn_overlap(train_x.matrix, parts["valid"].matrix, "train and valid")
        merged = train_x.matrix + parts["valid"].matrix
        merged.data[:] = 1.0
        train_x = Interactions.from_csr(merged, user_space, item_space)
    _warn_overlap(train_x.matrix, parts["test"].matrix, "train and test")

    def given(name: str) -> EvalSet:
        users = np.searchsorted(user_space, np.unique(raw[name][2]))
        return EvalSet(
            targets=sp.csr_matrix(parts[name].matrix[users]),
            user_ids=np.array(user_space[users]),
            users=users.astype(np.int64),
        )

    valid_set = given("valid") if has_valid and not merge_valid_into_train else None
    protocol = "given split: train+valid -> test" if merge_valid_into_train else "given split"
    return Split(train_x, valid_set, given("test"), protocol, None)


def _union_ids(*arrays: np.ndarray) -> np.ndarray:
    """Ids of all arrays, first occurrence order (the first array keeps its indices)."""
    return np.asarray(pd.unique(pd.Series(np.concatenate([np.asarray(a) for a in arrays]))))


def _reindex(x: Interactions, user_space: np.ndarray, item_space: np.ndarray) -> Interactions:
    coo = x.matrix.tocoo()
    return Interactions.from_arrays(
        x.user_ids[coo.row],
        x.item_ids[coo.col],
        coo.data,
        x.timestamps,
        user_ids=user_space,
        item_ids=item_space,
    )


def split_from_interactions(
    train: Interactions, test: Interactions, valid: Interactions | None = None
) -> Split:
    """Wrap a split the caller made: separate train / test (/ valid) interactions.

    The three may use different id spaces; they are mapped onto one union
    space (``train``'s ids first, in its order, so its row and column indices
    are unchanged, then new ids in order of appearance). Every user present in
    ``test``'s id map is evaluated as a row of the returned ``train``.
    """
    extra = [test] + ([valid] if valid is not None else [])
    user_space = _union_ids(train.user_ids, *(x.user_ids for x in extra))
    item_space = _union_ids(train.item_ids, *(x.item_ids for x in extra))
    train_r = _reindex(train, user_space, item_space)

    def given(x: Interactions) -> EvalSet:
        xr = _reindex(x, user_space, item_space)
        users = pd.Index(user_space).get_indexer(pd.Index(x.user_ids)).astype(np.int64)
        return EvalSet(
            targets=sp.csr_matrix(xr.matrix[users]),
            user_ids=np.array(user_space[users]),
            users=users,
        )

    _warn_overlap(train_r.matrix, _reindex(test, user_space, item_space).matrix, "train and test")
    return Split(train_r, None if valid is None else given(valid), given(test), "given split", None)


def split_from_frames(
    train: pd.DataFrame,
    test: pd.DataFrame,
    valid: pd.DataFrame | None = None,
    *,
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = None,
    timestamp_col: str | None = None,
) -> Split:
    """:func:`split_from_interactions` for pandas DataFrames with named columns."""

    def conv(df: pd.DataFrame, name: str) -> Interactions:
        return Interactions.from_dataframe(
            df, user_col, item_col, value_col, timestamp_col, source=name
        )

    return split_from_interactions(
        conv(train, "train"), conv(test, "test"), None if valid is None else conv(valid, "valid")
    )
