"""A reference parser for every loader format, written from the formats' rules only.

It shares no code with privrec: from an input's bytes (or DataFrame) it says
what interactions the input holds (:class:`Ok`) or the first line — or row —
that breaks a rule (:class:`Err`), in the order a reader meets the lines. The
rules are those documented in ``privrec.data.textspec``, ``columns``,
``tables`` and ``loaders``: UTF-8 (one UTF-8 byte-order mark allowed),
``\\n``/``\\r\\n``/``\\r`` line ends, blank lines skipped, exact field counts,
int64 integers, finite decimal numbers in range and within float32, literal
text ids (canonical integers become ints), ISO 8601 dates, Python's ``csv``
quoting, typed table cells of one scalar kind per id column.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from .loader_cases import F32_MAX, FIXED, I64, Case, Err, FixedSpec, Ok, _expect, _sep

__all__ = ["reference"]

_WS = r"[ \t\v\f]*"
_INT = re.compile(rf"{_WS}[+-]?[0-9]+{_WS}")
_NUM = re.compile(rf"{_WS}[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?{_WS}")
_ISO = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
)
_BAD_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
MAX_ID = 65_536


class _Refuse(Exception):  # noqa: N818
    def __init__(self, line: int | None, why: str) -> None:
        super().__init__(why)
        self.line, self.why = line, why


def _lines(raw: bytes) -> list[bytes]:
    if raw.startswith(_BAD_BOMS):
        raise _Refuse(1, "utf-16/32")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[3:]
    out = re.split(rb"\r\n|\r|\n", raw)
    if out[-1] == b"":
        out.pop()
    return out


def _dec(b: bytes, line: int) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refuse(line, "utf-8") from None


def _blank(text: str, sep: str) -> bool:
    allowed = set(" \t") - set(sep)
    return all(c in allowed for c in text)


def _int(text: str, line: int) -> int:
    if not _INT.fullmatch(text):
        raise _Refuse(line, "int syntax")
    digits = text.strip(" \t\v\f").lstrip("+-").lstrip("0")
    if len(digits) > 19 or not I64[0] <= int(text.strip(" \t\v\f")) <= I64[1]:
        raise _Refuse(line, "int range")
    return int(text.strip(" \t\v\f"))


def _num(text: str, line: int, low: float | None, high: float | None) -> float:
    if not _NUM.fullmatch(text):
        raise _Refuse(line, "number syntax")
    x = float(text)
    if not math.isfinite(x) or (low is not None and x < low) or (high is not None and x > high):
        raise _Refuse(line, "number range")
    if abs(x) > F32_MAX:
        raise _Refuse(line, "float32")
    return x


def _ref_fixed(raw: bytes, spec: FixedSpec) -> Ok:
    lines = _lines(raw)
    n = len(spec.fields)
    start = 0
    if spec.header is not None:
        if not lines:
            raise _Refuse(1, "empty")
        head = _dec(lines[0], 1)
        parts = head.split(spec.sep)
        if _blank(head, spec.sep) or _INT.fullmatch(parts[0]) or len(parts) != n:
            raise _Refuse(1, "header")
        start = 1
    rows = []
    for k in range(start, len(lines)):
        text = _dec(lines[k], k + 1)
        if _blank(text, spec.sep):
            continue
        parts = text.split(spec.sep)
        if len(parts) != n:
            raise _Refuse(k + 1, "field count")
        vals = []
        for (_, kind, low, high), p in zip(spec.fields, parts, strict=True):
            vals.append(_int(p, k + 1) if kind == "int" else _num(p, k + 1, low, high))
        rows.append((vals[0], vals[1], vals[2], float(vals[3]) if n == 4 else None))
    if not rows:
        raise _Refuse(2 if spec.header else 1, "no rows")
    return _sum_ok(rows)


def _sum_ok(rows: list[tuple[Any, Any, float, float | None]]) -> Ok:
    ok = _expect(rows)
    if any(not math.isfinite(v) or abs(v) > F32_MAX for v, _ in _raw_sums(rows).values()):
        raise _Refuse(None, "float32 sum")
    return ok


def _raw_sums(rows: list[tuple[Any, Any, float, float | None]]) -> dict[Any, tuple[float, Any]]:
    acc: dict[Any, tuple[float, Any]] = {}
    for u, i, v, t in rows:
        acc[(u, i)] = (acc.get((u, i), (0.0, None))[0] + v, t)
    return acc


def _ref_lists(raw: bytes) -> Ok:
    lines = _lines(raw)
    users: list[int] = []
    items: list[int] = []
    line_users: list[int] = []
    for k, b in enumerate(lines):
        toks = re.split(rb"[ \t\x0b\x0c]+", b.strip(b" \t\x0b\x0c"))
        if toks == [b""]:
            continue
        vals = []
        for t in toks:
            if not re.fullmatch(rb"[0-9]+", t):
                _dec(t, k + 1)
                raise _Refuse(k + 1, "not digits")
            if len(t) > 19 or int(t) > I64[1]:
                raise _Refuse(k + 1, "id range")
            vals.append(int(t))
        line_users.append(vals[0])
        users.extend([vals[0]] * (len(vals) - 1))
        items.extend(vals[1:])
    if not line_users:
        raise _Refuse(1, "no rows")
    all_users = tuple(sorted(set(line_users)))
    return Ok(all_users, (), {}, (tuple(users), tuple(items), all_users))


def _records(raw: bytes, sep: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records with their first line, by Python's csv module on the whole text."""
    lines = _lines(raw)
    texts = [b.decode("utf-8", errors="surrogateescape") for b in lines]
    body = raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw
    text = body.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text + "\n\x00eof\x00\n", newline=""), delimiter=sep)
    checked = 0
    while True:
        first = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        for k in range(checked, min(reader.line_num, len(texts))):
            _dec(lines[k], k + 1)  # lines are decoded in the order a reader meets them
        checked = max(checked, min(reader.line_num, len(texts)))
        if first > len(texts):
            return
        if reader.line_num > len(texts):
            raise _Refuse(first, "open quote")
        if not row or (reader.line_num == first and _blank(texts[first - 1], sep)):
            continue
        yield first, row


