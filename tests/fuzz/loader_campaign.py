"""Run loaders on fuzz inputs, sort the outcomes, and the long campaign (the issue's table).

:func:`check` loads an input the way a user would (a file on disk, the public
entry point) and compares with the truth of a generated input or with the
reference parser: accepted and equal, a typed error (with or without line and
field), a raw crash (any exception other than ``DataError``), a wrong result
(accepted but not what the input holds, or accepted though the reference
refuses), a false refusal, another line than the reference's, or a hang
(over :data:`TIME_LIMIT` seconds).

Campaign::

    python tests/fuzz/loader_campaign.py --tries 1000 --seed 0 [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "fuzz"

import numpy as np
import pandas as pd

from privrec.data import Interactions, from_dataframe, read_user_item_lists
from privrec.data.loaders import FORMATS
from privrec.errors import DataError

from .loader_cases import ALL_FORMATS, Case, Err, Ok, _sort_key, generate, mutate
from .loader_reference import _py, reference

TIME_LIMIT = 20.0


def summarize(x: Interactions) -> Ok:
    df = x.to_dataframe()
    ts = df["timestamp"] if "timestamp" in df else [None] * len(df)
    entries = {
        (_py(u), _py(i)): (float(v), None if t is None else float(t))
        for u, i, v, t in zip(df["user"], df["item"], df["value"], ts, strict=True)
    }
    users = tuple(sorted((_py(u) for u in x.user_ids), key=_sort_key))
    items = tuple(sorted((_py(i) for i in x.item_ids), key=_sort_key))
    return Ok(users, items, entries)


def _same(a: Ok, b: Ok) -> bool:
    if a.arrays is not None or b.arrays is not None:
        return a.arrays == b.arrays
    if a.users != b.users or a.items != b.items or a.entries.keys() != b.entries.keys():
        return False
    if any(
        type(u) is not type(v) for u, v in zip(a.users + a.items, b.users + b.items, strict=True)
    ):
        return False  # an int id read back as text, or the reverse
    for k, (v, t) in a.entries.items():
        w, s = b.entries[k]
        if v != w or (t is None) != (s is None):
            return False
        if t is not None and s is not None and t != s and abs(t - s) > 1e-6 * max(1.0, abs(t)):
            return False
    return True


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` if the body runs longer (a hang is a failure, not a wait)."""
    if not hasattr(signal, "setitimer"):  # pragma: no cover
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise TimeoutError(f"loader ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_loader(case: Case, folder: Path) -> Ok:
    """Load ``case`` the way a user would (file on disk, public entry point)."""
    if case.fmt == "dataframe":
        assert isinstance(case.data, pd.DataFrame)
        return summarize(from_dataframe(case.data, **case.kwargs))
    assert isinstance(case.data, bytes)
    path = folder / case.name
    path.write_bytes(case.data)
    if case.fmt == "user-item-lists":
        users, items, all_users = read_user_item_lists(path)
        ok = Ok(
            tuple(all_users.tolist()),
            (),
            {},
            (tuple(users.tolist()), tuple(items.tolist()), tuple(all_users.tolist())),
        )
        assert users.dtype == items.dtype == all_users.dtype == np.int64
        return ok
    return summarize(FORMATS[case.fmt](path, **case.kwargs))


OUTCOMES = (
    "accepted, equal",
    "typed error, line and field",
    "typed error, line only",
    "typed error, no line",
    "raw crash",
    "wrong result",
    "false refusal",
    "other line",
    "hang",
)
FAILURES = ("raw crash", "wrong result", "false refusal", "other line", "hang")


@dataclass
class Outcome:
    kind: str
    detail: str = ""


def check(case: Case, folder: Path) -> Outcome:
    """Run the loader on ``case`` and compare with the truth (valid input) or the reference."""
    expected: Ok | Err = case.truth if case.truth is not None else reference(case)
    try:
        with warnings.catch_warnings(), time_limit(TIME_LIMIT):
            warnings.simplefilter("ignore")
            got = run_loader(case, folder)
    except DataError as e:
        if isinstance(expected, Ok):
            return Outcome("false refusal", str(e)[:300])
        text_format = case.fmt not in ("parquet", "dataframe")  # rows there: rule order varies
        if text_format and expected.line is not None and e.line != expected.line:
            return Outcome("other line", f"reference {expected.line} ({expected.why}): {e}")
        if e.line is None:
            return Outcome("typed error, no line", str(e)[:200])
        return Outcome(
            "typed error, line and field" if e.field else "typed error, line only", str(e)[:200]
        )
    except TimeoutError as e:
        return Outcome("hang", str(e))
    except Exception as e:
        return Outcome("raw crash", f"{type(e).__name__}: {str(e)[:300]}")
    if isinstance(expected, Err):
        return Outcome(
            "wrong result", f"accepted; reference refuses line {expected.line}: {expected.why}"
        )
    if not _same(got, expected):
        return Outcome("wrong result", f"loaded {got} != expected {expected}"[:600])
    return Outcome("accepted, equal")


def show(case: Case) -> str:
    """A short description of an input, for failure messages."""
    if isinstance(case.data, pd.DataFrame):
        return f"{case.fmt} {case.kwargs}\n{case.data!r}"[:2000]
    return f"{case.fmt} {case.kwargs} {case.data[:600]!r}"


# ------------------------------------------------------------------ campaign
def campaign(tries: int, seed: int, mutated_share: float = 0.75) -> dict[str, Any]:
    """``tries`` inputs spread over all formats; counts per outcome and per format."""
    rnd = random.Random(seed)
    counts: Counter[str] = Counter()
    per_format: dict[str, Counter[str]] = {f: Counter() for f in ALL_FORMATS}
    failures: list[dict[str, str]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k in range(tries):
            fmt = ALL_FORMATS[k % len(ALL_FORMATS)]
            case = generate(rnd, fmt)
            if rnd.random() < mutated_share:
                case = mutate(rnd, case)
            out = check(case, folder)
            counts[out.kind] += 1
            per_format[fmt][out.kind] += 1
            if out.kind in FAILURES and len(failures) < 50:
                failures.append(
                    {"format": fmt, "outcome": out.kind, "detail": out.detail, "input": show(case)}
                )
    return {
        "tries": tries,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "counts": {k: counts[k] for k in OUTCOMES},
        "per_format": {f: dict(c) for f, c in per_format.items()},
        "failures": failures,
    }


def _table(res: dict[str, Any]) -> str:
    c = res["counts"]
    typed = (
        c["typed error, line and field"] + c["typed error, line only"] + c["typed error, no line"]
    )
    lines = [
        "| area | tries | accepted (equal) | typed error | of which without line | "
        "without field | raw crash | wrong result | false refusal | other line | hang |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| loaders ({len(ALL_FORMATS)} formats) | {res['tries']} | {c['accepted, equal']} | "
        f"{typed} | {c['typed error, no line']} | "
        f"{c['typed error, line only'] + c['typed error, no line']} | {c['raw crash']} | "
        f"{c['wrong result']} | {c['false refusal']} | {c['other line']} | {c['hang']} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the full result here")
    args = ap.parse_args(argv)
    res = campaign(args.tries, args.seed)
    print(_table(res))
    print(f"\n{res['seconds']} s; per format:")
    for f, c in res["per_format"].items():
        print(f"  {f:16s} {dict(c)}")
    for fail in res["failures"][:10]:
        print(f"\n{fail['outcome']} [{fail['format']}]: {fail['detail']}\n  {fail['input'][:400]}")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 1 if any(res["counts"][k] for k in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
