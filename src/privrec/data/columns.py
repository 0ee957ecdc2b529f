"""Checks of the named columns of a table: ids, values and timestamps.

One set of rules for every table a user hands over — a pandas DataFrame, a
Parquet file, a CSV/TSV file — so that the same bad value gets the same
:class:`~privrec.errors.DataError` (file, line or row, field, expected,
found) wherever it comes from.

Two flavours of column. *Text* columns come from a CSV file: every value is a
string and follows the rules of :mod:`privrec.data.textspec` (an id is
literal text — ``NA`` and ``null`` are ids, not missing values; a number is a
decimal literal). *Typed* columns come from a DataFrame or a Parquet file:
their values already have types, which are checked (an id is an integer, a
float or a string, never a list, a struct or a mix of numbers and text).
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from privrec.data.textspec import (
    FLOAT_RE,
    ISO_DATE_RE,
    MAX_ID_CHARS,
    TIME_LIMIT,
    Field,
    FieldProblem,
    short,
)
from privrec.errors import DataError

__all__ = ["Where", "id_column", "number_column", "time_column"]

_CANONICAL_INT = r"0|-?[1-9][0-9]{0,17}"
_ID_EXPECTED = "an integer or a non-empty string id"
_DATE_KINDS = ("date", "datetime", "datetime64")


@dataclass(frozen=True)
class Where:
    """Where a table came from: its file and how to turn a 0-based row into a 1-based line."""

    file: str | Path | None
    line_of_row: Callable[[int], int]

    def error(self, message: str, row: int, field: str, expected: str, found: object) -> DataError:
        return DataError(
            message,
            file=self.file,
            line=self.line_of_row(row),
            field=field,
            expected=expected,
            found=found,
        )


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _found(value: object) -> str:
    """How a bad typed value is shown: its type and a short repr."""
    return short(f"{type(value).__name__} {value!r}")


def _nulls(col: pd.Series, name: str, where: Where, what: str, expected: str) -> None:
    na = np.asarray(col.isna(), dtype=bool)
    if na.any():
        j = _first(na)
        raise where.error(f"missing {what}", j, name, expected, _found(col.iloc[j]))


# ------------------------------------------------------------------ ids
def id_column(col: pd.Series, name: str, where: Where, *, text: bool) -> np.ndarray:
    """External ids of one column, checked.

    Text ids (CSV): non-empty, at most :data:`MAX_ID_CHARS` characters, taken
    literally; a column whose every id is a canonical decimal integer
    (``0``, ``7``, ``-12``; no sign, no leading zero, at most 18 digits)
    becomes int64, a one-to-one change — ``"007"`` or ``"+7"`` keep the whole
    column as text. Typed ids (DataFrame, Parquet) keep their type.
    """
    if text:
        return _text_ids(
            col if isinstance(col.dtype, pd.StringDtype) else col.astype(str), name, where
        )
    if len(col) == 0:
        return col.to_numpy()
    _nulls(col, name, where, "id", _ID_EXPECTED)
    arr = col.to_numpy()
    kind = arr.dtype.kind
    if kind in "iu":
        return arr
    if kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            j = _first(bad)
            raise where.error("id is not finite", j, name, _ID_EXPECTED, _found(arr[j]))
        return arr
    if kind not in "OUS" and not isinstance(col.dtype, pd.StringDtype):
        raise where.error("ids of an unsupported type", 0, name, _ID_EXPECTED, f"dtype {col.dtype}")
    obj = np.asarray(arr, dtype=object)
    inferred = pd.api.types.infer_dtype(obj, skipna=False)
    if inferred == "string":
        return _text_ids(pd.Series(obj, dtype=object), name, where, canonical=False)
    if inferred == "integer":
        try:
            return obj.astype(np.int64)
        except OverflowError:
            return obj  # Python integers beyond int64 stay exact as objects
    if inferred == "floating":
        return number_ids(obj, name, where)
    _mixed_ids(obj, name, where)
    raise AssertionError("unreachable")  # pragma: no cover


def number_ids(obj: np.ndarray, name: str, where: Where) -> np.ndarray:
    v = obj.astype(np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        j = _first(bad)
        raise where.error("id is not finite", j, name, _ID_EXPECTED, _found(obj[j]))
    return v


def _scalar_kind(v: object) -> str | None:
    if isinstance(v, bool | np.bool_):
        return None
    if isinstance(v, int | np.integer):
        return "integers"
    if isinstance(v, float | np.floating):
        return "floats"
    if isinstance(v, str):
        return "strings"
    return None


def _mixed_ids(obj: np.ndarray, name: str, where: Where) -> None:
    """Raise at the first id that is not a scalar, or whose kind differs from the first id's."""
    first: str | None = None
    for j, v in enumerate(obj):
        kind = _scalar_kind(v)
        if kind is None:
            raise where.error("id is not an integer or a string", j, name, _ID_EXPECTED, _found(v))
        if first is None:
            first = kind
        elif kind != first:
            raise where.error(
                f"ids mix {first} and {kind}",
                j,
                name,
                f"only {first} in this id column, like its first row "
                "(cast the column, e.g. .astype(str))",
                _found(v),
            )
    raise where.error("ids of an unsupported type", 0, name, _ID_EXPECTED, "mixed values")