def _ref_delimited(raw: bytes, sep: str, kw: dict[str, Any]) -> Ok:
    csv.field_size_limit(max(csv.field_size_limit(), len(raw) + 1))
    recs = _records(raw, sep)
    first = next(recs, None)
    if first is None:
        raise _Refuse(1, "empty")
    hline, header = first
    cols = [kw.get(k) for k in ("user_col", "item_col", "value_col", "timestamp_col")]
    for c in cols:
        if c is not None and header.count(c) != 1:
            raise _Refuse(hline, "column")
    body = []
    for line, row in recs:
        if len(row) != len(header):
            raise _Refuse(line, "field count")
        body.append((line, row))
    if not body:
        raise _Refuse(hline + 1, "no rows")
    get = {c: [row[header.index(c)] for _, row in body] for c in cols if c is not None}
    lines = [line for line, _ in body]
    ids = []
    for c in cols[:2]:
        vals = get[c]  # type: ignore[index]
        for j, v in enumerate(vals):
            if v == "" or len(v) > MAX_ID:
                raise _Refuse(lines[j], "id")
        canon = all(re.fullmatch(r"0|-?[1-9][0-9]{0,17}", v) for v in vals)
        ids.append([int(v) for v in vals] if canon else vals)
    values = [1.0] * len(body)
    if cols[2] is not None:
        low = None if kw.get("allow_negative") else 0.0
        values = [_num(v, lines[j], low, None) for j, v in enumerate(get[cols[2]])]
    times: list[float | None] = [None] * len(body)
    if cols[3] is not None:
        tv = get[cols[3]]
        if _NUM.fullmatch(tv[0]):
            times = []
            for j, v in enumerate(tv):
                x = _num(v, lines[j], None, None) if _NUM.fullmatch(v) else math.nan
                if not math.isfinite(x) or abs(x) >= 2.0**63:
                    raise _Refuse(lines[j], "time")
                times.append(x)
        else:
            times = []
            for j, v in enumerate(tv):
                t = pd.to_datetime(v, utc=True, format="ISO8601", errors="coerce")
                if not _ISO.fullmatch(v) or pd.isna(t):
                    raise _Refuse(lines[j], "date")
                times.append(_secs(t))
    return _sum_ok(list(zip(ids[0], ids[1], values, times, strict=True)))


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _ref_typed(df: pd.DataFrame, kw: dict[str, Any]) -> Ok:
    """DataFrame and Parquet: rules on Python values (rows are 1-based ``line``)."""
    cols = [kw.get(k) for k in ("user_col", "item_col", "value_col", "timestamp_col")]
    for c in cols:
        if c is not None and list(df.columns).count(c) != 1:
            raise _Refuse(None, "column")
    n = len(df)
    ids = []
    for c in cols[:2]:
        vals = [_py(v) for v in df[c].astype(object).tolist()]
        for j, v in enumerate(vals):
            if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
                raise _Refuse(j + 1, "null id")
        kinds = []
        for j, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, int | float | str):
                raise _Refuse(j + 1, "id type")
            kinds.append(type(v).__name__)
            if kinds[-1] != kinds[0]:
                raise _Refuse(j + 1, "ids mix kinds")
        for j, v in enumerate(vals):
            if isinstance(v, float) and not math.isfinite(v):
                raise _Refuse(j + 1, "id inf")
            if isinstance(v, str) and (v == "" or len(v) > MAX_ID):
                raise _Refuse(j + 1, "id text")
        ids.append(vals)
    values = [1.0] * n
    if cols[2] is not None:
        values = []
        raw_vals = [_py(v) for v in df[cols[2]].astype(object).tolist()]
        for j, v in enumerate(raw_vals):
            if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
                raise _Refuse(j + 1, "null value")
        low = None if kw.get("allow_negative") else 0.0
        for j, v in enumerate(raw_vals):
            if isinstance(v, str):
                x = _num(v, j + 1, low, None)
            elif isinstance(v, bool | int | float | Decimal):
                try:
                    x = float(v)
                except OverflowError:
                    x = math.inf
                if not math.isfinite(x) or (low is not None and x < low) or abs(x) > F32_MAX:
                    raise _Refuse(j + 1, "value range")
            else:
                raise _Refuse(j + 1, "value type")
            values.append(x)
    times: list[float | None] = [None] * n
    if cols[3] is not None:
        times = _ref_times(df[cols[3]])
    return _sum_ok(list(zip(ids[0], ids[1], values, times, strict=True)))


