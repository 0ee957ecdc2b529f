"""Coverage-guided fuzzing of every file loader with atheris (optional, never run by the suite).

::

    pip install -e ".[fuzz]"        # atheris
    python tests/fuzz/atheris_loaders.py -atheris_runs=200000 [corpus_dir ...]
    python tests/fuzz/atheris_loaders.py --seed-corpus corpus/   # write generated valid files first

The first byte of an input picks the format (and, for CSV/TSV/Parquet, which
optional columns are named); the rest is the file. Every input goes through
the same check as the hypothesis tests (``loader_campaign.check``): an
exception other than ``DataError``, data that differ from the reference
parser's, a false refusal, another line or a hang is a crash for atheris.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "fuzz"

from .loader_cases import FIXED, TEXT_FORMATS, Case, generate

FILE_FORMATS = [*TEXT_FORMATS, "parquet"]
_FOLDER = Path(tempfile.mkdtemp(prefix="privrec-atheris-"))


def case_of(data: bytes) -> Case:
    """The loader input an atheris byte string stands for."""
    head = data[0] if data else 0
    fmt = FILE_FORMATS[(head & 0x3F) % len(FILE_FORMATS)]
    kwargs: dict[str, object] = {}
    if fmt in ("csv", "tsv"):
        kwargs = {"user_col": "user", "item_col": "item"}
    elif fmt == "parquet":
        kwargs = {"user_col": "u", "item_col": "i"}
    if kwargs and head & 0x40:
        kwargs["value_col"] = "score" if fmt != "parquet" else "v"
    if kwargs and head & 0x80:
        kwargs["timestamp_col"] = "when" if fmt != "parquet" else "t"
    name = FIXED[fmt].file if fmt in FIXED else f"data.{fmt}"
    return Case(fmt, data[1:], kwargs, None, True, name)


def test_one_input(data: bytes) -> None:
    from .loader_campaign import FAILURES, check

    out = check(case_of(data), _FOLDER)
    if out.kind in FAILURES:
        raise AssertionError(f"{out.kind}: {out.detail}")


def seed_corpus(folder: Path, per_format: int = 20) -> None:
    """Generated valid files of every format, prefixed with their format byte."""
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    for k, fmt in enumerate(FILE_FORMATS):
        for j in range(per_format):
            case = generate(rnd, fmt)
            assert isinstance(case.data, bytes)
            opts = ("value_col" in case.kwargs) * 0x40 | ("timestamp_col" in case.kwargs) * 0x80
            (folder / f"{fmt}-{j}").write_bytes(bytes([k | opts]) + case.data)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        seed_corpus(Path(sys.argv[2]))
        return
    import atheris

    with atheris.instrument_imports(include=["privrec"]):
        import privrec.data.loaders  # noqa: F401

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
