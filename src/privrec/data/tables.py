"""Generic tables with named columns: CSV, TSV and Parquet.

A CSV/TSV file has a header row (its first non-blank line) and follows
Python's :mod:`csv` rules for quoting (``"a,b"``, doubled ``""``), with the
line and encoding rules of :mod:`privrec.data.textspec`; every row must have
as many fields as the header, and a quoted field must be closed. A file with
no quote character at all is read by pandas' C reader (fast); a file with
quotes, or one the fast check refuses, is read by the exact rules with
:mod:`csv` (slower, and it names the first bad line). The named columns are
then checked by :mod:`privrec.data.columns`.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from privrec.data.columns import Where, id_column, number_column, time_column
from privrec.data.interactions import DuplicatePolicy, Interactions
from privrec.data.textspec import (
    Field,
    blank,
    check_path,
    column_name,
    decode_line,
    iter_lines,
    line_ends,
    no_rows,
    read_bytes,
    split_lines,
)
from privrec.errors import ConfigError, DataError

__all__ = ["load_csv", "load_parquet", "load_tsv"]

PathLike = str | Path
_LIMIT_LOCK = threading.Lock()


@contextmanager
def _csv_field_limit(size: int) -> Iterator[None]:
    """Let :mod:`csv` read fields as long as the file (its default stops at 128 KiB).

    Only ever raised, under a lock, so two loads in two threads cannot lower it
    under each other; ids have their own, smaller limit (``MAX_ID_CHARS``).
    """
    with _LIMIT_LOCK:
        if csv.field_size_limit() < size:
            csv.field_size_limit(size)
    yield


def _check_sep(sep: str) -> None:
    if len(sep) != 1 or sep in '\r\n"':
        raise ConfigError(
            f"sep must be one character other than a quote or a line break, not {sep!r}"
        )


def _csv_records(
    path: Path, raw: bytes, sep: str, names: Sequence[str] = ()
) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` of every non-blank record, by Python's CSV rules.

    An unclosed quote is detected by feeding one extra line after the file:
    if a record swallows it, its quote ran to the end of the file. ``names``
    (filled by the caller once the header is read) names fields in errors.
    """
    n_read = [0]  # lines of the file fed so far
    last = [""]  # the last of them

    def feed() -> Iterator[str]:
        for lineno, text in line_ends(raw, path, sep, names):
            n_read[0], last[0] = lineno, text
            yield text
        yield "\n"

    reader = csv.reader(feed(), delimiter=sep, quotechar='"', doublequote=True, strict=False)
    with _csv_field_limit(len(raw) + 1):
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(
                    "malformed CSV record", file=path, line=start, found=str(exc)
                ) from None
            n_lines = n_read[0]
            if start > n_lines:
                return  # the extra line, read on its own: every quote was closed
            if reader.line_num > n_lines:
                raise DataError(
                    "quoted field is not closed",
                    file=path,
                    line=start,
                    field=column_name(len(row) - 1, names),
                    expected='a closing quote (")',
                    found="end of file",
                )
            if not row:
                continue
            if reader.line_num == start and blank(last[0].rstrip("\r\n"), sep):
                continue
            yield start, row


def _first_line(raw: bytes, sep: str, path: Path) -> tuple[int, str] | None:
    """Number and text of the first non-blank line (the header of a quote-free file)."""
    for lineno, b in iter_lines(raw):
        text = decode_line(b, lineno, path)
        if not blank(text, sep):
            return lineno, text
    return None


def _resolve(
    path: Path, names: Sequence[str], header_line: int | None, wanted: Sequence[str | None]
) -> list[int]:
    """Position of each wanted column in the header (refusing absent or ambiguous names)."""
    needed = [c for c in wanted if c is not None]
    out = []
    for c in needed:
        hits = [k for k, name in enumerate(names) if name == c]
        if not hits:
            raise DataError(
                "missing column",
                file=path,
                line=header_line,
                field=c,
                expected=f"columns {needed}",
                found=list(names),
            )
        if len(hits) > 1:
            raise DataError(
                "column name appears more than once in the header",
                file=path,
                line=header_line,
                field=c,
                expected="unique column names",
                found=list(names),
            )
        out.append(hits[0])
    return out


