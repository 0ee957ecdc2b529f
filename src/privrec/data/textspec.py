"""The rules a text interaction file must follow, written once for every loader.

Each loader reads a good file fast (pandas' C reader, vectorised checks) and,
only when that fast check fails, parses the file again with the *exact* rules
below, line by line, to name the first offending line, field, expected and
found value. The exact parser is the specification: the fast path may only
accept a file the exact parser would accept, with the same values (the fuzz
tests in ``tests/fuzz`` hold both to that), and when the fast path refuses a
file the exact parser accepts, the exact result is used.

The rules, shared by every text format:

* **Encoding** — UTF-8. One UTF-8 byte-order mark at the start is ignored; a
  UTF-16 or UTF-32 byte-order mark, or any byte sequence that is not UTF-8,
  is refused with the line (and field) where it occurs.
* **Lines** end with ``\\n``, ``\\r\\n`` or a lone ``\\r`` (old Mac files),
  mixed freely; lines are numbered from 1 as an editor shows them. A line
  that is empty or holds only spaces and tabs (other than the separator) is
  blank and skipped.
* **Integers** (ids of the fixed formats, Unix timestamps) are ASCII digits
  with an optional sign and surrounding spaces/tabs, in int64 range.
* **Numbers** (ratings, counts, weights) are decimal literals
  (``3``, ``3.5``, ``.5``, ``1e3``), finite, inside the format's range and
  small enough to be stored as float32 without becoming infinite.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from privrec.errors import DataError

__all__ = [
    "FLOAT32_MAX",
    "FLOAT_RE",
    "INT64_MAX",
    "INT64_MIN",
    "INT_RE",
    "ISO_DATE_RE",
    "MAX_ID_CHARS",
    "TIME_LIMIT",
    "Field",
    "FieldProblem",
    "blank",
    "check_path",
    "column_name",
    "decode_line",
    "exact_fixed",
    "first_line",
    "iter_lines",
    "no_rows",
    "read_bytes",
    "short",
    "split_lines",
]

_WS = r"[ \t\v\f]*"
#: An integer field (``fullmatch``): what pandas' C reader parses as an integer.
INT_RE = re.compile(rf"{_WS}[+-]?[0-9]+{_WS}")
#: A decimal number field (``fullmatch``); ``float()`` reads every match exactly.
FLOAT_RE = re.compile(rf"{_WS}[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?{_WS}")
#: An ISO 8601 date or date-time (``fullmatch``): ``YYYY-MM-DD[(T| )HH:MM[:SS[.f]]][Z|±HH[:MM]]``.
#: Written out so that words pandas would read as dates (``now``, ``today``) are refused.
ISO_DATE_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?"
)
_SPECIAL_RE = re.compile(rf"{_WS}[+-]?(?:nan|inf|infinity){_WS}", re.IGNORECASE)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Largest value a float32 weight can hold; anything bigger would be stored as infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Timestamps must be below 2**63 in magnitude: room for Unix time in s, ms, µs or ns.
TIME_LIMIT = 2.0**63
#: Longest text id accepted (a 64 KiB URL is already absurd; a megabyte field is garbage).
MAX_ID_CHARS = 65_536

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32 LE"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "UTF-32 BE"),
    (codecs.BOM_UTF16_LE, "UTF-16 LE"),
    (codecs.BOM_UTF16_BE, "UTF-16 BE"),
)
_EOL = re.compile(rb"\r\n|\r|\n")


class FieldProblem(Exception):  # noqa: N818  (internal signal, always turned into DataError)
    """A field breaks its rule; the caller adds file, line and field and raises ``DataError``."""

    def __init__(self, message: str, found: str) -> None:
        super().__init__(message)
        self.message = message
        self.found = found


def short(text: str, limit: int = 80) -> str:
    """``text`` cut for an error message (a megabyte field must not become a megabyte message)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