def _secs(t: Any) -> float:
    ts = pd.Timestamp(t)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    d = ts.to_datetime64()
    unit, count = np.datetime_data(d.dtype)
    scale = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    return int(d.view(np.int64)) * count / scale


def _ref_times(col: pd.Series) -> list[float | None]:
    na = col.isna().to_numpy()
    if na.any():
        raise _Refuse(int(np.flatnonzero(na)[0]) + 1, "null time")
    vals = [_py(x) for x in col.astype(object).tolist()]
    if col.dtype.kind == "M" or (
        vals and all(isinstance(v, datetime | pd.Timestamp) for v in vals)
    ):
        return [_secs(v) for v in vals]
    out: list[float | None] = []
    if vals and all(isinstance(v, str) for v in vals) and not _NUM.fullmatch(vals[0]):
        for j, v in enumerate(vals):
            t = pd.to_datetime(v, utc=True, format="ISO8601", errors="coerce")
            if not _ISO.fullmatch(v) or pd.isna(t):
                raise _Refuse(j + 1, "date")
            out.append(_secs(t))
        return out
    for j, v in enumerate(vals):
        if isinstance(v, str):
            x = float(v) if _NUM.fullmatch(v) else math.nan
        elif isinstance(v, bool):
            raise _Refuse(j + 1, "boolean time")
        elif isinstance(v, int | float | Decimal):
            try:
                x = float(v)
            except OverflowError:
                x = math.inf
        else:
            raise _Refuse(j + 1, "time type")
        out.append(x)
    for j, x in enumerate(out):
        assert x is not None
        if not math.isfinite(x) or abs(x) >= 2.0**63:
            raise _Refuse(j + 1, "time range")
    return out


def reference(case: Case) -> Ok | Err:
    """What the format's rules say about ``case``: its content, or the first line it breaks."""
    try:
        if case.fmt in FIXED:
            assert isinstance(case.data, bytes)
            return _ref_fixed(case.data, FIXED[case.fmt])
        if case.fmt == "user-item-lists":
            assert isinstance(case.data, bytes)
            return _ref_lists(case.data)
        if case.fmt in ("csv", "tsv"):
            assert isinstance(case.data, bytes)
            return _ref_delimited(case.data, _sep(case), case.kwargs)
        if case.fmt == "parquet":
            assert isinstance(case.data, bytes)
            try:
                import pyarrow.parquet as pq

                table = pq.read_table(io.BytesIO(case.data))
                table.validate(full=True)  # e.g. invalid UTF-8 in a string column
                df = table.to_pandas()
            except Exception:
                return Err(None, "unreadable parquet")
            return _ref_typed(df, case.kwargs)
        assert isinstance(case.data, pd.DataFrame)
        return _ref_typed(case.data, case.kwargs)
    except _Refuse as r:
        return Err(r.line, r.why)
