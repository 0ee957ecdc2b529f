"""Readers for the interaction files recommender research actually uses.

Every loader returns an :class:`~privrec.data.interactions.Interactions` and
reports bad input as a :class:`~privrec.errors.DataError` that names the file,
the 1-based line (as an editor shows it, header included), the field, what was
expected and what was found. The rules a file must follow (UTF-8, ``\\n``,
``\\r\\n`` or ``\\r`` line ends, integer and number syntax, ranges) are written
once in :mod:`privrec.data.textspec`.

Why two readers: a file is first parsed with pandas' C reader (fast, about a
second for ten million lines) and checked with vectorised tests that accept
only what the rules accept — every line with exactly the format's fields, no
extra field dropped, every value in range. Only when that check fails is the
file parsed again line by line by the exact rules, which locate the first
offending line (or, if pandas was merely stricter, return the same data).
Good files never pay for the exact parse; bad files get a precise message.
"""

from __future__ import annotations

import csv
import inspect
import io
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from privrec.data.interactions import DuplicatePolicy, Interactions
from privrec.data.tables import load_csv, load_parquet, load_tsv
from privrec.data.textspec import (
    FLOAT32_MAX,
    INT64_MAX,
    INT_RE,
    Field,
    blank,
    check_path,
    decode_line,
    exact_fixed,
    first_line,
    no_rows,
    read_bytes,
    short,
)
from privrec.errors import ConfigError, DataError, DataWarning

__all__ = [
    "DATASET_FILES",
    "FORMATS",
    "dataset_files",
    "folder_error",
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
    "read_item_catalogue",
    "read_user_item_lists",
]

PathLike = str | Path

#: Build from an in-memory DataFrame (re-exported so every entry point lives here).
from_dataframe = Interactions.from_dataframe


# ---------------------------------------------------------------- fixed layouts
def _check_header(path: Path, raw: bytes, sep: str, fields: Sequence[Field]) -> None:
    """Line 1 must be a header with one name per field, not data (else a row would be lost)."""
    if not raw:
        raise no_rows(path, 1, header=False)
    n = len(fields)
    first = decode_line(first_line(raw), 1, path, sep, [f.name for f in fields])
    problem = None
    if blank(first, sep):
        problem = "first line is empty, not a header"
    elif INT_RE.fullmatch(first.split(sep)[0]):
        problem = "first line looks like data, not a header"
    elif len(first.split(sep)) != n:
        problem = f"header has {len(first.split(sep))} names, not {n}"
    if problem is not None:
        raise DataError(
            problem,
            file=path,
            line=1,
            field="header",
            expected=f"a header line with {n} column names separated by {sep!r}",
            found=short(first),
        )


def _fast_ok(col: pd.Series, f: Field) -> bool:
    """Vectorised rule of ``f`` on a column pandas parsed: accepts only what the rule accepts."""
    kind = col.dtype.kind
    if f.kind == "int":
        return kind == "i"  # int64; pandas gives uint64 or text beyond int64 range
    if kind not in "iuf":
        return False
    v = col.to_numpy(dtype=np.float64)
    if not np.isfinite(v).all():
        return False
    if f.low is not None and (v < f.low).any():
        return False
    if f.high is not None and (v > f.high).any():
        return False
    return not (np.abs(v) > FLOAT32_MAX).any()