def _columns(
    cols: dict[str, pd.Series],
    user_col: str,
    item_col: str,
    value_col: str | None,
    timestamp_col: str | None,
    where: Where,
    *,
    text: bool,
    allow_negative: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    users = id_column(cols[user_col], user_col, where, text=text)
    items = id_column(cols[item_col], item_col, where, text=text)
    values = None
    if value_col is not None:
        f = Field(value_col, "float", None if allow_negative else 0.0)
        values = number_column(cols[value_col], f, where, text=text)
    times = None
    if timestamp_col is not None:
        times = time_column(cols[timestamp_col], timestamp_col, where, text=text)
    return users, items, values, times


def _fast_delimited(
    path: Path, raw: bytes, sep: str, wanted: Sequence[str | None]
) -> tuple[dict[str, pd.Series], Callable[[int], int]] | None:
    """Columns of a quote-free file read by pandas, or ``None`` when the exact reader must decide."""
    if b'"' in raw:
        return None
    first = _first_line(raw, sep, path)
    if first is None:
        return None
    header_line, header = first
    names = header.split(sep)
    pos = _resolve(path, names, header_line, wanted)
    n = len(names)
    needed = [c for c in wanted if c is not None]
    ids = {pos[needed.index(c)] for c in wanted[:2] if c is not None}
    try:
        df = pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=None,
            names=[f"c{k}" for k in range(n)],
            usecols=[f"c{k}" for k in sorted({*pos, n - 1})],  # others need no parsing
            skiprows=header_line,
            engine="c",
            na_filter=False,
            dtype={f"c{k}": str for k in ids},
            low_memory=False,
            encoding="utf-8",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OverflowError):
        return None
    if len(df) == 0 or raw.count(sep.encode()) != header.count(sep) + (n - 1) * len(df):
        return None  # no rows, or a row with too few or too many fields
    last = df[f"c{n - 1}"]
    if last.dtype.kind not in "iufb" and bool((last.astype(str) == "").any()):
        # pandas fills a short row's missing fields with "": only the exact reader can
        # tell it from an empty last field (and the count above cannot see a short row
        # balanced by a long one).
        return None

    def line_of_row(j: int) -> int:
        k = -1
        for idx, b in enumerate(split_lines(raw)[header_line:], start=header_line + 1):
            if not blank(b.decode("utf-8", errors="replace"), sep):
                k += 1
                if k == j:
                    return idx
        return header_line + j + 1  # pragma: no cover

    return {c: df[f"c{pos[i]}"] for i, c in enumerate(needed)}, line_of_row


