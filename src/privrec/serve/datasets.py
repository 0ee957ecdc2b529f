"""Datasets the service answers DP queries about: where their data lives and what may be asked.

The ledger knows a dataset by name, policy and budgets but holds no data (only hashes). The
service is told where each dataset's interaction file is, in a TOML file (``--datasets``) or
with ``--data NAME=FILE``::

    [datasets.ratings]
    file = "ratings.tsv"          # any format privrec loads (relative to this file)
    format = "tsv"                # optional when the name gives it away
    max_per_user = 32             # B: contribution bound of count queries (user unit)
    max_items_per_query = 1000
    items = "catalogue.txt"       # optional: the public item catalogue, one id per line
    timestamp_column = "time"     # csv/tsv/parquet: the column of Unix times or ISO dates

    [datasets.ratings.segments]   # optional: a per-user table of declared segment columns
    file = "users.csv"            # CSV with a header; the user id column is "user"
    columns = { gender = ["F", "M"], age = ["<25", "25-44", "45+"] }

Without ``items`` the catalogue is the set of items of the raw file, which is then *assumed
public* (as in model files without ``train --items``): an item only one person interacted with
would otherwise be revealed by being answerable. With ``items`` (the format of ``train --items``:
one external id per line, ``#`` comments and an ``item`` header skipped) the catalogue does not
depend on the data; every item of the data must be in it, catalogue items nobody interacted
with count zero. Declare it: once the policy removes people (a deletion request recorded, consent
required, a retention window), a catalogue taken from the raw file would still hold the items
only they touched, so item-level queries are then refused until ``items`` is given
(:meth:`ServedDataset.item_query_refusal`).

The declared values of a segment column are its public domain: counts are released for exactly
these values (others are never counted), so the answer never reveals which values occur.

Every answer is computed on the data **after** the dataset's policy (deletions, consent,
retention, minimisation): :meth:`ServedDataset.view` loads the file through
:meth:`Ledger.load <privrec.governance.Ledger.load>` as the querying analyst, and the ledger
refuses a charge against a version older than the latest deletion, consent or policy change, or
whose oldest kept interaction the retention window has since passed
(:class:`~privrec.errors.StaleDataError`), so the view is reloaded then — and only then.

A retention window needs timestamps: formats that carry them (MovieLens, MovieTweetings) keep
them; a CSV, TSV or Parquet file has them only when ``timestamp_column`` names the column.

Errors the server's own configuration causes — a consent file that is missing or malformed, a
policy the data cannot satisfy (retention without timestamps), anything naming a server file —
are not the analyst's to see: they become :class:`DatasetUnavailableError` (503, a fixed text),
and the detail goes to the service log only, without values found in the files
(:func:`log_detail`).
"""

from __future__ import annotations

import csv
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import (
    AuthenticationError,
    BudgetExceededError,
    ConfigError,
    DataError,
    GovernanceError,
    LedgerSchemaError,
    PermissionDeniedError,
    PrivrecError,
    ServeConfigError,
    UnknownDatasetError,
    UnknownItemError,
)
from privrec.governance.policy import Policy
from privrec.governance.records import GovernedData

__all__ = [
    "UNAVAILABLE",
    "DatasetSpec",
    "DatasetUnavailableError",
    "SegmentSpec",
    "ServedDataset",
    "View",
    "load_dataset_specs",
    "log_detail",
    "names_server_files",
    "public_text",
]

#: what a caller is told when the server's configuration keeps a dataset from being answered
UNAVAILABLE = "dataset unavailable: the server's configuration needs attention"

#: a quoted filesystem path in an error message (absolute, home- or dot-relative, Windows)
_QUOTED_PATH = re.compile(r"""(['"])((?:/|~[/\\]|\.{1,2}[/\\]|[A-Za-z]:[/\\])[^'"]*)\1""")


class DatasetUnavailableError(PrivrecError):
    """A query the server cannot answer because of its own configuration (the policy's consent
    file, the data file, a policy the data cannot satisfy): answered 503 with a fixed text; the
    cause is logged for the operator (:func:`log_detail`), never sent to the caller.

    Parameters
    ----------
    dataset
        The dataset's name (as the caller asked for it).
    cause
        The library error behind it.
    """

    def __init__(self, dataset: str, cause: BaseException) -> None:
        self.dataset = dataset
        self.cause = cause
        super().__init__(UNAVAILABLE)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.dataset, self.cause))