def _read_fixed(
    path: Path, fields: Sequence[Field], *, sep: str, header: bool = False
) -> dict[str, np.ndarray]:
    """Columns of a fixed-layout file: pandas' fast read, or the exact parse when it objects.

    ``sep`` may be ``"::"``: it is then read with ``":"`` and the separator
    count proves every colon belongs to a ``"::"``, so the odd columns are the
    empty gaps between the fields.
    """
    raw = read_bytes(path)
    if header:
        _check_header(path, raw, sep, fields)
    n = len(fields)
    double = sep == "::"
    names = [f"c{k}" for k in range(2 * n - 1 if double else n)]
    used = names[::2] if double else names  # the gaps of "::" need no parsing
    try:
        df = pd.read_csv(
            io.BytesIO(raw),
            sep=sep[0],
            header=None,
            names=names,
            usecols=used,
            skiprows=1 if header else 0,
            engine="c",
            quoting=csv.QUOTE_NONE,
            na_filter=False,
            low_memory=False,
            encoding="utf-8",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OverflowError):
        return exact_fixed(path, raw, fields, sep, header=header)
    rows = len(df)
    if double:
        pairs = raw.count(b"::")
        seps_ok = raw.count(b":") == 2 * pairs and pairs == (n - 1) * rows
    else:
        head_seps = first_line(raw).count(sep.encode()) if header else 0
        seps_ok = raw.count(sep.encode()) - head_seps == (n - 1) * rows
    cols = [df[c] for c in used]
    if rows == 0 or not seps_ok or not all(map(_fast_ok, cols, fields)):
        return exact_fixed(path, raw, fields, sep, header=header)
    return {
        f.name: c.to_numpy(dtype=np.int64 if f.kind == "int" else np.float64)
        for c, f in zip(cols, fields, strict=True)
    }


def _finish(
    data: dict[str, np.ndarray],
    value: str | None,
    *,
    path: Path,
    duplicates: DuplicatePolicy,
    binarize: float | None,
    timestamp: str | None = "timestamp",
) -> Interactions:
    x = Interactions.from_arrays(
        data["user"],
        data["item"],
        None if value is None else data[value],
        None if timestamp is None else data[timestamp],
        duplicates=duplicates,
        source=str(path),
    )
    return x if binarize is None else x.binarize(binarize)


_RATING_ML = Field("rating", "float", 0.0, 5.0)
_RATING_MT = Field("rating", "float", 0.0, 10.0)
_WEIGHT = Field("weight", "float", 0.0)
_USER = Field("user", "int")
_ITEM = Field("item", "int")
_TS = Field("timestamp", "int")


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
    p = check_path(path)
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
    checking that every colon belongs to a ``"::"``, which keeps a 10M-line
    file loading in seconds. A line with a fifth field is refused, not cut.

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
    p = check_path(path)
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
    p = check_path(path)
    data = _read_fixed(p, [_USER, _ITEM, _RATING_MT, _TS], sep="::")
    return _finish(data, "rating", path=p, duplicates=duplicates, binarize=binarize)


def load_movielens_csv(
    path: PathLike, *, duplicates: DuplicatePolicy = "sum", binarize: float | None = None
) -> Interactions:
    """Load MovieLens "latest" / 20M / 25M ``ratings.csv``.

    Format: a header line of four names (``userId,movieId,rating,timestamp``;
    the names are not checked, but a first line that looks like data is
    refused so no rating is dropped silently), then comma-separated integer
    ids, a rating in [0, 5] (half stars) and a Unix timestamp. No quoting.

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
    p = check_path(path)
    data = _read_fixed(p, [_USER, _ITEM, _RATING_ML, _TS], sep=",", header=True)
    return _finish(data, "rating", path=p, duplicates=duplicates, binarize=binarize)


def load_lastfm(
    path: PathLike, *, duplicates: DuplicatePolicy = "sum", binarize: float | None = None
) -> Interactions:
    """Load HetRec 2011 Last.fm ``user_artists.dat`` (listening counts).

    Format: tab-separated with a header of three names (``userID artistID
    weight``), CRLF or LF line endings, integer ids and a non-negative play
    count. There are no timestamps.

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
    p = check_path(path)
    data = _read_fixed(p, [_USER, _ITEM, _WEIGHT], sep="\t", header=True)
    return _finish(data, "weight", path=p, duplicates=duplicates, binarize=binarize, timestamp=None)


# ---------------------------------------------------------------- list format
_INT64_DIGITS = len(str(INT64_MAX))  # 19