@dataclass(frozen=True)
class Field:
    """One column of a text file and the rule its value must follow.

    ``kind`` is ``"int"`` (an int64 integer), ``"float"`` (a finite number in
    ``[low, high]`` that fits a float32) or ``"time"`` (a finite number below
    2**63 in magnitude).
    """

    name: str
    kind: Literal["int", "float", "time"]
    low: float | None = None
    high: float | None = None

    def expected(self) -> str:
        if self.kind == "int":
            return "an integer in int64 range"
        if self.kind == "time":
            return "a Unix time (a finite number below 2**63 in magnitude)"
        if self.low is not None and self.high is not None:
            return f"a number in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"a number >= {self.low:g}"
        return "a finite number"

    def parse(self, text: str) -> int | float:
        """The value of ``text``, or :class:`FieldProblem` saying why it breaks the rule."""
        if self.kind == "int":
            return parse_int(text)
        x = parse_number(text)
        if self.kind == "time":
            if abs(x) >= TIME_LIMIT:
                raise FieldProblem("timestamp out of range", short(text))
            return x
        return self.check_range(x, text)

    def check_range(self, x: float, text: str) -> float:
        """Bounds of a ``"float"`` field on an already finite value."""
        if self.low is not None and x < self.low:
            what = "negative value" if self.low == 0 else "value below the allowed range"
            raise FieldProblem(what, short(text))
        if self.high is not None and x > self.high:
            raise FieldProblem("value above the allowed range", short(text))
        if abs(x) > FLOAT32_MAX:
            raise FieldProblem("value too large to store as float32", short(text))
        return x


def parse_int(text: str) -> int:
    """An int64 integer field (digits never reach ``int()`` beyond 19, so no slow huge ints)."""
    if not INT_RE.fullmatch(text):
        raise FieldProblem("not an integer", short(text))
    core = text.strip(" \t\v\f")
    if len(core.lstrip("+-").lstrip("0")) > 19:
        raise FieldProblem("integer out of range", short(text))
    value = int(core)
    if not INT64_MIN <= value <= INT64_MAX:
        raise FieldProblem("integer out of range", short(text))
    return value


def parse_number(text: str) -> float:
    """A finite decimal number field."""
    if _SPECIAL_RE.fullmatch(text):
        raise FieldProblem("value is not finite", short(text))
    if not FLOAT_RE.fullmatch(text):
        raise FieldProblem("value is not a number", short(text))
    x = float(text)
    if not math.isfinite(x):
        raise FieldProblem("value is not finite", short(text))
    return x


# ------------------------------------------------------------------ files and lines
def check_path(path: str | Path) -> Path:
    """An existing regular file (a folder, a FIFO or a device is refused before any read)."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", file=p, expected="an existing file", found="no such file")
    if p.is_dir():
        raise DataError("path is a folder, not a file", file=p, expected="a file", found="folder")
    if not p.is_file():
        raise DataError(
            "not a regular file", file=p, expected="a regular file", found="device, socket or FIFO"
        )
    return p


def read_bytes(path: Path) -> bytes:
    """The file's bytes; a UTF-16/32 file is refused here, a UTF-8 byte-order mark kept."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            "cannot read file", file=path, expected="a readable file", found=exc.strerror
        ) from None
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise DataError(
                f"file is {name.split()[0]} text",
                file=path,
                line=1,
                expected="UTF-8 text",
                found=f"{name} byte-order mark",
            )
    return raw


def split_lines(raw: bytes) -> list[bytes]:
    """Lines without their ends (``\\n``, ``\\r\\n`` or ``\\r``); index ``k`` is line ``k + 1``.

    A UTF-8 byte-order mark at the very start is dropped. Splitting bytes is
    safe: no UTF-8 multi-byte sequence contains a ``\\r`` or ``\\n`` byte.
    """
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    lines = _EOL.split(raw)
    if lines and lines[-1] == b"":
        lines.pop()  # the file ends with a line break
    return lines


def iter_lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """``(line number, line without its end)``, lazily (a header search stops early)."""
    body = raw[len(codecs.BOM_UTF8) :] if raw.startswith(codecs.BOM_UTF8) else raw
    pos = 0
    lineno = 0
    for m in _EOL.finditer(body):
        lineno += 1
        yield lineno, body[pos : m.start()]
        pos = m.end()
    if pos < len(body):
        yield lineno + 1, body[pos:]


