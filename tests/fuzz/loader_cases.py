"""Loader fuzz inputs: valid-file generators and hostile mutators for every format.

* **generators** write a valid file (or DataFrame) of every format from a
  ``random.Random`` — varied line ends (``\\n``, ``\\r\\n``, lone ``\\r``),
  blank lines, byte-order marks, padding, signs, leading zeros, number
  spellings, quoting, awkward text ids — together with the interactions it
  holds (the round-trip truth, :attr:`Case.truth`);
* **mutators** damage such an input: flipped and inserted bytes, hostile tokens
  (``NA``, ``1e400``, 2**64, a megabyte field, a UTF-16 mark …), extra and
  missing fields, cut or repeated lines, other line ends and encodings; for
  tables, hostile cell values (lists, dicts, NaN, mixed types), renamed or
  repeated columns, damaged Parquet bytes.

``loader_reference.py`` says what a mutated input should give;
``loader_campaign.py`` runs loaders on them and counts the outcomes.
"""

from __future__ import annotations

import codecs
import io
import math
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

F32_MAX = float(np.finfo(np.float32).max)
I64 = (-(2**63), 2**63 - 1)
NASTY_TOKENS = [
    "",
    " ",
    "NA",
    "null",
    "NULL",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "None",
    "1e400",
    "-1",
    "-0",
    "+7",
    "007",
    "1e-400",
    "3.4028235e38",
    "3.5e38",
    "5.0000000000000001",
    str(2**63),
    str(2**63 - 1),
    str(-(2**63) - 1),
    str(2**64),
    str(2**64 - 1),
    "9" * 25,
    "0x10",
    "1_0",
    "3.5.1",
    "1e",
    ".",
    "+",
    "-",
    "e5",
    "1.e5",
    ".e5",
    "True",
    "false",
    "\u0661\u0662",
    "\u00a0",
    "\ufeff",
    "\x00",
    "\x0b1",
    "\x0c",
    "é",
    "a b",
    '"',
    '""',
    '"a,b"',
    '"x',
    "::",
    ":",
    "\t",
    ",",
    "\r",
    "\n",
    "\r\n",
    "2020-01-02",
    "now",
    "today",
    "2020-13-40",
    "1970-01-01T00:00:00Z",
]
NASTY_BYTES = [
    b"\xff",
    b"\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\x00",
    b"\x85",
]
BIG_FIELD = 1_000_000


# ------------------------------------------------------------------ outcome types
@dataclass(frozen=True)
class Ok:
    """What a valid input holds: id lists (as Python scalars) and entries."""

    users: tuple[Any, ...]
    items: tuple[Any, ...]
    entries: dict[tuple[Any, Any], tuple[float, float | None]]
    arrays: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None


@dataclass(frozen=True)
class Err:
    """The reference refuses the input; ``line`` is the first line (or row) that breaks a rule."""

    line: int | None
    why: str = ""


@dataclass
class Case:
    """One input: the format, the file bytes (or a DataFrame) and the loader options."""

    fmt: str
    data: bytes | pd.DataFrame
    kwargs: dict[str, Any] = field(default_factory=dict)
    truth: Ok | None = None  # set by generators: what was written
    mutated: bool = False
    name: str = "input"


# ------------------------------------------------------------------ fixed layouts
@dataclass(frozen=True)
class FixedSpec:
    sep: str
    header: str | None
    fields: tuple[tuple[str, str, float | None, float | None], ...]
    file: str


_TS = ("timestamp", "int", None, None)
FIXED: dict[str, FixedSpec] = {
    "ml-100k": FixedSpec(
        "\t",
        None,
        (
            ("user", "int", None, None),
            ("item", "int", None, None),
            ("rating", "float", 0.0, 5.0),
            _TS,
        ),
        "u.data",
    ),
    "movielens-dat": FixedSpec(
        "::",
        None,
        (
            ("user", "int", None, None),
            ("item", "int", None, None),
            ("rating", "float", 0.0, 5.0),
            _TS,
        ),
        "ratings.dat",
    ),
    "movietweetings": FixedSpec(
        "::",
        None,
        (
            ("user", "int", None, None),
            ("item", "int", None, None),
            ("rating", "float", 0.0, 10.0),
            _TS,
        ),
        "ratings.dat",
    ),
    "movielens-csv": FixedSpec(
        ",",
        "userId,movieId,rating,timestamp",
        (
            ("user", "int", None, None),
            ("item", "int", None, None),
            ("rating", "float", 0.0, 5.0),
            _TS,
        ),
        "ratings.csv",
    ),
    "lastfm": FixedSpec(
        "\t",
        "userID\tartistID\tweight",
        (("user", "int", None, None), ("item", "int", None, None), ("weight", "float", 0.0, None)),
        "user_artists.dat",
    ),
}
TEXT_FORMATS = [*FIXED, "user-item-lists", "csv", "tsv"]
ALL_FORMATS = [*TEXT_FORMATS, "parquet", "dataframe"]