def _text_ids(s: pd.Series, name: str, where: Where, *, canonical: bool = True) -> np.ndarray:
    lens = s.str.len().to_numpy()
    bad = (lens == 0) | (lens > MAX_ID_CHARS)
    if bad.any():
        j = _first(bad)
        if lens[j] == 0:
            raise where.error("missing id", j, name, _ID_EXPECTED, "empty")
        raise where.error(
            "id too long",
            j,
            name,
            f"an id of at most {MAX_ID_CHARS} characters",
            f"{lens[j]} characters",
        )
    if canonical and bool(s.str.fullmatch(_CANONICAL_INT).all()):
        return _to_int64(s)
    return s.to_numpy(dtype=object)


def _to_int64(s: pd.Series) -> np.ndarray:
    """Canonical decimal strings (at most 18 digits) to int64, exactly; Arrow's cast is fast."""
    try:
        import pyarrow as pa

        return np.asarray(pa.array(s).cast(pa.int64()).to_numpy(), dtype=np.int64)
    except (ImportError, TypeError, ValueError):  # pragma: no cover  (no Arrow-backed strings)
        return s.to_numpy(dtype=object).astype(np.int64)


# ------------------------------------------------------------------ numbers
def number_column(col: pd.Series, field: Field, where: Where, *, text: bool) -> np.ndarray:
    """Float64 values of a ``"float"`` or ``"time"`` field, checked row by row.

    Text columns follow the number rule of :mod:`privrec.data.textspec`
    (so ``"True"`` or ``"NA"`` is not a number). Typed columns accept
    integers, floats, decimals and booleans (as 0/1).
    """
    if not text:
        _nulls(col, field.name, where, "value", field.expected())
    kind = col.dtype.kind
    texts: list[str | None] | None = None  # the text of each value, where there was one
    if kind in "iuf" or (kind == "b" and not text):
        v = col.to_numpy(dtype=np.float64)
    elif kind == "b":  # pandas turned "True"/"False" text into booleans
        raise where.error(
            "value is not a number", 0, field.name, field.expected(), str(col.iloc[0])
        )
    else:
        obj = np.asarray(col.to_numpy(), dtype=object)
        inferred = pd.api.types.infer_dtype(obj, skipna=False)
        if inferred == "string" or text:
            s = pd.Series(obj, dtype=object).astype(str)
            v = _text_numbers(s)
            texts = list(s)
        else:  # numbers as Python objects, decimals, or a mix with something else
            v, texts = _each_number(obj, field, where)
    _check_numbers(v, field, where, texts)
    return v


def _text_numbers(s: pd.Series) -> np.ndarray:
    """Values of number texts; NaN where the text is not a number (reported in row order)."""
    ok = s.str.fullmatch(FLOAT_RE.pattern).to_numpy(dtype=bool)
    v = np.full(len(s), np.nan)
    v[ok] = s[ok].to_numpy(dtype=object).astype(np.float64)
    return v