def first_line(raw: bytes) -> bytes:
    """Line 1 without its end (and without a UTF-8 byte-order mark), found without splitting all."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    m = _EOL.search(raw)
    return raw if m is None else raw[: m.start()]


def line_ends(
    raw: bytes, path: Path, sep: str, names: Sequence[str] = ()
) -> Iterator[tuple[int, str]]:
    """``(line number, decoded line with its end)`` for the CSV reader, which needs the ends.

    ``names`` (the header, once known) names the field of a bad byte; a line
    with a quote before it gets no field name, as quoting may shift columns.
    """
    body = raw[len(codecs.BOM_UTF8) :] if raw.startswith(codecs.BOM_UTF8) else raw
    pos = 0
    lineno = 0
    for m in _EOL.finditer(body):
        lineno += 1
        line = body[pos : m.start()]
        yield lineno, decode_line(line, lineno, path, sep, names) + m.group().decode("ascii")
        pos = m.end()
    if pos < len(body):
        yield lineno + 1, decode_line(body[pos:], lineno + 1, path, sep, names)


def column_name(k: int, names: Sequence[str]) -> str:
    """Name of 0-based column ``k``: its header name, or ``"column k+1"`` (also for a blank name)."""
    return names[k] if k < len(names) and names[k] else f"column {k + 1}"


def decode_line(
    line: bytes, lineno: int, path: Path, sep: str | None = None, names: Sequence[str] = ()
) -> str:
    """Decode one line as UTF-8, naming the field that holds a bad byte when ``sep`` is known."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        field = None
        if sep is not None and b'"' not in line[: exc.start]:
            field = column_name(line[: exc.start].count(sep.encode()), names)
        raise _not_utf8(exc, line, lineno, path, field) from None


def _not_utf8(
    exc: UnicodeDecodeError, line: bytes, lineno: int, path: Path | None, field: str | None
) -> DataError:
    bad = line[exc.start : max(exc.end, exc.start + 1)]
    return DataError(
        "text is not valid UTF-8",
        file=path,
        line=lineno,
        field=field,
        expected="UTF-8 text",
        found=f"byte{'s' if len(bad) > 1 else ''} {bad.hex(' ')}",
    )


def blank(line: str, sep: str) -> bool:
    """Empty, or only spaces and tabs that are not the separator (pandas skips these too)."""
    return line.strip(" \t".replace(sep, "") if len(sep) == 1 else " \t") == ""


def no_rows(path: Path, line: int, *, header: bool) -> DataError:
    """The file has no data row (``line``: where the first one should have been)."""
    return DataError(
        "no data rows",
        file=path,
        line=line,
        field="rows",
        expected="at least one interaction",
        found="only a header" if header else "empty file",
    )


def field_error(problem: FieldProblem, path: Path, line: int, field: Field) -> DataError:
    return DataError(
        problem.message,
        file=path,
        line=line,
        field=field.name,
        expected=field.expected(),
        found=problem.found,
    )


def exact_fixed(
    path: Path,
    raw: bytes,
    fields: Sequence[Field],
    sep: str,
    *,
    header: bool,
) -> dict[str, np.ndarray]:
    """Parse a fixed-layout file by the rules, raising at the first line that breaks one.

    ``header``: line 1 is a header (already checked by the caller) and skipped.
    Returns the columns (int64 for ``"int"`` fields, float64 otherwise).
    """
    n = len(fields)
    names = [f.name for f in fields]
    sep_name = repr(sep)
    cols: list[list[int | float]] = [[] for _ in fields]
    lines = split_lines(raw)
    for k, b in enumerate(lines):
        lineno = k + 1
        if header and lineno == 1:
            continue
        text = decode_line(b, lineno, path, sep, names)
        if blank(text, sep):
            continue
        parts = text.split(sep)
        if len(parts) != n:
            few = len(parts) < n
            raise DataError(
                "missing field" if few else "too many fields",
                file=path,
                line=lineno,
                field=column_name(len(parts), names) if few else f"column {n + 1}",
                expected=f"{n} fields separated by {sep_name}",
                found=f"{len(parts)} fields",
            )
        for j, (f, part) in enumerate(zip(fields, parts, strict=True)):
            try:
                cols[j].append(f.parse(part))
            except FieldProblem as p:
                raise field_error(p, path, lineno, f) from None
    if not cols[0]:
        raise no_rows(path, 2 if header else 1, header=header)
    return {
        f.name: np.asarray(c, dtype=np.int64 if f.kind == "int" else np.float64)
        for f, c in zip(fields, cols, strict=True)
    }