def _eol(rnd: random.Random, style: str) -> str:
    if style == "mixed":
        return rnd.choice(["\n", "\r\n", "\r"])
    return style


def _eol_style(rnd: random.Random) -> str:
    return rnd.choice(["\n", "\n", "\r\n", "\r", "mixed"])


def _int_text(rnd: random.Random, v: int) -> str:
    s = str(v)
    r = rnd.random()
    if r < 0.1 and v >= 0:
        s = "+" + s
    elif r < 0.2 and v >= 0:
        s = "0" * rnd.randint(1, 3) + s
    if rnd.random() < 0.1:
        s = rnd.choice([" ", "\v", "\f"]) + s + rnd.choice(["", " "])
    return s


def _float_text(rnd: random.Random, low: float, high: float | None) -> tuple[str, float]:
    """A number written in one of many spellings, and its value."""
    hi = 5.0 if high is None else high
    r = rnd.random()
    if r < 0.4:
        v = rnd.randint(int(low), int(hi))
        text = rnd.choice([str(v), f"{v}.0", f"{v}.", f"{v}e0", f"{v * 10}e-1"])
        text = f"+{text}" if v >= 0 and rnd.random() < 0.1 else text
    elif r < 0.6:
        v = rnd.randint(int(low * 2), int(hi * 2)) / 2
        text = rnd.choice([repr(v), f"{v:.1f}", f"{v:.3f}"])
        if text.startswith("0.") and rnd.random() < 0.5:
            text = text[1:]
    elif r < 0.8:
        text = f"{rnd.uniform(low, hi):.{rnd.randint(1, 22)}g}"
        v = float(text)
        if v > hi or v < low:
            text, v = str(int(hi)), float(int(hi))
    elif high is None:
        v = float(rnd.choice([0, 1, 10**6, 2**24 + 1, 10**30, 3.4e38]))
        text = rnd.choice([repr(v), str(int(v))]) if v.is_integer() else repr(v)
        v = float(text)
    else:
        text, v = rnd.choice([(str(int(hi)), hi), (str(int(low)), low)])
    if rnd.random() < 0.05:
        text = " " + text
    return text, float(text)


def _pairs(rnd: random.Random, n: int, big: bool) -> list[tuple[int, int]]:
    pool_u = rnd.randint(1, 12)
    pool_i = rnd.randint(1, 20)
    out = []
    for _ in range(n):
        u = rnd.randint(0, pool_u)
        i = rnd.randint(0, pool_i)
        if big and rnd.random() < 0.2:
            u = rnd.choice([I64[1], I64[0], 2**53 + 1, -5, 10**18])
        if big and rnd.random() < 0.2:
            i = rnd.choice([I64[1], I64[0], 2**40, 1])
        out.append((u, i))
    return out


def _expect(
    rows: list[tuple[Any, Any, float, float | None]],
) -> Ok:
    """Interactions semantics: duplicates summed in file order, latest timestamp kept."""
    acc: dict[tuple[Any, Any], tuple[float, float | None]] = {}
    for u, i, v, t in rows:
        if (u, i) in acc:
            pv, pt = acc[(u, i)]
            acc[(u, i)] = (pv + v, None if t is None or pt is None else max(pt, t))
        else:
            acc[(u, i)] = (v, t)
    entries = {
        k: (float(np.float32(v)) if abs(v) <= F32_MAX else math.inf, t) for k, (v, t) in acc.items()
    }
    users = tuple(sorted({u for u, _, _, _ in rows}, key=_sort_key))
    items = tuple(sorted({i for _, i, _, _ in rows}, key=_sort_key))
    return Ok(users, items, entries)


def _sort_key(x: Any) -> tuple[int, Any]:
    return (0, x) if isinstance(x, int | float) else (1, str(x))