#: refusals that concern the caller, not the server: passed on as they are
_CALLERS = (
    AuthenticationError,
    PermissionDeniedError,
    BudgetExceededError,
    UnknownDatasetError,
    LedgerSchemaError,
)


def names_server_files(exc: BaseException) -> bool:
    """Whether an error is about a file on the server (a caller of the API names no file).

    Decided by where the error comes from, not by what its text says, for every ledger refusal
    (:class:`~privrec.errors.GovernanceError`: budgets, purposes, idempotency conflicts, stale
    data): those messages repeat what the caller sent — a purpose named ``/team/ab-test`` or
    ``[Errno 2]`` — and must stay the caller's 4xx, never become a 503 (a reviewer turned
    budget refusals into 503s and wrote warnings into the service log that way). The ledger
    names consent files by their base name only. Other errors are matched by their text too.
    """
    if isinstance(exc, DataError) and exc.file is not None:
        return True
    if isinstance(exc, GovernanceError):
        return False
    text = str(exc)
    return "[Errno" in text or _QUOTED_PATH.search(text) is not None


def server_side(dataset: str, exc: PrivrecError) -> PrivrecError:
    """``exc`` as the caller may see it: a :class:`DatasetUnavailableError` if the server's
    configuration caused it (it names a server file), else ``exc`` itself."""
    if isinstance(exc, DatasetUnavailableError) or not names_server_files(exc):
        return exc
    return DatasetUnavailableError(dataset, exc)


def _without_values(exc: DataError, file: str | None) -> str:
    return str(
        DataError(exc.message, file=file, line=exc.line, field=exc.field, expected=exc.expected)
    )


def log_detail(exc: BaseException) -> str:
    """An error for the service log: type, file, line, field — never a value found in a file
    (a malformed consent row is a person's id)."""
    text = _without_values(exc, exc.file) if isinstance(exc, DataError) else str(exc)
    return f"{type(exc).__name__}: {text}"


def public_text(exc: BaseException) -> str:
    """An error's message with no server path (base names at most) and no value found in a file."""
    if isinstance(exc, DataError):
        return _without_values(exc, None if exc.file is None else _base(exc.file))
    return _QUOTED_PATH.sub(lambda m: m.group(1) + _base(m.group(2)) + m.group(1), str(exc))