def read_user_item_lists(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a ``user item item …`` file (LightGCN / ICLRec splits) into arrays.

    Each non-blank line lists one user id followed by the ids of the items
    that user interacted with, separated by spaces or tabs. A line holding
    only a user id is valid: the user exists but has no item in this file
    (common in valid/test splits), which is why the user list is returned
    separately. Ids are non-negative decimal integers below 2**63; lines end
    with ``\\n``, ``\\r\\n`` or a lone ``\\r``. A user listed on several lines
    gets the union of their items, with a :class:`~privrec.errors.DataWarning`.

    Parameters
    ----------
    path
        The text file (UTF-8 or ASCII).

    Returns
    -------
    users, items : numpy.ndarray of int64
        One entry per listed (user, item), in file order.
    all_users : numpy.ndarray of int64
        Sorted distinct user ids of every non-blank line, including users with
        no items.

    Raises
    ------
    DataError
        File missing, empty or not UTF-8, or a token that is not an id (with
        its line, whether it was the user or an item, and why).
    """
    p = check_path(path)
    raw = read_bytes(p)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Vectorised over bytes: token boundaries, line numbers, then a decimal parse.
    buf = np.frombuffer(raw, dtype=np.uint8)
    lf = buf == 10
    # A line ends at every LF and at every CR not followed by LF (CRLF counts once).
    brk = lf
    if b"\r" in raw:
        brk = lf | ((buf == 13) & ~np.concatenate((lf[1:], [False])))
    blank_b = ((buf >= 9) & (buf <= 13)) | (buf == 32)  # tab, LF, VT, FF, CR, space
    solid = ~blank_b
    starts = np.flatnonzero(solid & np.concatenate(([True], blank_b[:-1])))
    if starts.size == 0:
        raise no_rows(p, 1, header=False)
    ends = np.flatnonzero(solid & np.concatenate((blank_b[1:], [True])))
    line_of = np.cumsum(brk)[starts]  # 0-based line of each token
    lengths = ends - starts + 1
    longest = int(lengths.max())
    digit = (buf - np.uint8(48)) < 10  # wraps below "0", so one comparison
    if (solid & ~digit).any() or longest > _INT64_DIGITS:
        _locate_list_error(p, raw, line_of)
    # Each digit times 10**(distance to its token's end), summed per token in uint64:
    # 19 digits stay below 2**64, so nothing wraps before the int64 range check.
    pos = np.flatnonzero(solid)
    token = np.repeat(np.arange(starts.size), lengths)
    powers = np.uint64(10) ** np.arange(_INT64_DIGITS, dtype=np.uint64)
    terms = (buf[pos] - np.uint8(48)).astype(np.uint64) * powers[ends[token] - pos]
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    values_u = np.add.reduceat(terms, offsets)
    if longest == _INT64_DIGITS and (values_u > np.uint64(INT64_MAX)).any():
        _locate_list_error(p, raw, line_of)
    values = values_u.astype(np.int64)
    first = np.ones(starts.size, dtype=bool)
    first[1:] = line_of[1:] != line_of[:-1]
    line_user = values[first]
    owner = np.cumsum(first) - 1
    users = line_user[owner[~first]]
    items = values[~first]
    all_users = np.unique(line_user)
    if all_users.size < line_user.size:
        warnings.warn(
            f"{line_user.size - all_users.size} user id(s) in {str(p)!r} start more than one "
            "line; each user's items are merged",
            DataWarning,
            stacklevel=2,
        )
    return users, items, all_users


def _locate_list_error(path: Path, raw: bytes, line_of: np.ndarray) -> None:
    """Raise at the first token that is not a non-negative int64 id (tokens as ``bytes.split``)."""
    for k, tok in enumerate(raw.split()):
        if tok.isdigit() and len(tok) <= _INT64_DIGITS and int(tok) <= INT64_MAX:
            continue
        is_user = k == 0 or line_of[k] != line_of[k - 1]
        lineno = int(line_of[k]) + 1
        field = "user" if is_user else "item"
        try:
            text = tok.decode("utf-8")
        except UnicodeDecodeError:
            decode_line(tok, lineno, path, " ", [field])  # raises, naming the bad bytes
            raise AssertionError("unreachable") from None  # pragma: no cover
        digits = tok.isdigit()
        raise DataError(
            "integer id out of range" if digits else "not a non-negative integer id",
            file=path,
            line=lineno,
            field=field,
            expected=(
                f"an id of at most {INT64_MAX} (2**63 - 1)"
                if digits
                else "a non-negative integer id (digits 0-9 only)"
            ),
            found=short(text),
        )
    raise DataError("could not parse file", file=path, expected="integer ids")  # pragma: no cover


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
    p = check_path(path)
    users, items, all_users = read_user_item_lists(p)
    return Interactions.from_arrays(
        users,
        items,
        duplicates=duplicates,
        user_ids=all_users,
        item_ids=None if item_ids is None else np.asarray(item_ids),
        source=str(p),
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


#: Names of the files that hold a whole dataset's interactions in its usual download folder
#: (MovieLens 100K, MovieLens 1M / 10M, MovieLens latest, MovieTweetings, Last.fm): the
#: names :func:`load` reads without ``format=``, except the 100K's per-fold ``u1.base`` ….
DATASET_FILES = ("u.data", "ratings.dat", "ratings.csv", "user_artists.dat")


def dataset_files(folder: PathLike) -> list[Path]:
    """The files of :data:`DATASET_FILES` directly inside ``folder``, in that order.

    A dataset's download folder holds its interactions beside other tables (items, users,
    genres): exactly one of these files tells which one is the interactions, so a command
    line given the folder can read it — more than one is ambiguous and none is not a dataset.
    """
    root = Path(folder)
    return [root / name for name in DATASET_FILES if (root / name).is_file()]


def folder_error(folder: PathLike) -> DataError:
    """The error for a folder given where an interaction file was expected, saying what to give
    instead: a LightGCN split folder is read by :func:`privrec.evaluation.load_split`, a dataset
    folder through one of its files (named when there are any)."""
    root = Path(folder)
    if (root / "train.txt").is_file():
        hint = "it is a split folder (train.txt): read it with privrec.evaluation.load_split"
    else:
        found = dataset_files(root)
        hint = (
            f"give the interaction file inside it: {' or '.join(repr(f.name) for f in found)}"
            if found
            else "give an interaction file (no file in it is named "
            + ", ".join(DATASET_FILES)
            + ")"
        )
    return DataError(f"this is a folder, not a file; {hint}", file=root)


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
    ConfigError
        An option the format's loader does not take (e.g. ``user_col`` for
        ``"ml-100k"``).
    """
    if Path(path).is_dir():  # before the format: "cannot tell the format" would mislead
        raise folder_error(path)
    fmt = _infer_format(Path(path)) if format is None else format
    loader = FORMATS.get(fmt)
    if loader is None:
        raise DataError("unknown format", field="format", expected=" | ".join(FORMATS), found=fmt)
    params = inspect.signature(loader).parameters
    unknown = [k for k in kw if k not in params or k == "path"]
    if unknown:
        raise ConfigError(
            f"format {fmt!r} does not take option {unknown[0]!r}; it takes "
            + ", ".join(k for k in params if k != "path")
        )
    return loader(path, **kw)


# ---------------------------------------------------------------- item catalogues
#: a first line that names the column rather than an item
ITEM_HEADERS = frozenset({"item", "items", "item_id", "itemid", "item-id", "item id", "id"})


def read_item_catalogue(path: PathLike) -> list[str]:
    """An item catalogue file (``train --items``, a served dataset's ``items``): one external
    item id per line; blank lines, ``#`` comments and a first line ``item`` / ``item_id`` (a
    header) are skipped. A catalogue given this way does not depend on the data, so a private
    result need not assume the set of items people interacted with public."""
    path = Path(path)
    if not path.is_file():
        raise DataError("item catalogue file not found", file=path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError("item catalogue is not UTF-8 text", file=path, found=str(exc)) from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if lineno == 1 and item.lower() in ITEM_HEADERS:
            continue
        out.append(item)
    if not out:
        raise DataError("item catalogue file lists no item", file=path)
    if len(set(out)) != len(out):
        raise DataError("item catalogue lists an item twice", file=path)
    return out