def gen_fixed(rnd: random.Random, fmt: str) -> Case:
    spec = FIXED[fmt]
    eol = _eol_style(rnd)
    lines: list[str] = []
    if spec.header is not None:
        lines.append(spec.header)
    rows: list[tuple[Any, Any, float, float | None]] = []
    low, high = spec.fields[2][2] or 0.0, spec.fields[2][3]
    for u, i in _pairs(rnd, rnd.randint(1, 25), big=True):
        vt, v = _float_text(rnd, low, high)
        parts = [_int_text(rnd, u), _int_text(rnd, i), vt]
        t: float | None = None
        if len(spec.fields) == 4:
            ts = rnd.choice([rnd.randint(0, 2**31), rnd.randint(-(2**40), 2**62), I64[1], I64[0]])
            parts.append(_int_text(rnd, ts))
            t = float(ts)
        lines.append(spec.sep.join(parts))
        rows.append((u, i, v, t))
        if rnd.random() < 0.08:
            lines.append(rnd.choice(["", "   ", " " if spec.sep == "\t" else " \t "]))
    text = "".join(line + _eol(rnd, eol) for line in lines)
    if rnd.random() < 0.3:
        text = text.rstrip("\r\n")
    raw = text.encode()
    if rnd.random() < 0.1:
        raw = codecs.BOM_UTF8 + raw
    return Case(fmt, raw, {}, _expect(rows), name=spec.file)


def gen_lists(rnd: random.Random) -> Case:
    eol = _eol_style(rnd)
    users = rnd.sample(range(0, 60), rnd.randint(1, 12))
    if rnd.random() < 0.3:
        users[0] = rnd.choice([I64[1], 10**18, 0])
    lines, pairs = [], []
    for u in users:
        its = [
            rnd.choice([rnd.randint(0, 40), I64[1], 10**17])
            if rnd.random() < 0.05
            else rnd.randint(0, 40)
            for _ in range(rnd.randint(0, 6))
        ]
        toks = [str(u), *map(str, its)]
        if rnd.random() < 0.1:
            toks = [("0" * rnd.randint(1, 2) + t) if len(t) < 17 else t for t in toks]
        seps = [rnd.choice([" ", " ", "\t", "  ", "\v", "\f"]) for _ in toks]
        line = "".join(t + s for t, s in zip(toks, seps, strict=True)).rstrip()
        if rnd.random() < 0.1:
            line = " " + line + " "
        lines.append(line)
        pairs.extend((u, i) for i in its)
        if rnd.random() < 0.1:
            lines.append(rnd.choice(["", "  ", "\t"]))
    text = "".join(line + _eol(rnd, eol) for line in lines)
    raw = text.encode()
    all_users = tuple(sorted(set(users)))
    arrays = (tuple(u for u, _ in pairs), tuple(i for _, i in pairs), all_users)
    truth = Ok(all_users, (), {}, arrays)
    return Case("user-item-lists", raw, {}, truth, name="train.txt")


_ID_WORDS = [
    "a",
    "bob",
    "NA",
    "null",
    "nan",
    "None",
    "N/A",
    "007",
    "+5",
    "-0",
    "00",
    "é",
    "über cool",
    "a,b",
    'q"uote',
    "multi\nline",
    "cr\rid",
    " pad ",
    "\u0661\u0662",
    "x" * 300,
    "#hash",
    "tab\tin",
    "1.5",
    "1e3",
    "TRUE",
]


def _text_id(rnd: random.Random, numeric: bool) -> Any:
    if numeric:
        return rnd.choice([rnd.randint(-50, 200), 0, 10**17, -(10**17)])
    return rnd.choice([*_ID_WORDS, f"u{rnd.randint(0, 30)}", str(rnd.randint(0, 30))])


def _quote(f: str, sep: str, force: bool) -> str:
    if force or any(c in f for c in (sep, '"', "\r", "\n")):
        return '"' + f.replace('"', '""') + '"'
    return f