def _exact_delimited(
    path: Path, raw: bytes, sep: str, wanted: Sequence[str | None]
) -> tuple[dict[str, pd.Series], Callable[[int], int]]:
    """Columns read by the exact rules (quotes, and every check that names a line)."""
    names: list[str] = []
    records = _csv_records(path, raw, sep, names)
    head = next(records, None)
    if head is None:
        raise no_rows(path, 1, header=False)
    header_line, header = head
    names.extend(header)
    pos = _resolve(path, names, header_line, wanted)
    n = len(names)
    lines: list[int] = []
    fields: list[list[str]] = [[] for _ in pos]
    for lineno, row in records:
        if len(row) != n:
            few = len(row) < n
            raise DataError(
                "missing field" if few else "too many fields",
                file=path,
                line=lineno,
                field=column_name(len(row), names) if few else f"column {n + 1}",
                expected=f"{n} fields separated by {sep!r}",
                found=f"{len(row)} fields",
            )
        lines.append(lineno)
        for k, p in enumerate(pos):
            fields[k].append(row[p])
    if not lines:
        raise no_rows(path, header_line + 1, header=True)
    needed = [c for c in wanted if c is not None]
    cols = {c: pd.Series(fields[k], dtype=object) for k, c in enumerate(needed)}
    return cols, lines.__getitem__


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
    _check_sep(sep)
    p = check_path(path)
    raw = read_bytes(p)
    wanted = [user_col, item_col, value_col, timestamp_col]
    fast = _fast_delimited(p, raw, sep, wanted)
    cols, line_of_row = fast if fast is not None else _exact_delimited(p, raw, sep, wanted)
    users, items, values, times = _columns(
        cols,
        user_col,
        item_col,
        value_col,
        timestamp_col,
        Where(p, line_of_row),
        text=True,
        allow_negative=allow_negative,
    )
    x = Interactions.from_arrays(
        users,
        items,
        values,
        times,
        duplicates=duplicates,
        allow_negative=allow_negative,
        source=str(p),
    )
    return x if binarize is None else x.binarize(binarize)


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
        The file: UTF-8, a header row first, CSV quoting honoured, every row
        with as many fields as the header.
    user_col, item_col
        Columns holding the ids. Ids are literal text (``NA``, ``null`` and
        ``nan`` are ids like any other; only an empty field is a missing id).
        A column whose every id is a canonical integer (``0``, ``7``, ``-3``:
        no sign, no leading zero, at most 18 digits) becomes int64; anything
        else stays text, so ``"007"`` survives intact.
    value_col
        Column of weights (ratings, counts); every value 1.0 when ``None``.
        Decimal numbers, finite, ``>= 0`` unless ``allow_negative``, and
        within float32 range.
    timestamp_col
        Optional column of Unix times (any unit, below 2**63 in magnitude) or
        ISO 8601 dates (converted to seconds); its first row decides which.
    sep
        Field separator, one character (``","``; ``"\\t"`` for
        :func:`load_tsv`).
    duplicates, binarize
        As in :func:`~privrec.data.loaders.load_ml100k`.
    allow_negative
        Accept negative values (e.g. centred ratings or dislikes).

    Returns
    -------
    Interactions
        Columns other than the named ones are ignored (but every row must
        still have the header's number of fields).
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


# ------------------------------------------------------------------ Parquet
_ARROW_KINDS = {
    "id": ("integer", "floating", "string", "dictionary"),
    "value": ("integer", "floating", "boolean", "decimal", "string"),
    "time": ("integer", "floating", "timestamp", "date", "string"),
}
_ARROW_EXPECTED = {
    "id": "integer, float or string ids",
    "value": "numbers (integer, float, decimal, boolean, or text numbers)",
    "time": "numbers, timestamps, dates or text (numbers or ISO 8601 dates)",
}


def _arrow_kind(t: object) -> str:
    import pyarrow.types as pt

    checks: list[tuple[str, Callable[[object], bool]]] = [
        ("integer", pt.is_integer),
        ("floating", pt.is_floating),
        ("boolean", pt.is_boolean),
        ("decimal", pt.is_decimal),
        ("timestamp", pt.is_timestamp),
        ("date", pt.is_date),
        ("string", lambda x: pt.is_string(x) or pt.is_large_string(x) or _is_string_view(x)),
    ]
    for name, check in checks:
        if check(t):
            return name
    if pt.is_dictionary(t):
        value = _arrow_kind(t.value_type)  # type: ignore[attr-defined]
        return "dictionary" if value in ("integer", "string") else value
    return str(t)


def _is_string_view(t: object) -> bool:
    import pyarrow.types as pt

    check = getattr(pt, "is_string_view", None)
    return bool(check(t)) if check is not None else False


def _parquet_error(path: Path, exc: BaseException) -> DataError:
    return DataError(
        "not a readable Parquet file",
        file=path,
        expected="a Parquet file",
        found=f"{type(exc).__name__}: {str(exc)[:200]}",
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

    Only the named columns are read, and their types are checked first:
    ids must be integers, floats or strings (a list or struct column is
    refused, naming it); values numbers or booleans; timestamps numbers,
    timestamps or dates (converted to Unix seconds). Ids keep their stored
    type. Parquet has no text lines, so an error's ``line`` is the 1-based row
    number. Other parameters as in :func:`load_csv`.
    """
    p = check_path(path)
    try:
        import pyarrow.parquet as pq

        schema = pq.read_schema(p)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise _parquet_error(p, exc) from None
    names = list(schema.names)
    roles = [(user_col, "id"), (item_col, "id"), (value_col, "value"), (timestamp_col, "time")]
    _resolve(p, names, None, [c for c, _ in roles])
    for name, role in roles:
        if name is None:
            continue
        kind = _arrow_kind(schema.field(name).type)
        if kind not in _ARROW_KINDS[role]:
            raise DataError(
                "column of an unsupported type",
                file=p,
                field=name,
                expected=_ARROW_EXPECTED[role],
                found=str(schema.field(name).type),
            )
    read = list(dict.fromkeys(c for c, _ in roles if c is not None))
    try:
        table = pq.read_table(p, columns=read)
        table.validate(full=True)  # damaged pages can hold e.g. invalid UTF-8 strings
        df = table.to_pandas()
    except Exception as exc:
        raise _parquet_error(p, exc) from None
    if len(df) == 0:
        raise no_rows(p, 1, header=False)
    users, items, values, times = _columns(
        {c: df[c] for c in read},
        user_col,
        item_col,
        value_col,
        timestamp_col,
        Where(p, lambda j: j + 1),
        text=False,
        allow_negative=allow_negative,
    )
    x = Interactions.from_arrays(
        users,
        items,
        values,
        times,
        duplicates=duplicates,
        allow_negative=allow_negative,
        source=str(p),
    )
    return x if binarize is None else x.binarize(binarize)
