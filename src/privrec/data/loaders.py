"""Readers for the interaction files recommender research actually uses.

Every loader returns an :class:`~privrec.data.interactions.Interactions` and
reports bad input as a :class:`~privrec.errors.DataError` that names the file,
the 1-based line (as an editor shows it, header included), the field, what was
expected and what was found.

Why two passes: a file is first parsed with pandas' C reader (fast, about a
second for ten million lines) and checked with vectorised tests. Only when that
check fails is the file scanned again line by line, with the same rules, to
locate the first offending line. Good files never pay for the exact scan; bad
files get a precise message.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from privrec.data.interactions import DuplicatePolicy, Interactions
from privrec.errors import DataError

__all__ = [
    "FORMATS",
    "from_dataframe",
    "load",
    "load_csv",
    "load_lastfm",
    "load_ml100k",
    "load_movielens_csv",
    "load_movielens_dat",
    "load_movietweetings",
    "load_parquet",
    "load_tsv",
    "load_user_item_lists",
    "read_user_item_lists",
]

PathLike = str | Path

#: Build from an in-memory DataFrame (re-exported so every entry point lives here).
from_dataframe = Interactions.from_dataframe

_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT_RE = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_SPECIAL_RE = re.compile(r"^\s*[+-]?(nan|inf|infinity)\s*$", re.IGNORECASE)

Kind = Literal["int", "float", "id"]


@dataclass(frozen=True)
class _Field:
    """One column of a fixed-layout file and the rule its text must follow."""

    name: str
    kind: Kind
    low: float | None = None  # inclusive bounds for numeric fields
    high: float | None = None

    def expected(self) -> str:
        if self.kind == "int":
            return "an integer"
        if self.kind == "id":
            return "a non-empty id"
        if self.low is not None and self.high is not None:
            return f"a number in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"a number >= {self.low:g}"
        return "a finite number"


# ---------------------------------------------------------------- helpers
def _check_path(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", file=p, expected="an existing file", found="no such file")
    if p.is_dir():
        raise DataError("path is a folder, not a file", file=p, expected="a file", found="folder")
    return p


def _field_problem(text: str, f: _Field) -> tuple[str, str] | None:
    """``(message, found)`` if ``text`` breaks the rule of ``f``, else ``None``.

    The single source of truth for the slow scan; it mirrors the vectorised
    checks of the fast path so both agree on what a bad value is.
    """
    if f.kind == "id":
        return None if text.strip() else ("missing id", "empty")
    if f.kind == "int":
        return None if _INT_RE.match(text) else ("not an integer id", text)
    if _SPECIAL_RE.match(text):
        return ("value is not finite", text)
    if not _FLOAT_RE.match(text):
        return ("value is not a number", text)
    x = float(text)
    if f.low is not None and x < f.low:
        what = "negative value" if f.low == 0 else "value below the allowed range"
        return (what, text)
    if f.high is not None and x > f.high:
        return ("value above the allowed range", text)
    return None


def _scan_rows(
    path: Path,
    rows: Iterator[tuple[int, list[str]]],
    fields: Sequence[_Field],
    positions: Sequence[int],
    n_cols: int,
    sep_name: str,
) -> None:
    """Raise :class:`DataError` at the first row that breaks a rule.

    ``rows`` yields ``(line_number, fields)``; ``positions[k]`` is the column
    of ``fields[k]``. Returns normally if nothing is wrong.
    """
    for lineno, parts in rows:
        if len(parts) < n_cols:
            k = len(parts)
            missing = next(
                (f.name for f, pos in zip(fields, positions, strict=True) if pos >= k),
                f"column {k + 1}",
            )
            raise DataError(
                "missing field",
                file=path,
                line=lineno,
                field=missing,
                expected=f"{n_cols} fields separated by {sep_name}",
                found=f"{len(parts)} fields",
            )
        if len(parts) > n_cols:
            raise DataError(
                "too many fields",
                file=path,
                line=lineno,
                field=f"column {n_cols + 1}",
                expected=f"{n_cols} fields separated by {sep_name}",
                found=f"{len(parts)} fields",
            )
        for f, pos in zip(fields, positions, strict=True):
            problem = _field_problem(parts[pos], f)
            if problem is not None:
                raise DataError(
                    problem[0],
                    file=path,
                    line=lineno,
                    field=f.name,
                    expected=f.expected(),
                    found=problem[1],
                )


def _split_lines(path: Path, sep: str, skip: int) -> Iterator[tuple[int, list[str]]]:
    """Plain split of each line (no quoting); empty lines are skipped like pandas does."""
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno <= skip:
                continue
            line = raw.rstrip("\r\n")
            if line == "":
                continue
            yield lineno, line.split(sep)


def _csv_lines(path: Path, sep: str, skip: int) -> Iterator[tuple[int, list[str]]]:
    """Quoted CSV rows with the line on which each row starts."""
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        start = 1
        for row in reader:
            lineno, start = start, reader.line_num + 1
            if lineno <= skip or not row:
                continue
            yield lineno, row


def _numeric_ok(col: pd.Series, f: _Field) -> bool:
    """Vectorised version of :func:`_field_problem` over a parsed column."""
    kind = col.dtype.kind
    if f.kind == "int":
        return kind in "iu"
    if f.kind == "id":
        return not bool(col.isna().any())
    if kind not in "iuf":
        return False
    v = col.to_numpy(dtype=np.float64)
    if not np.isfinite(v).all():
        return False
    if f.low is not None and (v < f.low).any():
        return False
    return not (f.high is not None and (v > f.high).any())


def _no_rows(path: Path, skip: int) -> DataError:
    return DataError(
        "no data rows",
        file=path,
        line=skip + 1,
        field="rows",
        expected="at least one interaction",
        found="empty file" if skip == 0 else "only a header",
    )


def _read_fixed(
    path: Path,
    fields: Sequence[_Field],
    *,
    sep: str,
    skip: int = 0,
) -> dict[str, np.ndarray]:
    """Fast read of a headerless (after ``skip`` lines) fixed-layout file.

    ``sep`` may be ``"::"``: it is then read with ``":"`` and every other
    column is taken, the empty in-between columns being checked to be empty.
    """
    double = sep == "::"
    n_cols = len(fields)
    names = [f"c{k}" for k in range(2 * n_cols - 1 if double else n_cols)]
    sep_name = repr(sep)
    try:
        df = pd.read_csv(
            path,
            sep=sep[0],
            header=None,
            names=names,
            skiprows=skip,
            engine="c",
            quoting=csv.QUOTE_NONE,
            index_col=False,
            low_memory=False,
            encoding="utf-8",
            encoding_errors="replace",
        )
    except pd.errors.EmptyDataError:
        raise _no_rows(path, skip) from None
    except (pd.errors.ParserError, ValueError, OverflowError) as exc:
        _scan_rows(path, _split_lines(path, sep, skip), fields, range(n_cols), n_cols, sep_name)
        raise DataError("could not parse file", file=path, found=str(exc)) from None
    if len(df) == 0:
        raise _no_rows(path, skip)
    cols = [df[f"c{2 * k}"] for k in range(n_cols)] if double else [df[c] for c in names]
    ok = all(_numeric_ok(c, f) for c, f in zip(cols, fields, strict=True))
    if ok and double:
        ok = all(bool(df[f"c{2 * k + 1}"].isna().all()) for k in range(n_cols - 1))
    if not ok:
        _scan_rows(path, _split_lines(path, sep, skip), fields, range(n_cols), n_cols, sep_name)
        raise DataError("could not parse file", file=path, expected=f"{n_cols} fields per line")
    return {f.name: c.to_numpy() for c, f in zip(cols, fields, strict=True)}


def _check_header(path: Path, sep: str, n_cols: int) -> None:
    """The first line must look like a header, not like data (else a row would be lost)."""
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        first = fh.readline().rstrip("\r\n")
    if first == "":
        raise _no_rows(path, 0)
    head = first.split(sep)[0]
    if _INT_RE.match(head):
        raise DataError(
            "first line looks like data, not a header",
            file=path,
            line=1,
            field="header",
            expected=f"a header line with {n_cols} column names",
            found=first[:80],
        )


def _finish(
    data: dict[str, np.ndarray],
    value: str | None,
    *,
    path: Path,
    duplicates: DuplicatePolicy,
    binarize: float | None,
    allow_negative: bool = False,
    timestamp: str | None = "timestamp",
) -> Interactions:
    x = Interactions.from_arrays(
        data["user"],
        data["item"],
        None if value is None else data[value],
        None if timestamp is None else data[timestamp],
        duplicates=duplicates,
        allow_negative=allow_negative,
        source=str(path),
    )
    return x if binarize is None else x.binarize(binarize)


_RATING_ML = _Field("rating", "float", 0.0, 5.0)
_RATING_MT = _Field("rating", "float", 0.0, 10.0)
_USER = _Field("user", "int")
_ITEM = _Field("item", "int")
_TS = _Field("timestamp", "int")


# ---------------------------------------------------------------- fixed formats
def load_ml100k(
    path: PathLike, *, duplicates: DuplicatePolicy = "sum", binarize: float | None = None
) -> Interactions:
    """Load MovieLens 100K ``u.data`` (or any of its ``u1.base``-style splits).

    Format: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header, integer ids,
    ratings 1–5, Unix-second timestamps.

    Parameters
    ----------
    path
        The ``u.data`` file.
    duplicates
        Policy for repeated (user, item) pairs (the original file has none):
        ``"sum"``, ``"last"`` or ``"error"``; merged pairs are counted in a
        :class:`~privrec.errors.DataWarning`.
    binarize
        If given, keep only ratings ``>= binarize`` as implicit 1.0 entries.
        The id space still holds every user and item of the file, so a user
        whose ratings all fall below stays as an empty row (filter it with
        :meth:`Interactions.filter` if unwanted).

    Returns
    -------
    Interactions
        Ratings as values, timestamps kept; ids are the file's integers.
    """
    p = _check_path(path)
    fields = [_USER, _ITEM, _RATING_ML, _TS]
    data = _read_fixed(p, fields, sep="\t")
    return _finish(data, "rating", path=p, duplicates=duplicates, binarize=binarize)


def load_movielens_dat(
    path: PathLike, *, duplicates: DuplicatePolicy = "sum", binarize: float | None = None
) -> Interactions:
    """Load MovieLens 1M / 10M ``ratings.dat``.

    Format: ``user::item::rating::timestamp``, no header, integer ids,
    ratings in [0, 5] (1M uses whole stars, 10M half stars). The double-colon
    separator is read with pandas' C reader by splitting on ``":"`` and
    checking that every other column is empty, which keeps a 10M-line file
    loading in seconds.

    Parameters
    ----------
    path
        The ``ratings.dat`` file.
    duplicates, binarize
        As in :func:`load_ml100k`.

    Returns
    -------
    Interactions
        Ratings as values, timestamps kept.
    """
    p = _check_path(path)
    data = _read_fixed(p, [_USER, _ITEM, _RATING_ML, _TS], sep="::")
    return _finish(data, "rating", path=p, duplicates=duplicates, binarize=binarize)


def load_movietweetings(
    path: PathLike, *, duplicates: DuplicatePolicy = "sum", binarize: float | None = None
) -> Interactions:
    """Load MovieTweetings ``ratings.dat``.

    Format: ``user::imdb_id::rating::timestamp`` with ratings 0–10. IMDb ids
    are zero-padded seven-digit numbers (``0104257``); they are kept as the
    integer (``104257``), which is one-to-one for that fixed width.

    Parameters
    ----------
    path
        The ``ratings.dat`` file.
    duplicates, binarize
        As in :func:`load_ml100k` (e.g. ``binarize=7`` for "liked").

    Returns
    -------
    Interactions
        Ratings as values, timestamps kept.
    """
    p = _check_path(path)
    data = _read_fixed(p, [_USER, _ITEM, _RATING_MT, _TS], sep="::")
    return _finish(data, "rating", path=p, duplicates=duplicates, binarize=binarize)


def load_movielens_csv(
    path: PathLike, *, duplicates: DuplicatePolicy = "sum", binarize: float | None = None
) -> Interactions:
    """Load MovieLens "latest" / 20M / 25M ``ratings.csv``.

    Format: a header line (``userId,movieId,rating,timestamp``; names are not
    checked, but a first line that looks like data is refused so no rating is
    dropped silently), then comma-separated integer ids, a rating in [0, 5]
    (half stars) and a Unix timestamp.

    Parameters
    ----------
    path
        The ``ratings.csv`` file.
    duplicates, binarize
        As in :func:`load_ml100k`.

    Returns
    -------
    Interactions
        Ratings as values, timestamps kept.
    """
    p = _check_path(path)
    _check_header(p, ",", 4)
    data = _read_fixed(p, [_USER, _ITEM, _RATING_ML, _TS], sep=",", skip=1)
    return _finish(data, "rating", path=p, duplicates=duplicates, binarize=binarize)


def load_lastfm(
    path: PathLike, *, duplicates: DuplicatePolicy = "sum", binarize: float | None = None
) -> Interactions:
    """Load HetRec 2011 Last.fm ``user_artists.dat`` (listening counts).

    Format: tab-separated with a header (``userID artistID weight``), CRLF or
    LF line endings, integer ids and a non-negative integer play count.
    There are no timestamps.

    Parameters
    ----------
    path
        The ``user_artists.dat`` file.
    duplicates
        As in :func:`load_ml100k`; ``"sum"`` adds play counts, which is the
        natural merge for counts.
    binarize
        If given, keep pairs with at least this many plays as implicit 1.0.

    Returns
    -------
    Interactions
        Play counts as values (float32 holds counts up to 2**24 exactly).
    """
    p = _check_path(path)
    _check_header(p, "\t", 3)
    fields = [_USER, _Field("item", "int"), _Field("weight", "float", 0.0)]
    data = _read_fixed(p, fields, sep="\t", skip=1)
    return _finish(data, "weight", path=p, duplicates=duplicates, binarize=binarize, timestamp=None)


# ---------------------------------------------------------------- list format
def read_user_item_lists(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a ``user item item …`` file (LightGCN / ICLRec splits) into arrays.

    Each non-empty line lists one user id followed by the ids of the items
    that user interacted with, separated by spaces or tabs. A line holding
    only a user id is valid: the user exists but has no item in this file
    (common in valid/test splits), which is why the user list is returned
    separately.

    Parameters
    ----------
    path
        The text file.

    Returns
    -------
    users, items : numpy.ndarray of int64
        One entry per listed (user, item), in file order.
    all_users : numpy.ndarray of int64
        Sorted distinct user ids of every non-empty line, including users with
        no items.

    Raises
    ------
    DataError
        File missing or empty, or a token that is not an integer (with its
        line and whether it was the user or an item).
    """
    p = _check_path(path)
    raw = p.read_bytes()
    buf = np.frombuffer(raw, dtype=np.uint8)
    blank = (buf == 32) | (buf == 9) | (buf == 10) | (buf == 13) | (buf == 11) | (buf == 12)
    solid = ~blank
    starts = np.flatnonzero(solid & np.concatenate(([True], blank[:-1])))
    if starts.size == 0:
        raise _no_rows(p, 0)
    ends = np.flatnonzero(solid & np.concatenate((blank[1:], [True])))
    line_of = np.cumsum(buf == 10)[starts]  # 0-based line of each token
    lengths = ends - starts + 1
    digit = (buf >= 48) & (buf <= 57)
    if (solid & ~digit).any() or int(lengths.max()) > 18:
        _locate_list_error(p, raw.split(), line_of)
    # Vectorised decimal parse: each digit times 10**(distance to its token's end).
    pos = np.flatnonzero(solid)
    token = np.repeat(np.arange(starts.size), lengths)
    powers = 10 ** np.arange(19, dtype=np.int64)
    terms = (buf[pos].astype(np.int64) - 48) * powers[ends[token] - pos]
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    values = np.add.reduceat(terms, offsets)
    first = np.ones(starts.size, dtype=bool)
    first[1:] = line_of[1:] != line_of[:-1]
    line_user = values[first]
    owner = np.cumsum(first) - 1
    users = line_user[owner[~first]]
    items = values[~first]
    return users, items, np.unique(line_user)


