"""The users × items interaction matrix every privrec component consumes."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from privrec.data.columns import Where, id_column, number_column, time_column
from privrec.data.textspec import FLOAT32_MAX, Field
from privrec.errors import (
    ConfigError,
    DataError,
    DataWarning,
    DuplicateInteractionError,
    UnknownItemError,
    UnknownUserError,
)

__all__ = ["DuplicatePolicy", "Interactions"]

DuplicatePolicy = Literal["sum", "last", "error"]
_POLICIES = ("sum", "last", "error")


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False, repr=False)
class Interactions:
    """An immutable users × items matrix with its id maps.

    Row ``u`` of ``matrix`` is the history of the user whose external id is
    ``user_ids[u]``; column ``i`` is the item ``item_ids[i]``. Values are
    float32 weights (1.0 for implicit feedback, a rating or a play count
    otherwise). ``timestamps``, when present, is aligned with ``matrix.data``
    (CSR order: by user, then by item index).

    Build one with :meth:`from_arrays`, :meth:`from_dataframe` or a loader in
    :mod:`privrec.data`; every transformation returns a new object, so an
    ``Interactions`` can be shared between a split, a model and a report without
    anyone changing it behind the others' backs.

    Examples
    --------
    >>> x = Interactions.from_arrays(["ann", "ann", "bob"], ["a", "b", "b"])
    >>> x.n_users, x.n_items, x.nnz
    (2, 2, 3)
    >>> x.user_index(["bob"]).tolist()
    [1]
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        m = self.matrix
        if not sp.isspmatrix_csr(m):
            raise DataError("matrix must be a scipy.sparse.csr_matrix", found=type(m).__name__)
        if m.dtype != np.float32:
            raise DataError("matrix values must be float32", expected="float32", found=str(m.dtype))
        for name in ("user_ids", "item_ids", "timestamps"):
            value = getattr(self, name)
            if not (isinstance(value, np.ndarray) or (value is None and name == "timestamps")):
                raise DataError(
                    f"{name} must be a numpy array (Interactions.from_arrays builds one from "
                    "lists)",
                    field=name,
                    found=type(value).__name__,
                )
        if m.shape != (len(self.user_ids), len(self.item_ids)):
            raise DataError(
                "matrix shape does not match the id maps",
                expected=f"{(len(self.user_ids), len(self.item_ids))}",
                found=m.shape,
            )
        if self.timestamps is not None and len(self.timestamps) != m.nnz:
            raise DataError(
                "timestamps must align with the stored interactions",
                expected=f"{m.nnz} timestamps",
                found=len(self.timestamps),
            )
        if self.timestamps is not None:
            # as the builders refuse them: a NaN compares false with every retention cutoff,
            # so it would be kept for ever (and make the oldest kept interaction NaN)
            try:
                finite = np.isfinite(np.asarray(self.timestamps, dtype=np.float64))
            except (TypeError, ValueError):
                raise DataError(
                    "timestamps are not numeric", field="timestamp", expected="numbers"
                ) from None
            if not finite.all():
                raise DataError(
                    "timestamp is not finite",
                    field="timestamp",
                    expected="a finite number",
                    found=f"{int((~finite).sum())} non-finite",
                )
        # One person = one row, one item = one column, one (user, item) pair = one stored entry:
        # every sensitivity downstream counts a user's row entries, so a repeated id or a
        # stored duplicate would let one person contribute several times what is stated.
        for ids, kind in ((self.user_ids, "user"), (self.item_ids, "item")):
            index = pd.Index(ids)
            if index.is_unique and ids.dtype == object:
                # 1 and "1" differ here but are one person to the ledger (ids hash by text)
                index = pd.Index(np.asarray(ids).astype(str))
            if not index.is_unique:
                raise DataError(
                    f"the {kind} ids repeat an id (one {kind} would span several "
                    f"{'rows' if kind == 'user' else 'columns'})",
                    field=f"{kind}_ids",
                    expected="each id once",
                    found=f"{len(index) - index.nunique(dropna=False)} repeated",
                )
        if not m.has_canonical_format and _has_duplicates(m):
            raise DataError(
                "the matrix stores a (user, item) pair more than once",
                expected="one stored entry per pair (Interactions.from_csr sums duplicates)",
                found="duplicate entries",
            )
        for a in (m.data, m.indices, m.indptr, self.user_ids, self.item_ids):
            _readonly(a)
        if self.timestamps is not None:
            _readonly(self.timestamps)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_arrays(
        cls,
        users: Sequence[Any] | np.ndarray,
        items: Sequence[Any] | np.ndarray,
        values: Sequence[float] | np.ndarray | None = None,
        timestamps: Sequence[float] | np.ndarray | None = None,
        *,
        duplicates: DuplicatePolicy = "sum",
        allow_negative: bool = False,
        user_ids: Sequence[Any] | np.ndarray | None = None,
        item_ids: Sequence[Any] | np.ndarray | None = None,
        source: str | None = None,
    ) -> Interactions:
        """Build from parallel arrays of external user ids, item ids and values.

        Parameters
        ----------
        users, items
            External ids, one entry per interaction.
        values
            Weights; 1.0 for every interaction when omitted. Must be finite and,
            unless ``allow_negative``, non-negative.
        timestamps
            Optional event times (any numeric unit).
        duplicates
            What to do with repeated (user, item) pairs: ``"sum"`` adds their
            values (keeping the latest timestamp), ``"last"`` keeps the last one
            in input order, ``"error"`` raises :class:`DuplicateInteractionError`.
            Merged pairs are counted in a :class:`DataWarning`, never dropped
            silently.
        user_ids, item_ids
            Fix the index space (e.g. to keep users with no interactions, or the
            catalogue of another split). Ids outside it raise :class:`DataError`.
            By default the sorted distinct ids seen are used.
        source
            Name used in error messages (usually the file).
        """
        if duplicates not in _POLICIES:
            raise DataError(
                "unknown duplicate policy",
                field="duplicates",
                expected=" | ".join(_POLICIES),
                found=duplicates,
            )
        u_arr = _id_array(users, "user", source)
        i_arr = _id_array(items, "item", source)
        n = len(u_arr)
        if len(i_arr) != n:
            raise DataError(
                "users and items differ in length", file=source, expected=str(n), found=len(i_arr)
            )
        if values is None:
            v = np.ones(n, dtype=np.float64)
        else:
            try:
                v = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    "values are not numeric", file=source, field="value", found=str(exc)
                ) from None
            if v.ndim != 1 or len(v) != n:
                raise DataError(
                    "values differ in length from users",
                    file=source,
                    expected=str(n),
                    found=v.shape,
                )
        bad = ~np.isfinite(v)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise DataError(
                "value is not finite",
                file=source,
                line=None,
                field="value",
                expected="a finite number",
                found=f"{v[j]} at row {j}",
            )
        if not allow_negative and (v < 0).any():
            j = int(np.flatnonzero(v < 0)[0])
            raise DataError(
                "negative weight",
                file=source,
                field="value",
                expected=">= 0",
                found=f"{v[j]} at row {j}",
            )
        _check_float32(v, source, "value")
        ts: np.ndarray | None = None
        if timestamps is not None:
            try:
                ts = np.asarray(timestamps, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    "timestamps are not numeric", file=source, field="timestamp", found=str(exc)
                ) from None
            if ts.ndim != 1 or len(ts) != n:
                raise DataError(
                    "timestamps differ in length", file=source, expected=str(n), found=len(ts)
                )
            if not np.isfinite(ts).all():
                j = int(np.flatnonzero(~np.isfinite(ts))[0])
                raise DataError(
                    "timestamp is not finite",
                    file=source,
                    field="timestamp",
                    expected="a finite number",
                    found=f"{ts[j]} at row {j}",
                )

        u_idx, u_ids = _index(u_arr, user_ids, "user", source)
        i_idx, i_ids = _index(i_arr, item_ids, "item", source)
        n_users, n_items = len(u_ids), len(i_ids)

        key = u_idx.astype(np.int64) * max(n_items, 1) + i_idx
        order = np.argsort(key, kind="stable")
        key_s = key[order]
        first = np.ones(n, dtype=bool)
        first[1:] = key_s[1:] != key_s[:-1]
        n_dup = int(n - first.sum())
        if n_dup:
            if duplicates == "error":
                j = int(np.flatnonzero(~first)[0])
                row = int(order[j])
                pair = (u_arr[row : row + 1].tolist()[0], i_arr[row : row + 1].tolist()[0])
                raise DuplicateInteractionError(
                    "duplicate (user, item) pair",
                    file=source,
                    field="user,item",
                    expected="each pair at most once",
                    found=f"{pair!r} again at row {row}",
                )
            starts = np.flatnonzero(first)
            if duplicates == "sum":
                vals = np.add.reduceat(v[order], starts)
                tsv = None if ts is None else np.maximum.reduceat(ts[order], starts)
            else:  # last: the stable sort keeps input order inside a group
                ends = np.append(starts[1:], n) - 1
                vals = v[order][ends]
                tsv = None if ts is None else ts[order][ends]
            _check_float32(vals, source, "value (sum of duplicates)")
            warnings.warn(
                f"{n_dup} duplicate (user, item) interactions"
                f"{f' in {source}' if source else ''} merged with policy {duplicates!r}",
                DataWarning,
                stacklevel=2,
            )
            ukeys = key_s[first]
        else:
            vals = v[order]
            tsv = None if ts is None else ts[order]
            ukeys = key_s
        rows = ukeys // max(n_items, 1)
        cols = (ukeys % max(n_items, 1)).astype(np.int32)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
        matrix = sp.csr_matrix((vals.astype(np.float32), cols, indptr), shape=(n_users, n_items))
        return cls(matrix, u_ids, i_ids, tsv)

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        user_col: str = "user",
        item_col: str = "item",
        value_col: str | None = None,
        timestamp_col: str | None = None,
        *,
        duplicates: DuplicatePolicy = "sum",
        allow_negative: bool = False,
        source: str | None = None,
    ) -> Interactions:
        """Build from a pandas DataFrame with named columns.

        The columns are checked like a Parquet file's (see
        :mod:`privrec.data.columns`): ids are integers, floats or non-empty
        strings, one kind per column (a list, a dict or a mix of numbers and
        text is refused); values and timestamps are numbers (timestamps may
        also be datetimes). A :class:`DataError` names the column and the first
        bad row (as ``line``, 1-based data row).
        """
        needed = [c for c in (user_col, item_col, value_col, timestamp_col) if c is not None]
        cols = list(df.columns)
        for c in needed:
            hits = sum(1 for name in cols if name == c)
            if hits != 1:
                raise DataError(
                    "missing column" if hits == 0 else "column name appears more than once",
                    file=source,
                    field=str(c),
                    expected=f"columns {needed}",
                    found=list(map(str, cols)),
                )
        where = Where(source, lambda j: j + 1)
        users = id_column(df[user_col], user_col, where, text=False)
        items = id_column(df[item_col], item_col, where, text=False)
        values = None
        if value_col is not None:
            f = Field(value_col, "float", None if allow_negative else 0.0)
            values = number_column(df[value_col], f, where, text=False)
        times = None
        if timestamp_col is not None:
            times = time_column(df[timestamp_col], timestamp_col, where, text=False)
        return cls.from_arrays(
            users,
            items,
            values,
            times,
            duplicates=duplicates,
            allow_negative=allow_negative,
            source=source,
        )

    @classmethod
    def from_csr(
        cls,
        matrix: sp.spmatrix | sp.sparray,
        user_ids: Sequence[Any] | np.ndarray | None = None,
        item_ids: Sequence[Any] | np.ndarray | None = None,
    ) -> Interactions:
        """Wrap an existing sparse matrix; ids default to ``0..n-1``."""
        m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)  # type: ignore[call-overload]
        m.sum_duplicates()
        m.sort_indices()
        if m.data.size and not np.isfinite(m.data).all():
            raise DataError(
                "matrix holds non-finite values", field="value", expected="finite numbers"
            )
        uids = np.arange(m.shape[0]) if user_ids is None else np.asarray(user_ids)
        iids = np.arange(m.shape[1]) if item_ids is None else np.asarray(item_ids)
        return cls(m, uids.copy(), iids.copy(), None)

    # -------------------------------------------------------------- properties
    @property
    def n_users(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @property
    def density(self) -> float:
        cells = self.n_users * self.n_items
        return self.nnz / cells if cells else 0.0

    @property
    def user_counts(self) -> np.ndarray:
        """Number of interactions of each user (row lengths)."""
        return np.diff(self.matrix.indptr)

    @property
    def item_counts(self) -> np.ndarray:
        """Number of users who interacted with each item."""
        return np.bincount(self.matrix.indices, minlength=self.n_items)

    def __len__(self) -> int:
        return self.nnz

    def __repr__(self) -> str:
        ts = ", timestamps" if self.timestamps is not None else ""
        return (
            f"Interactions(n_users={self.n_users}, n_items={self.n_items}, nnz={self.nnz}, "
            f"density={self.density:.4g}{ts})"
        )

    # ---------------------------------------------------------------- lookups
    def user_index(self, ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Row indices of external user ids; :class:`UnknownUserError` for unseen ones."""
        return _lookup(self.user_ids, ids, UnknownUserError, "user")

    def item_index(self, ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Column indices of external item ids; :class:`UnknownItemError` for unseen ones."""
        return _lookup(self.item_ids, ids, UnknownItemError, "item")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per interaction: ``user``, ``item``, ``value`` (and ``timestamp``)."""
        coo = self.matrix.tocoo()
        out = {
            "user": self.user_ids[coo.row],
            "item": self.item_ids[coo.col],
            "value": coo.data.astype(np.float32),
        }
        if self.timestamps is not None:
            out["timestamp"] = np.asarray(self.timestamps)
        return pd.DataFrame(out)

    # ---------------------------------------------------------- transformations
    def _with(
        self, matrix: sp.csr_matrix, keep: np.ndarray | None = None, **ids: np.ndarray
    ) -> Interactions:
        ts = None
        if self.timestamps is not None:
            ts = np.array(self.timestamps if keep is None else self.timestamps[keep])
        return Interactions(
            matrix,
            np.array(ids.get("user_ids", self.user_ids)),
            np.array(ids.get("item_ids", self.item_ids)),
            ts,
        )

    def _masked(self, keep: np.ndarray, values: np.ndarray | None = None) -> Interactions:
        """Keep the stored entries where ``keep`` is true (CSR order preserved)."""
        m = self.matrix
        rows = np.repeat(np.arange(self.n_users), np.diff(m.indptr))[keep]
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=self.n_users), out=indptr[1:])
        data = (m.data if values is None else values)[keep].astype(np.float32)
        new = sp.csr_matrix((data, np.array(m.indices[keep]), indptr), shape=m.shape)
        return self._with(new, keep)

    def binarize(self, threshold: float = 0.0) -> Interactions:
        """Implicit feedback: entries with value >= ``threshold`` become 1, the rest are removed.

        >>> x = Interactions.from_arrays([1, 1, 2], [1, 2, 2], [5.0, 2.0, 3.0])
        >>> x.binarize(3).matrix.toarray().tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        """
        if not isinstance(threshold, int | float | np.number) or not np.isfinite(threshold):
            raise ConfigError(
                f"binarize threshold must be a finite number, not {threshold!r} "
                "(a NaN threshold would silently keep no interaction)"
            )
        keep = np.asarray(self.matrix.data >= threshold)
        return self._masked(keep, np.ones(self.nnz, dtype=np.float32))

    def filter(
        self, min_user_interactions: int = 1, min_item_interactions: int = 1
    ) -> Interactions:
        """Drop users and items with too few interactions, repeated until nothing changes.

        Removing a light item can push a user under the threshold and vice versa,
        so a single pass is not enough; the loop runs until a fixed point (at most
        as many passes as there are rows and columns, usually a handful).
        Dropped users and items leave the id maps.
        """
        if min_user_interactions < 0 or min_item_interactions < 0:
            raise DataError(
                "thresholds must be >= 0", found=(min_user_interactions, min_item_interactions)
            )
        m = self.matrix
        users = np.arange(self.n_users)
        items = np.arange(self.n_items)
        keep_entry = np.ones(self.nnz, dtype=bool)
        row_of = np.repeat(np.arange(self.n_users), np.diff(m.indptr))
        user_ok = np.ones(self.n_users, dtype=bool)
        item_ok = np.ones(self.n_items, dtype=bool)
        while True:
            keep_entry = user_ok[row_of] & item_ok[m.indices]
            ucnt = np.bincount(row_of[keep_entry], minlength=self.n_users)
            icnt = np.bincount(m.indices[keep_entry], minlength=self.n_items)
            new_u = user_ok & (ucnt >= min_user_interactions)
            new_i = item_ok & (icnt >= min_item_interactions)
            if (new_u == user_ok).all() and (new_i == item_ok).all():
                break
            user_ok, item_ok = new_u, new_i
        keep_entry = user_ok[row_of] & item_ok[m.indices]
        u_keep = users[user_ok]
        i_keep = items[item_ok]
        i_new = np.full(self.n_items, -1, dtype=np.int64)
        i_new[i_keep] = np.arange(len(i_keep))
        u_new = np.full(self.n_users, -1, dtype=np.int64)
        u_new[u_keep] = np.arange(len(u_keep))
        rows = u_new[row_of[keep_entry]]
        indptr = np.zeros(len(u_keep) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(u_keep)), out=indptr[1:])
        new = sp.csr_matrix(
            (
                m.data[keep_entry].astype(np.float32),
                i_new[m.indices[keep_entry]].astype(np.int32),
                indptr,
            ),
            shape=(len(u_keep), len(i_keep)),
        )
        new.sort_indices()  # order is preserved by the monotone re-index, but be explicit
        return self._with(
            new, keep_entry, user_ids=self.user_ids[u_keep], item_ids=self.item_ids[i_keep]
        )

    def subset_users(self, users: npt.ArrayLike) -> Interactions:
        """Rows for the given user indices (or a boolean mask), keeping the whole item space."""
        idx = np.asarray(users)
        if idx.dtype == bool:
            if idx.shape != (self.n_users,):
                raise DataError(
                    "mask length differs from n_users", expected=str(self.n_users), found=idx.shape
                )
            idx = np.flatnonzero(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise DataError(
                "user indices must be integers (or a boolean mask)", found=str(idx.dtype)
            )
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -self.n_users or idx.max() >= self.n_users):
            raise IndexError(f"user index out of range for {self.n_users} users")
        idx = np.where(idx < 0, idx + self.n_users, idx)
        if np.unique(idx).size != idx.size:
            raise DataError(
                "a user index repeats: one person would become several users",
                expected="each user index once",
                found=f"{idx.size - np.unique(idx).size} repeated",
            )
        m = self.matrix
        new = m[idx]
        new = sp.csr_matrix(
            (
                new.data.astype(np.float32),
                new.indices.astype(np.int32),
                new.indptr.astype(np.int64),
            ),
            shape=new.shape,
        )
        ts = None
        if self.timestamps is not None:
            pos = _row_positions(m.indptr, idx)
            ts = np.array(self.timestamps[pos])
        return Interactions(new, np.array(self.user_ids[idx]), np.array(self.item_ids), ts)

    def with_matrix(self, matrix: sp.spmatrix | sp.sparray) -> Interactions:
        """Same id maps, new values (timestamps are dropped unless the pattern is unchanged)."""
        m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)  # type: ignore[call-overload]
        m.sum_duplicates()
        m.sort_indices()
        if m.shape != self.matrix.shape:
            raise DataError(
                "the new matrix has another shape", expected=str(self.matrix.shape), found=m.shape
            )
        if m.nnz and (not np.isfinite(m.data).all() or (m.data < 0).any()):
            raise DataError(
                "values must be finite and non-negative (as the loaders require)",
                found="a NaN, infinite, too large or negative value",
            )
        same = (
            self.timestamps is not None
            and m.nnz == self.nnz
            and np.array_equal(m.indptr, self.matrix.indptr)
            and np.array_equal(m.indices, self.matrix.indices)
        )
        return Interactions(
            sp.csr_matrix(
                (m.data, m.indices.astype(np.int32), m.indptr.astype(np.int64)),
                shape=self.matrix.shape,
            ),
            np.array(self.user_ids),
            np.array(self.item_ids),
            np.array(self.timestamps) if same and self.timestamps is not None else None,
        )


def _row_positions(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions in ``data`` of the entries of ``rows``, concatenated in that order."""
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
    return offs + np.arange(total)


def _check_float32(v: np.ndarray, source: str | None, field: str) -> None:
    """Weights are stored as float32: a bigger magnitude would silently become infinity."""
    big = np.abs(v) > FLOAT32_MAX
    if big.any():
        j = int(np.flatnonzero(big)[0])
        raise DataError(
            "value too large to store as float32",
            file=source,
            field=field,
            expected=f"a magnitude of at most {FLOAT32_MAX:.4g}",
            found=f"{v[j]} at row {j}",
        )


_ID_KINDS = ("string", "integer", "floating", "mixed-integer-float", "empty")


def _has_duplicates(m: sp.csr_matrix) -> bool:
    """Whether a CSR matrix stores some (row, column) more than once (unsorted rows allowed)."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    keys = rows * max(int(m.shape[1]), 1) + m.indices.astype(np.int64)
    return bool(np.unique(keys).size != keys.size)


def _id_array(ids: Sequence[Any] | np.ndarray, kind: str, source: str | None) -> np.ndarray:
    """A 1-D array of scalar ids; lists, dicts or numbers mixed with text are refused by row."""
    if not isinstance(ids, (np.ndarray, pd.Series)):
        # np.asarray would turn [1, "2"] into the text ids "1", "2" (and 1.0 into "1.0", a second
        # person): look at the Python objects first
        objs = np.empty(len(ids), dtype=object)
        try:
            objs[:] = list(ids)
        except ValueError:  # a nest of equal-length lists
            for i, x in enumerate(ids):
                objs[i] = x
        if pd.api.types.infer_dtype(objs, skipna=True) not in _ID_KINDS:
            id_column(pd.Series(objs), kind, Where(source, lambda j: j + 1), text=False)
    try:
        arr = np.asarray(ids) if not isinstance(ids, pd.Series) else ids.to_numpy()
    except ValueError:  # a ragged nest of lists
        arr = np.empty(len(ids), dtype=object)
        arr[:] = list(ids)
    if arr.ndim != 1:
        raise DataError(
            f"{kind} ids must be one-dimensional", file=source, field=kind, found=arr.shape
        )
    odd = arr.dtype.kind in "OUS" and pd.api.types.infer_dtype(arr, skipna=True) not in _ID_KINDS
    if odd or arr.dtype.kind in "bcmMV":  # lists, mixes; booleans, complex, dates, bytes
        id_column(pd.Series(arr), kind, Where(source, lambda j: j + 1), text=False)
    return arr


def _index(
    values: np.ndarray, fixed: Sequence[Any] | np.ndarray | None, kind: str, source: str | None
) -> tuple[np.ndarray, np.ndarray]:
    if fixed is None:
        codes, uniques = pd.factorize(pd.Series(values, copy=False), sort=True)
        if (codes < 0).any():
            j = int(np.flatnonzero(codes < 0)[0])
            raise DataError(
                f"missing {kind} id",
                file=source,
                field=kind,
                expected="an id",
                found=f"empty at row {j}",
            )
        return codes.astype(np.int64), np.asarray(uniques)
    ids = np.asarray(fixed)
    if not pd.Index(ids).is_unique:
        raise DataError(
            f"the given {kind} ids repeat an id",
            file=source,
            field=f"{kind}_ids",
            expected="each id once",
            found=f"{len(ids) - pd.Index(ids).nunique(dropna=False)} repeated",
        )
    idx = pd.Index(ids).get_indexer(pd.Index(values))
    if (idx < 0).any():
        j = int(np.flatnonzero(idx < 0)[0])
        raise DataError(
            f"{kind} id outside the given index space",
            file=source,
            field=kind,
            expected=f"one of the {len(ids)} known {kind} ids",
            found=values[j],
        )
    return idx.astype(np.int64), ids


def _lookup(
    known: np.ndarray, ids: Sequence[Any] | np.ndarray, err: type[KeyError], kind: str
) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(ids))
    idx = pd.Index(known).get_indexer(pd.Index(arr))
    if (idx < 0).any():
        missing = arr[idx < 0]
        raise err(
            f"unknown {kind} id {missing.tolist()[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; the data has {len(known)} {kind}s"
        )
    return np.asarray(idx, dtype=np.int64)