def _iso(rnd: random.Random, secs: int) -> str:
    d = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=secs)
    style = rnd.randint(0, 3)
    if style == 0:
        return d.strftime("%Y-%m-%d")
    if style == 1:
        return d.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 2:
        return (d + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S+02:00")
    return d.strftime("%Y-%m-%dT%H:%M")


def _iso_secs(secs: int, text: str) -> float:
    if len(text) == 10:
        return float(secs - secs % 86400)
    if len(text) == 16:
        return float(secs - secs % 60)
    return float(secs)


def gen_delimited(rnd: random.Random, fmt: str) -> Case:
    sep = "," if fmt == "csv" else "\t"
    eol = _eol_style(rnd)
    num_u, num_i = rnd.random() < 0.5, rnd.random() < 0.5
    use_v, ts_kind = rnd.random() < 0.7, rnd.choice([None, "num", "iso"])
    allow_neg = rnd.random() < 0.2
    names = ["user", "item"] + (["score"] if use_v else []) + (["when"] if ts_kind else [])
    extra = rnd.sample(["x", "note", "Ünï", "a,b"], rnd.randint(0, 2))
    header = names + extra
    rnd.shuffle(header)
    force = rnd.random() < 0.2
    lines = [sep.join(_quote(h, sep, force) for h in header)]
    rows: list[tuple[Any, Any, float, float | None]] = []
    for _ in range(rnd.randint(1, 20)):
        u, i = _text_id(rnd, num_u), _text_id(rnd, num_i)
        rec: dict[str, str] = {"user": str(u), "item": str(i)}
        v = 1.0
        if use_v:
            vt, v = _float_text(rnd, -5.0 if allow_neg else 0.0, 10.0)
            rec["score"] = vt
        t: float | None = None
        if ts_kind == "num":
            tv = rnd.choice([rnd.randint(0, 2**31), rnd.uniform(-1e9, 1e12)])
            rec["when"] = repr(tv) if isinstance(tv, float) else str(tv)
            t = float(rec["when"])
        elif ts_kind == "iso":
            secs = rnd.randint(0, 2_000_000_000)
            rec["when"] = _iso(rnd, secs)
            t = _iso_secs(secs, rec["when"])
        for x in extra:
            rec[x] = rnd.choice(["", "1", "zz", "q,q", '"'])
        lines.append(sep.join(_quote(rec[h], sep, force) for h in header))
        rows.append((u, i, v, t))
        if rnd.random() < 0.08:
            lines.append(rnd.choice(["", "  ", " " if sep == "\t" else " \t"]))
    text = "".join(line + _eol(rnd, eol) for line in lines)
    if rnd.random() < 0.3:
        text = text.rstrip("\r\n")
    raw = text.encode()
    if rnd.random() < 0.1:
        raw = codecs.BOM_UTF8 + raw
    kwargs: dict[str, Any] = {"user_col": "user", "item_col": "item"}
    if use_v:
        kwargs["value_col"] = "score"
    if ts_kind:
        kwargs["timestamp_col"] = "when"
    if allow_neg:
        kwargs["allow_negative"] = True
    # Text ids become ints only if every id of the column is a canonical integer.
    canon = re.compile(r"0|-?[1-9][0-9]{0,17}")
    conv = [all(canon.fullmatch(str(r[k])) for r in rows) for k in (0, 1)]
    rows = [
        (int(u) if conv[0] else str(u), int(i) if conv[1] else str(i), v, t) for u, i, v, t in rows
    ]
    return Case(fmt, raw, kwargs, _expect(rows), name=f"data.{fmt}")


def gen_frame(rnd: random.Random) -> tuple[pd.DataFrame, dict[str, Any], Ok]:
    """A typed table (for DataFrame and Parquet) and what it holds."""
    n = rnd.randint(1, 20)
    kinds = rnd.choice(["int", "str", "uint", "float", "cat", "objint"])
    ikind = rnd.choice(["int", "str", "objint"])
    rows = []
    for _ in range(n):
        rows.append((rnd.randint(0, 15), rnd.randint(0, 25)))

    def ids(vals: list[int], kind: str) -> tuple[pd.Series, list[Any]]:
        if kind == "str":
            py = [f"id{v}" if v % 3 else str(v) for v in vals]
            return pd.Series(py, dtype=object if rnd.random() < 0.5 else "str"), py
        if kind == "uint":
            return pd.Series(np.asarray(vals, dtype=np.uint64)), vals
        if kind == "float":
            py_f = [v + 0.5 for v in vals]
            return pd.Series(py_f, dtype=np.float64), py_f
        if kind == "cat":
            py = [f"c{v}" for v in vals]
            return pd.Series(py, dtype="category"), py
        if kind == "objint":
            return pd.Series(vals, dtype=object), vals
        return pd.Series(np.asarray(vals, dtype=np.int64)), vals

    us, upy = ids([u for u, _ in rows], kinds)
    its, ipy = ids([i for _, i in rows], ikind)
    df = pd.DataFrame({"u": us, "i": its})
    kwargs: dict[str, Any] = {"user_col": "u", "item_col": "i"}
    vals = [1.0] * n
    vkind = rnd.choice([None, "float", "int", "bool", "decimal", "objfloat"])
    if vkind is not None:
        if vkind == "float":
            vals = [rnd.choice([0.5, 1.0, 3.25, 1e-3, 7.0]) for _ in range(n)]
            df["v"] = np.asarray(vals, dtype=np.float64)
        elif vkind == "int":
            ivals = [rnd.randint(0, 100) for _ in range(n)]
            df["v"] = np.asarray(ivals, dtype=np.int64)
            vals = [float(x) for x in ivals]
        elif vkind == "bool":
            bvals = [rnd.random() < 0.5 for _ in range(n)]
            df["v"] = np.asarray(bvals, dtype=bool)
            vals = [float(b) for b in bvals]
        elif vkind == "decimal":
            dvals = [Decimal(rnd.randint(0, 50)) / 4 for _ in range(n)]
            df["v"] = pd.Series(dvals, dtype=object)
            vals = [float(d) for d in dvals]
        else:
            vals = [float(rnd.randint(0, 9)) for _ in range(n)]
            df["v"] = pd.Series(vals, dtype=object)
        kwargs["value_col"] = "v"
    times: list[float | None] = [None] * n
    tkind = rnd.choice([None, "int", "float", "dt", "dttz"])
    if tkind is not None:
        secs = [rnd.randint(0, 2_000_000_000) for _ in range(n)]
        if tkind == "int":
            df["t"] = np.asarray(secs, dtype=np.int64)
        elif tkind == "float":
            df["t"] = np.asarray(secs, dtype=np.float64) + 0.5
            secs = [s + 0.5 for s in secs]  # type: ignore[misc]
        elif tkind == "dt":
            df["t"] = pd.to_datetime(np.asarray(secs, dtype=np.int64), unit="s")
        else:
            df["t"] = pd.to_datetime(np.asarray(secs, dtype=np.int64), unit="s", utc=True)
        times = [float(s) for s in secs]
        kwargs["timestamp_col"] = "t"
    truth = _expect([(u, i, v, t) for u, i, v, t in zip(upy, ipy, vals, times, strict=True)])
    return df, kwargs, truth


def gen_dataframe(rnd: random.Random) -> Case:
    df, kwargs, truth = gen_frame(rnd)
    return Case("dataframe", df, kwargs, truth, name="frame")


def gen_parquet(rnd: random.Random) -> Case:
    df, kwargs, truth = gen_frame(rnd)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return Case("parquet", buf.getvalue(), kwargs, truth, name="data.parquet")


def generate(rnd: random.Random, fmt: str) -> Case:
    """A valid input of ``fmt`` with its truth."""
    if fmt in FIXED:
        return gen_fixed(rnd, fmt)
    if fmt == "user-item-lists":
        return gen_lists(rnd)
    if fmt in ("csv", "tsv"):
        return gen_delimited(rnd, fmt)
    if fmt == "parquet":
        return gen_parquet(rnd)
    return gen_dataframe(rnd)


# ------------------------------------------------------------------ mutators
def _token(rnd: random.Random) -> bytes:
    r = rnd.random()
    if r < 0.01:
        return b"7" * BIG_FIELD if rnd.random() < 0.5 else b"a" * BIG_FIELD
    if r < 0.15:
        return rnd.choice(NASTY_BYTES)
    if r < 0.2:
        return bytes([rnd.randrange(256)])
    return rnd.choice(NASTY_TOKENS).encode()


def _mutate_bytes(rnd: random.Random, raw: bytes, sep: str) -> bytes:
    n = len(raw)
    pos = rnd.randrange(n + 1)
    op = rnd.randrange(11)
    if op == 0 and n:  # replace one byte
        return raw[:pos] + _token(rnd)[:1] + raw[pos + 1 :]
    if op == 1:  # insert a hostile token
        return raw[:pos] + _token(rnd) + raw[pos:]
    if op == 2 and n:  # delete a span
        return raw[:pos] + raw[pos + rnd.randint(1, 8) :]
    if op == 3:  # cut the file
        return raw[:pos]
    lines = re.split(rb"(\r\n|\r|\n)", raw)
    body = lines[0::2]
    ends = [*lines[1::2], b""]
    k = rnd.randrange(len(body))
    parts = body[k].split(sep.encode())
    if op == 4:  # replace a field
        parts[rnd.randrange(len(parts))] = _token(rnd)
    elif op == 5:  # extra field
        parts.append(rnd.choice([b"", b"9", _token(rnd)]))
    elif op == 6 and len(parts) > 1:  # drop a field
        parts.pop(rnd.randrange(len(parts)))
    elif op == 7:  # duplicate or drop a line
        if rnd.random() < 0.5:
            body.insert(k, body[k])
            ends.insert(k, b"\n")
        else:
            body.pop(k)
            ends.pop(k)
        return b"".join(b + e for b, e in zip(body, ends, strict=False))
    elif op == 8:  # all line ends become one style
        style = rnd.choice([b"\r", b"\n", b"\r\n"])
        return b"".join(b + (style if e else b"") for b, e in zip(body, ends, strict=True))
    elif op == 9:  # another encoding
        try:
            return raw.decode("utf-8").encode(rnd.choice(["utf-16", "utf-32", "latin-1"]))
        except (UnicodeDecodeError, UnicodeEncodeError):
            return codecs.BOM_UTF16_LE + raw
    else:  # a number in an odd spelling
        parts[rnd.randrange(len(parts))] = rnd.choice(
            [b"1.0", b"1e3", b" 4 ", b"+0", b"-0.0", b"00000000000000000000001", b"4.", b".4"]
        )
    body[k] = sep.encode().join(parts)
    return b"".join(b + e for b, e in zip(body, ends, strict=True))


_HOSTILE_VALUES: list[Any] = [
    None,
    np.nan,
    [1],
    {"a": 1},
    (1, 2),
    b"bytes",
    True,
    "NA",
    "",
    "x",
    math.inf,
    -math.inf,
    2**70,
    -1,
    "1e400",
    Decimal("1e400"),
    3.5e38,
    "2020-01-02",
    pd.NaT,
    np.int64(5),
    "007",
    1.5,
]


def _mutate_frame(rnd: random.Random, case: Case) -> pd.DataFrame:
    df = case.data
    assert isinstance(df, pd.DataFrame)
    df = df.copy()
    op = rnd.randrange(6)
    col = rnd.choice(list(df.columns))
    if op <= 2:  # one hostile value
        s = df[col].astype(object)
        s.iloc[rnd.randrange(len(s))] = rnd.choice(_HOSTILE_VALUES)
        df[col] = s
    elif op == 3:  # a whole column of one hostile kind
        v = rnd.choice(_HOSTILE_VALUES)
        df[col] = pd.Series([v] * len(df), dtype=object)
    elif op == 4:  # a column renamed away or duplicated
        if rnd.random() < 0.5:
            df = df.rename(columns={col: col + "_"})
        else:
            df = pd.concat([df, df[[col]]], axis=1)
    else:  # a list column (Parquet: list<int64>)
        df[col] = pd.Series([[i] for i in range(len(df))], dtype=object)
    return df


def mutate(rnd: random.Random, case: Case) -> Case:
    """The same input with 1 to 3 hostile changes."""
    if case.fmt == "dataframe":
        df = _mutate_frame(rnd, case)
        return Case(case.fmt, df, case.kwargs, None, True, case.name)
    if case.fmt == "parquet":
        raw = case.data
        assert isinstance(raw, bytes)
        if rnd.random() < 0.5:
            frame = pd.read_parquet(io.BytesIO(raw))
            df = _mutate_frame(rnd, Case("dataframe", frame, case.kwargs))
            buf = io.BytesIO()
            try:
                df.to_parquet(buf, index=False)
            except Exception:  # pyarrow cannot store this mix: damage bytes instead
                pass
            else:
                return Case(case.fmt, buf.getvalue(), case.kwargs, None, True, case.name)
        for _ in range(rnd.randint(1, 3)):
            pos = rnd.randrange(len(raw))
            raw = raw[:pos] + bytes([rnd.randrange(256)]) + raw[pos + 1 :]
        return Case(case.fmt, raw, case.kwargs, None, True, case.name)
    raw = case.data
    assert isinstance(raw, bytes)
    sep = _sep(case)
    for _ in range(rnd.randint(1, 3)):
        raw = _mutate_bytes(rnd, raw, sep)
    return Case(case.fmt, raw, case.kwargs, None, True, case.name)


def _sep(case: Case) -> str:
    if case.fmt in FIXED:
        return FIXED[case.fmt].sep
    return {"csv": ",", "tsv": "\t"}.get(case.fmt, " ")