def _locate_list_error(path: Path, tokens: list[bytes], line_of: np.ndarray) -> None:
    """Raise at the first token that is not a non-negative integer id."""
    for k, tok in enumerate(tokens):
        text = tok.decode("utf-8", errors="replace")
        if not re.fullmatch(r"\d{1,18}", text):
            is_user = k == 0 or line_of[k] != line_of[k - 1]
            raise DataError(
                "not an integer id",
                file=path,
                line=int(line_of[k]) + 1,
                field="user" if is_user else "item",
                expected="a non-negative integer of at most 18 digits",
                found=text,
            )
    raise DataError("could not parse file", file=path, expected="integer ids")


def load_user_item_lists(
    path: PathLike,
    *,
    duplicates: DuplicatePolicy = "sum",
    item_ids: Sequence[Any] | np.ndarray | None = None,
) -> Interactions:
    """Load a ``user item item …`` file (LightGCN, ICLRec, …) as implicit feedback.

    Parameters
    ----------
    path
        The text file, one user per line (see :func:`read_user_item_lists`).
    duplicates
        Policy for an item listed twice for the same user. With ``"sum"`` the
        value becomes 2.0, so pass ``"last"`` to keep the data binary.
    item_ids
        Fix the item index space (e.g. the union of the train, valid and test
        files) so matrices of several splits line up; by default the sorted
        distinct items of this file.

    Returns
    -------
    Interactions
        Values 1.0, no timestamps. Every user with a line is kept, even one
        with no items (an empty row).
    """
    p = _check_path(path)
    users, items, all_users = read_user_item_lists(p)
    x = Interactions.from_arrays(
        users,
        items,
        duplicates=duplicates,
        user_ids=all_users,
        item_ids=None if item_ids is None else np.asarray(item_ids),
        source=str(p),
    )
    return x