def _base(path: str) -> str:
    """A path's last part, whichever separator it uses."""
    return re.split(r"[\\/]+", path.rstrip("/\\"))[-1]


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class SegmentSpec(_Strict):
    file: Path
    user_column: str = "user"
    columns: dict[str, tuple[str, ...]]

    @pydantic.field_validator("columns")
    @classmethod
    def _declared(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name, values in v.items():
            if not values:
                raise ValueError(f"segment column {name!r} declares no values")
            if len(set(values)) != len(values):
                raise ValueError(f"segment column {name!r} declares a value twice")
        return v


class DatasetSpec(_Strict):
    file: Path
    format: str | None = None
    max_per_user: int = pydantic.Field(default=32, ge=2, le=10_000)
    max_items_per_query: int = pydantic.Field(default=1000, ge=2, le=100_000)
    items: Path | None = None
    #: CSV/TSV/Parquet: the column of Unix times or ISO 8601 dates (retention windows need it)
    timestamp_column: str | None = pydantic.Field(default=None, min_length=1, max_length=256)
    segments: SegmentSpec | None = None


def load_dataset_specs(
    path: str | Path | None = None, data: dict[str, str] | None = None
) -> dict[str, DatasetSpec]:
    """Dataset specs from a TOML file and/or ``NAME=FILE`` pairs (paths relative to the TOML file)."""
    specs: dict[str, DatasetSpec] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ServeConfigError(f"datasets file {str(p)!r} not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ServeConfigError(f"datasets file {str(p)!r} is not valid TOML: {exc}") from None
        extra = set(raw) - {"datasets"}
        if extra:
            raise ServeConfigError(
                f"datasets file {str(p)!r}: unknown section {sorted(extra)[0]!r}"
            )
        for name, body in dict(raw.get("datasets", {})).items():
            try:
                spec = DatasetSpec.model_validate(body)
            except pydantic.ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(x) for x in err["loc"])
                raise ServeConfigError(
                    f"datasets file {str(p)!r}: dataset {name!r}: {where}: {err['msg']}"
                ) from None
            base = p.parent
            seg = spec.segments
            if seg is not None and not seg.file.is_absolute():
                seg = seg.model_copy(update={"file": base / seg.file})
            items = spec.items
            if items is not None and not items.is_absolute():
                items = base / items
            specs[name] = spec.model_copy(
                update={
                    "file": spec.file if spec.file.is_absolute() else base / spec.file,
                    "items": items,
                    "segments": seg,
                }
            )
    for name, file in (data or {}).items():
        specs[name] = DatasetSpec(file=Path(file))
    return specs


@dataclass(frozen=True)
class View:
    """The policy-filtered data one ledger version holds, indexed by the public catalogue."""

    governed: GovernedData
    #: users × catalogue items (binary); catalogue items the policy left empty are empty columns
    matrix: sp.csr_matrix
    #: per segment column, each user's code into the declared values (-1: not declared)
    codes: dict[str, np.ndarray]


class ServedDataset:
    """One dataset's raw file, public catalogue, segment table and its current policy view."""

    def __init__(self, name: str, spec: DatasetSpec) -> None:
        from privrec.data import load

        self.name = name
        self.spec = spec
        if not spec.file.exists():
            raise ServeConfigError(f"dataset {name!r}: data file {str(spec.file)!r} not found")
        options = {} if spec.timestamp_column is None else {"timestamp_col": spec.timestamp_column}
        try:
            self.raw: Interactions = load(spec.file, format=spec.format, **options)
        except ConfigError as exc:
            if spec.timestamp_column is None or isinstance(exc, ServeConfigError):
                raise
            raise ServeConfigError(
                f"dataset {name!r}: timestamp_column is for csv, tsv and parquet files (other "
                "formats keep the timestamps they have)"
            ) from None
        # The catalogue: the declared one, or the item ids of the file, assumed public then
        self.catalogue = (
            np.asarray(self.raw.item_ids)
            if spec.items is None
            else self._read_catalogue(spec.items)
        )
        self._item_pos = {str(v): i for i, v in enumerate(self.catalogue.tolist())}
        outside = [
            v for v in np.asarray(self.raw.item_ids).tolist() if str(v) not in self._item_pos
        ]
        if outside:
            raise ServeConfigError(
                f"dataset {name!r}: {len(outside):,} item(s) of the data are not in the "
                f"catalogue {str(spec.items)!r}, e.g. {str(outside[0])[:64]!r}"
            )
        self.segments: dict[str, tuple[str, ...]] = {}
        self._segment_of: dict[str, dict[str, int]] = {}
        if spec.segments is not None:
            self._read_segments(spec.segments)
        self._lock = threading.Lock()
        self._view: View | None = None

    def _read_catalogue(self, path: Path) -> np.ndarray:
        """The declared catalogue, with the data's id type (integer ids answer as integers)."""
        from privrec.data.loaders import read_item_catalogue
        from privrec.errors import DataError

        try:
            ids = read_item_catalogue(path)
        except DataError as exc:
            raise ServeConfigError(f"dataset {self.name!r}: {exc}") from None
        if np.issubdtype(np.asarray(self.raw.item_ids).dtype, np.integer):
            try:
                ints = np.array([int(v) for v in ids], dtype=np.int64)
            except ValueError:
                pass
            else:
                if np.unique(ints).size != ints.size:
                    raise ServeConfigError(
                        f"dataset {self.name!r}: item catalogue {str(path)!r} lists an item "
                        "twice (as integers, e.g. 7 and 07)"
                    )
                return ints
        return np.array(ids, dtype=object)

    def _read_segments(self, seg: SegmentSpec) -> None:
        if not seg.file.exists():
            raise ServeConfigError(
                f"dataset {self.name!r}: segments file {str(seg.file)!r} not found"
            )
        with seg.file.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            for col in (seg.user_column, *seg.columns):
                if col not in header:
                    raise ServeConfigError(
                        f"dataset {self.name!r}: segments file has no column {col!r}"
                    )
            maps: dict[str, dict[str, int]] = {c: {} for c in seg.columns}
            index = {c: {v: i for i, v in enumerate(vals)} for c, vals in seg.columns.items()}
            for row in reader:
                user = str(row[seg.user_column]).strip()
                for c in seg.columns:
                    code = index[c].get(str(row[c]).strip())
                    if code is not None:
                        maps[c][user] = code
        self.segments = dict(seg.columns)
        self._segment_of = maps

    # ------------------------------------------------------------------ public catalogue
    @property
    def n_items(self) -> int:
        return int(self.catalogue.shape[0])

    @property
    def declared_catalogue(self) -> bool:
        """Whether the catalogue is an explicit file (``items``), not the data file's items."""
        return self.spec.items is not None

    def item_query_refusal(self, policy: Policy, deletions: int) -> str | None:
        """Why item-level queries cannot be answered on this dataset now, or ``None``.

        A catalogue taken from the raw data file is fixed before the policy runs: an item that
        only a forgotten, non-consenting or expired person touched would stay in it, and being
        answerable (or ranked by top-k, which may list the whole catalogue) would show that
        someone had it. So once the policy removes people — a deletion request recorded, consent
        required, or a retention window — item-level queries need a catalogue that does not
        depend on the data (``items`` in the datasets file). Queries that name no item
        (segment counts over all items) are still answered.
        """
        if self.declared_catalogue:
            return None
        removes = []
        if deletions:
            removes.append("deletion requests")
        if policy.consent.required:
            removes.append("consent")
        if policy.retention_days is not None:
            removes.append("a retention window")
        if not removes:
            return None
        return (
            f"dataset {self.name!r} has no declared item catalogue and its policy removes people "
            f"({', '.join(removes)}): a catalogue taken from the data file could reveal their "
            "items, so item-level queries need an explicit public catalogue (`items = FILE` in "
            "the datasets file)"
        )

    def item_positions(self, ids: list[Any]) -> np.ndarray:
        """Catalogue positions of external item ids (:class:`UnknownItemError` for any other).

        The error names neither the item nor its place in the query: the caller learns only
        that some listed item is not in the catalogue.
        """
        out = np.empty(len(ids), dtype=np.int64)
        for j, v in enumerate(ids):
            pos = self._item_pos.get(str(v))
            if pos is None:
                raise UnknownItemError(
                    f"an item of the query is not in dataset {self.name!r}'s catalogue"
                )
            out[j] = pos
        return out

    def item_ids(self, positions: np.ndarray) -> list[Any]:
        return [_plain(v) for v in self.catalogue[positions].tolist()]

    # ------------------------------------------------------------------ the policy view
    @property
    def loaded(self) -> bool:
        """Whether a policy view is cached (a query then loads nothing unless it is stale)."""
        return self._view is not None

    def view(self, ledger: Any, *, stale: View | None = None) -> View:
        """The data after the dataset's policy, loaded through the ledger (cached until stale).

        ``stale`` is a view the ledger refused (:class:`~privrec.errors.StaleDataError`): it is
        replaced by a fresh load unless another request already replaced it, so a burst of
        requests that all met the same stale view loads the data once.
        """
        with self._lock:
            if self._view is None or (stale is not None and self._view is stale):
                try:
                    governed = ledger.load(self.name, self.raw)
                except _CALLERS:
                    raise
                except PrivrecError as exc:
                    # the policy's files or the data (consent file missing or malformed, a
                    # retention window on data without timestamps): the server's to fix
                    raise DatasetUnavailableError(self.name, exc) from exc
                self._view = self._index(governed)
            return self._view

    def _index(self, governed: GovernedData) -> View:
        data = governed.interactions
        pos = np.array([self._item_pos[str(v)] for v in np.asarray(data.item_ids).tolist()])
        m = sp.csr_matrix(data.matrix, dtype=np.float32, copy=True)
        m.eliminate_zeros()
        m.data[:] = 1.0
        coo = m.tocoo()
        matrix = sp.csr_matrix(
            (coo.data, (coo.row, pos[coo.col])), shape=(m.shape[0], self.n_items), dtype=np.float32
        )
        users = [str(u) for u in np.asarray(data.user_ids).tolist()]
        codes = {
            c: np.array([mp.get(u, -1) for u in users], dtype=np.int64)
            for c, mp in self._segment_of.items()
        }
        return View(governed, matrix, codes)


def _plain(v: Any) -> Any:
    """A JSON-friendly item id (numpy scalars to Python)."""
    if isinstance(v, np.generic):
        return v.item()
    return v