def _each_number(
    obj: np.ndarray, field: Field, where: Where
) -> tuple[np.ndarray, list[str | None]]:
    out = np.empty(len(obj), dtype=np.float64)
    texts: list[str | None] = [None] * len(obj)
    for j, v in enumerate(obj):
        if field.kind == "time" and isinstance(v, bool | np.bool_):
            raise where.error("timestamp is a boolean", j, field.name, field.expected(), _found(v))
        if isinstance(v, str):
            texts[j] = v
            out[j] = float(v) if FLOAT_RE.fullmatch(v) else math.nan
        elif isinstance(v, int | float | np.integer | np.floating | np.bool_ | decimal.Decimal):
            try:
                out[j] = float(v)
            except OverflowError:
                out[j] = math.inf
        else:
            raise where.error("value is not a number", j, field.name, field.expected(), _found(v))
    return out, texts


def _check_numbers(
    v: np.ndarray, field: Field, where: Where, texts: Sequence[str | None] | None = None
) -> None:
    """Raise at the first row that is not a number, not finite or out of the field's range."""
    bad = ~np.isfinite(v)
    w = np.where(bad, 0.0, v)
    if field.kind == "time":
        bad |= np.abs(w) >= TIME_LIMIT
    else:
        if field.low is not None:
            bad |= w < field.low
        if field.high is not None:
            bad |= w > field.high
        bad |= np.abs(w) > np.finfo(np.float32).max
    if not bad.any():
        return
    j = _first(bad)
    text = None if texts is None else texts[j]
    if text is None:
        x = float(v[j])
        text = repr(x) if not x.is_integer() or not math.isfinite(x) else str(int(x))
    try:
        field.parse(text)  # the rule itself says what is wrong
    except FieldProblem as p:
        raise where.error(p.message, j, field.name, field.expected(), p.found) from None
    raise where.error(  # pragma: no cover  (the vectorised test and the rule agree)
        "value is not a number", j, field.name, field.expected(), short(text)
    )


# ------------------------------------------------------------------ timestamps
def time_column(col: pd.Series, name: str, where: Where, *, text: bool) -> np.ndarray:
    """Timestamps as float64 seconds (numbers are kept in their own unit).

    A numeric column is checked as numbers (finite, below 2**63 in
    magnitude). A datetime column (or Python dates) becomes Unix seconds. A
    text column is numbers if its first value is a number, else ISO 8601 dates
    (``2024-05-01``, ``2024-05-01T12:30:00Z``, ``2024-05-01 12:30+02:00``;
    see :data:`~privrec.data.textspec.ISO_DATE_RE`); a value of the other
    kind is refused at its row.
    """
    field = Field(name, "time")
    if not text:
        _nulls(col, name, where, "timestamp", field.expected())
    kind = col.dtype.kind
    if kind == "M" or isinstance(col.dtype, pd.DatetimeTZDtype):
        return _seconds(pd.to_datetime(col, utc=True))
    if kind == "b" and not text:
        raise where.error("timestamps are booleans", 0, name, field.expected(), _found(col.iloc[0]))
    if kind in "iufb":
        return number_column(col, field, where, text=text)
    obj = np.asarray(col.to_numpy(), dtype=object)
    inferred = pd.api.types.infer_dtype(obj, skipna=False)
    if not text and inferred in _DATE_KINDS:
        return _seconds(pd.to_datetime(pd.Series(obj), utc=True))
    if inferred != "string" and not text:
        return number_column(col, field, where, text=False)
    s = pd.Series(obj, dtype=object).astype(str)
    if len(s) == 0 or FLOAT_RE.fullmatch(str(s.iloc[0])):
        return number_column(s, field, where, text=True)
    iso = s.str.fullmatch(ISO_DATE_RE.pattern).to_numpy(dtype=bool)
    t = pd.to_datetime(s.where(iso, ""), utc=True, format="ISO8601", errors="coerce")
    bad = np.asarray(t.isna(), dtype=bool)
    if bad.any():
        j = _first(bad)
        raise where.error(
            "timestamp is not an ISO 8601 date like the first row",
            j,
            name,
            "an ISO 8601 date (e.g. 2024-05-01T12:30:00Z)",
            short(str(s.iloc[j])),
        )
    return _seconds(t)


_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _seconds(t: pd.Series) -> np.ndarray:
    """UTC datetimes to Unix seconds, in their own unit (no overflow for far dates)."""
    arr = t.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    unit, count = np.datetime_data(arr.dtype)
    secs = arr.view(np.int64).astype(np.float64) * (count / _PER_SECOND[unit])
    return np.asarray(secs, dtype=np.float64)