# ---------------------------------------------------------------- generic tables
def _generic(
    df: pd.DataFrame,
    path: Path,
    user_col: str,
    item_col: str,
    value_col: str | None,
    timestamp_col: str | None,
    *,
    line_of_row: Callable[[int], int],
    rescan: Callable[[Sequence[_Field], Sequence[int]], None] | None,
    duplicates: DuplicatePolicy,
    binarize: float | None,
    allow_negative: bool,
) -> Interactions:
    """Validate named columns of a table and build the matrix."""
    if len(df) == 0:
        raise _no_rows(path, 1)
    needed = [(user_col, "id"), (item_col, "id"), (value_col, "float"), (timestamp_col, "ts")]
    cols = list(map(str, df.columns))
    out: dict[str, np.ndarray] = {}
    for name, role in needed:
        if name is None:
            continue
        col = df[name]
        pos = cols.index(name)
        if role == "id":
            na = col.isna().to_numpy()
            if na.any():
                j = int(np.flatnonzero(na)[0])
                raise DataError(
                    "missing id",
                    file=path,
                    line=line_of_row(j),
                    field=name,
                    expected="a non-empty id",
                    found="empty",
                )
            arr = col.to_numpy()
        elif role == "ts" and col.dtype.kind not in "iuf" and _looks_like_dates(col):
            arr = _parse_times(col, path, name, line_of_row)
        else:
            f = _Field(name, "float", None if allow_negative or role == "ts" else 0.0)
            if not _numeric_ok(col, f):
                if rescan is not None:
                    rescan([f], [pos])  # exact line, same rules
                v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
                bad = ~np.isfinite(v)
                if f.low is not None:
                    bad |= v < f.low
                j = int(np.flatnonzero(bad)[0])
                text = str(col.iloc[j])
                problem = _field_problem(text, f) or ("value is not a finite number", text)
                raise DataError(
                    problem[0],
                    file=path,
                    line=line_of_row(j),
                    field=name,
                    expected=f.expected(),
                    found=text,
                )
            arr = col.to_numpy(dtype=np.float64)
        out[name] = arr
    x = Interactions.from_arrays(
        out[user_col],
        out[item_col],
        None if value_col is None else out[value_col],
        None if timestamp_col is None else out[timestamp_col],
        duplicates=duplicates,
        allow_negative=allow_negative,
        source=str(path),
    )
    return x if binarize is None else x.binarize(binarize)


def _looks_like_dates(col: pd.Series) -> bool:
    """Text timestamps are dates only if none of them reads as a plain number."""
    return bool(pd.to_numeric(col, errors="coerce").isna().all())


def _parse_times(
    col: pd.Series,
    path: Path,
    name: str,
    line_of_row: Callable[[int], int],
) -> np.ndarray:
    """Date-time text to Unix seconds (float), so leave-last-out splits can sort by it."""
    t = pd.to_datetime(col, errors="coerce", utc=True, format="mixed")
    bad = t.isna().to_numpy()
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise DataError(
            "timestamp is neither a number nor a date",
            file=path,
            line=line_of_row(j),
            field=name,
            expected="a Unix time or an ISO date",
            found=str(col.iloc[j]),
        )
    secs = (t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return np.asarray(secs, dtype=np.float64)


def _missing_column(path: Path, header: Sequence[str], wanted: Sequence[str | None]) -> None:
    needed = [c for c in wanted if c is not None]
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(
            "missing column",
            file=path,
            line=1,
            field=missing[0],
            expected=f"columns {needed}",
            found=list(header),
        )


def _load_delimited(
    path: PathLike,
    sep: str,
    user_col: str,
    item_col: str,
    value_col: str | None,
    timestamp_col: str | None,
    duplicates: DuplicatePolicy,
    binarize: float | None,
    allow_negative: bool,
) -> Interactions:
    p = _check_path(path)
    try:
        header = pd.read_csv(p, sep=sep, nrows=0, engine="c").columns
    except pd.errors.EmptyDataError:
        raise _no_rows(p, 0) from None
    names = list(map(str, header))
    _missing_column(p, names, [user_col, item_col, value_col, timestamp_col])
    n_cols = len(names)
    sep_name = repr(sep)

    def rescan(fields: Sequence[_Field], positions: Sequence[int]) -> None:
        _scan_rows(p, _csv_lines(p, sep, 1), fields, positions, n_cols, sep_name)

    def structure() -> None:
        # Field counts only: an empty value in a column we do not use is fine.
        for lineno, row in _csv_lines(p, sep, 1):
            if len(row) != n_cols:
                few = len(row) < n_cols
                raise DataError(
                    "missing field" if few else "too many fields",
                    file=p,
                    line=lineno,
                    field=names[len(row)] if few else f"column {n_cols + 1}",
                    expected=f"{n_cols} fields separated by {sep_name}",
                    found=f"{len(row)} fields",
                )

    try:
        df = pd.read_csv(
            p,
            sep=sep,
            engine="c",
            names=names,
            header=0,
            index_col=False,
            dtype={user_col: str, item_col: str},
            low_memory=False,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        structure()
        raise DataError("could not parse file", file=p, found=str(exc)) from None
    if len(df) and bool(df[names[-1]].isna().any()):
        structure()  # a short line leaves the last columns empty
    df = _numeric_ids(df, (user_col, item_col))

    def line_of_row(j: int) -> int:
        # Only called to report an error: walk the rows to find the j-th one's line.
        for k, (lineno, _row) in enumerate(_csv_lines(p, sep, 1)):
            if k == j:
                return lineno
        return j + 2

    return _generic(
        df,
        p,
        user_col,
        item_col,
        value_col,
        timestamp_col,
        line_of_row=line_of_row,
        rescan=rescan,
        duplicates=duplicates,
        binarize=binarize,
        allow_negative=allow_negative,
    )


def _numeric_ids(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Integer ids stay integers (so ``user_index([7])`` works); others stay text.

    Ids are read as text first so that ``"007"`` is not silently turned into
    ``7`` when the column also holds non-numeric ids.
    """
    out = df.copy(deep=False)
    for c in cols:
        s = out[c]
        if s.isna().any():
            continue
        text = s.astype(str)
        if bool(text.str.fullmatch(r"[+-]?\d{1,18}").all()) and not bool(
            text.str.match(r"[+-]?0\d").any()
        ):
            out[c] = text.astype(np.int64)
        else:
            out[c] = text.to_numpy(dtype=object)
    return out


def load_csv(
    path: PathLike,
    *,
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str = ",",
    duplicates: DuplicatePolicy = "sum",
    binarize: float | None = None,
    allow_negative: bool = False,
) -> Interactions:
    """Load any delimited table with a header row, naming the columns to use.

    Parameters
    ----------
    path
        The file. The first line must be a header; CSV quoting is honoured.
    user_col, item_col
        Columns holding the ids. Ids made only of digits (without a leading
        zero) become int64; anything else is kept as text, so ``"007"``
        survives intact.
    value_col
        Column of weights (ratings, counts); every value 1.0 when ``None``.
        Must be finite, and ``>= 0`` unless ``allow_negative``.
    timestamp_col
        Optional column of Unix times or date strings (converted to seconds).
    sep
        Field separator (``","``; ``"\\t"`` for :func:`load_tsv`).
    duplicates, binarize
        As in :func:`load_ml100k`.
    allow_negative
        Accept negative values (e.g. centred ratings or dislikes).

    Returns
    -------
    Interactions
        Columns other than the named ones are ignored.
    """
    return _load_delimited(
        path,
        sep,
        user_col,
        item_col,
        value_col,
        timestamp_col,
        duplicates,
        binarize,
        allow_negative,
    )


def load_tsv(
    path: PathLike,
    *,
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = None,
    timestamp_col: str | None = None,
    duplicates: DuplicatePolicy = "sum",
    binarize: float | None = None,
    allow_negative: bool = False,
) -> Interactions:
    """Tab-separated variant of :func:`load_csv` (same columns and rules)."""
    return _load_delimited(
        path,
        "\t",
        user_col,
        item_col,
        value_col,
        timestamp_col,
        duplicates,
        binarize,
        allow_negative,
    )


def load_parquet(
    path: PathLike,
    *,
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = None,
    timestamp_col: str | None = None,
    duplicates: DuplicatePolicy = "sum",
    binarize: float | None = None,
    allow_negative: bool = False,
) -> Interactions:
    """Load a Parquet table, naming the columns to use.

    Only the named columns are read. Parquet has no text lines, so an error's
    ``line`` is the 1-based row number. Ids keep their stored type; a
    timestamp column may be numeric or a datetime type (converted to Unix
    seconds). Other parameters as in :func:`load_csv`.
    """
    p = _check_path(path)
    try:
        import pyarrow.parquet as pq

        names = list(pq.read_schema(p).names)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DataError(
            "not a readable Parquet file", file=p, expected="a Parquet file", found=str(exc)[:200]
        ) from None
    wanted = [user_col, item_col, value_col, timestamp_col]
    _missing_column(p, names, wanted)
    df = pd.read_parquet(p, columns=[c for c in wanted if c is not None])
    if timestamp_col is not None and df[timestamp_col].dtype.kind == "M":
        df[timestamp_col] = _parse_times(df[timestamp_col], p, timestamp_col, lambda j: j + 1)
    return _generic(
        df,
        p,
        user_col,
        item_col,
        value_col,
        timestamp_col,
        line_of_row=lambda j: j + 1,
        rescan=None,
        duplicates=duplicates,
        binarize=binarize,
        allow_negative=allow_negative,
    )


# ---------------------------------------------------------------- dispatch
Loader = Callable[..., Interactions]

#: Format name -> loader; :func:`load` dispatches through this table.
FORMATS: dict[str, Loader] = {
    "ml-100k": load_ml100k,
    "movielens-dat": load_movielens_dat,
    "movielens-csv": load_movielens_csv,
    "lastfm": load_lastfm,
    "movietweetings": load_movietweetings,
    "user-item-lists": load_user_item_lists,
    "csv": load_csv,
    "tsv": load_tsv,
    "parquet": load_parquet,
}


def _infer_format(path: Path) -> str:
    name = path.name.lower()
    if name == "u.data" or re.fullmatch(r"u[a-z0-9]*\.(base|test)", name):
        return "ml-100k"
    if name == "ratings.dat":
        return "movietweetings" if "movietweetings" in str(path).lower() else "movielens-dat"
    if name == "ratings.csv":
        return "movielens-csv"
    if name == "user_artists.dat":
        return "lastfm"
    if name.endswith(".parquet"):
        return "parquet"
    raise DataError(
        "cannot tell the format from the file name; pass format=",
        file=path,
        field="format",
        expected=" | ".join(FORMATS),
        found=None,
    )


def load(path: PathLike, format: str | None = None, **kw: Any) -> Interactions:
    """Load ``path`` with the loader registered under ``format``.

    Parameters
    ----------
    path
        The file.
    format
        One of :data:`FORMATS` (``"ml-100k"``, ``"movielens-dat"``,
        ``"movielens-csv"``, ``"lastfm"``, ``"movietweetings"``,
        ``"user-item-lists"``, ``"csv"``, ``"tsv"``, ``"parquet"``). When
        ``None`` it is inferred only from unambiguous names: ``u.data``,
        ``ratings.dat`` (MovieTweetings if the path says so, else MovieLens),
        ``ratings.csv``, ``user_artists.dat`` and ``*.parquet``.
    **kw
        Passed to the loader (``duplicates``, ``binarize``, column names …).

    Raises
    ------
    DataError
        Unknown format (listing the known ones), a name that does not give the
        format away, or any problem the loader finds.
    """
    fmt = _infer_format(Path(path)) if format is None else format
    loader = FORMATS.get(fmt)
    if loader is None:
        raise DataError("unknown format", field="format", expected=" | ".join(FORMATS), found=fmt)
    return loader(path, **kw)
