"""Out-of-core interactions: a Parquet directory partitioned by a hash of the user id.

Layout (what :func:`write_user_shards` writes and :class:`ParquetSource` reads)::

    DIR/_privrec_shards.json        {"format": "privrec-user-shards", "version": 1,
                                     "n_shards": S, "hash": "pandas-hash_array", "columns": [...]}
    DIR/part-00000.parquet          every interaction of the users whose shard is 0
    DIR/part-00001.parquet          …

Columns: ``user`` and ``item`` (integers or strings), optional ``weight`` (a float; the
single-machine loaders' "value") and ``timestamp`` (a number, Unix seconds). A user's shard is
:func:`user_shard` of their id — a fixed, unkeyed 64-bit hash (``pandas.util.hash_array``) modulo
S — so **every interaction of a user is in one file**. That is what makes a per-user contribution
bound hold on a cluster: the worker holding a file holds whole users, and clips, samples and
weights each of them exactly as the single-machine model does. Workers check it while reading
(a file holding a user of another shard is refused with :class:`~privrec.errors.DataError`).

Nothing is ever read whole: the item catalogue is one pass over the ``item`` column
(:meth:`ParquetSource.item_catalogue`, or a given list), and each worker reads only its files.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from privrec.data.interactions import Interactions
from privrec.errors import DataError

__all__ = [
    "MANIFEST",
    "ParquetSource",
    "UserTypes",
    "shard_path",
    "user_shard",
    "write_manifest",
    "write_user_shards",
]

MANIFEST = "_privrec_shards.json"
_FORMAT = "privrec-user-shards"
_HASH = "pandas-hash_array"
_ROWS_PER_BATCH = 1 << 20


def user_shard(user_ids: np.ndarray, n_shards: int) -> np.ndarray:
    """Shard of each user id: ``hash_array(id) mod n_shards`` (stable across runs and machines).

    Integer ids hash by value and strings by their UTF-8 text, with pandas' fixed SipHash key,
    so a writer and a reader on different machines agree. The hash is public (not keyed): it
    only spreads users over files, it protects nothing.
    """
    ids = np.asarray(user_ids)
    if ids.dtype.kind in "US":
        ids = ids.astype(object)
    elif ids.dtype.kind == "i":  # one id, one hash: -7 as int32 and as int64 must agree
        ids = ids.astype(np.int64)
    elif ids.dtype.kind == "u":
        ids = ids.astype(np.uint64)
    h = pd.util.hash_array(ids, categorize=False)
    return (h % np.uint64(n_shards)).astype(np.int64)


def _file(directory: Path, shard: int) -> Path:
    return directory / f"part-{shard:05d}.parquet"


@dataclass
class UserTypes:
    """The user id column type of the shard files read so far, and the first file that had it.

    One id stored as ``2`` in one file and ``2.0`` or ``"2"`` in another hashes to two shards
    and becomes two users: the same person would be clipped, sampled and counted twice. So
    every file must store user ids in one type (a worker checks its own files with one of these;
    the driver compares the workers' types the same way).
    """

    type: str | None = None
    file: Path | None = None

    def see(self, user_type: str | None, file: Path | None) -> None:
        """Record ``file``'s user column type; :class:`DataError` if it differs from the first."""
        if user_type is None:
            return
        if self.type is None:
            self.type, self.file = user_type, file
        elif user_type != self.type:
            raise DataError(
                "the user id type differs between shard files (the same id in two types would "
                "be two people)",
                file=file,
                field="user",
                expected=f"{self.type} (as in {self.file.name if self.file else 'the first file'})",
                found=user_type,
            )


@dataclass(frozen=True)
class ParquetSource:
    """A user-sharded Parquet directory (see the module docstring), opened without reading it.

    Parameters
    ----------
    path
        The directory.
    binarize
        Keep interactions whose weight is at least this, as 1 (like the loaders' ``binarize``).
    """

    path: Path
    n_shards: int
    columns: tuple[str, ...]
    binarize: float | None = None

    @classmethod
    def open(cls, path: str | Path, *, binarize: float | None = None) -> ParquetSource:
        p = Path(path)
        if not p.is_dir():
            raise DataError(
                "not a directory of Parquet shards",
                file=p,
                expected="a directory written by `privrec data shard` (write_user_shards)",
                found="a file" if p.exists() else "nothing",
            )
        manifest = p / MANIFEST
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                "no shard manifest: the directory is not known to be partitioned by user",
                file=manifest,
                expected="a directory written by `privrec data shard` (write_user_shards)",
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError("unreadable shard manifest", file=manifest, found=str(exc)) from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("hash") != _HASH:
            raise DataError(
                "not a privrec user-shard manifest",
                file=manifest,
                expected=f"format {_FORMAT!r}, hash {_HASH!r}",
                found={k: meta.get(k) for k in ("format", "hash")}
                if isinstance(meta, dict)
                else type(meta).__name__,
            )
        n = meta.get("n_shards")
        cols = meta.get("columns")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1_000_000:
            raise DataError("bad shard count", file=manifest, field="n_shards", found=n)
        if (
            not isinstance(cols, list)
            or not {"user", "item"} <= set(cols)
            or not set(cols) <= {"user", "item", "weight", "timestamp"}
        ):
            raise DataError(
                "bad column list",
                file=manifest,
                field="columns",
                expected="user, item and optionally weight, timestamp",
                found=cols,
            )
        return cls(p, n, tuple(cols), binarize)

    # ------------------------------------------------------------------ layout
    def shard_files(self) -> list[tuple[int, Path]]:
        """(shard, file) of every shard that has a file (empty shards may have none)."""
        return [
            (s, _file(self.path, s)) for s in range(self.n_shards) if _file(self.path, s).exists()
        ]

    def assign(self, n_workers: int) -> list[list[tuple[int, Path]]]:
        """Shards of each of ``n_workers`` workers: shard ``s`` goes to worker ``s mod n_workers``."""
        out: list[list[tuple[int, Path]]] = [[] for _ in range(n_workers)]
        for s, f in self.shard_files():
            out[s % n_workers].append((s, f))
        return out

    def _batches(self, columns: list[str]) -> Iterator[Any]:
        import pyarrow.dataset as ds

        files = [str(f) for _, f in self.shard_files()]
        if not files:
            return
        try:
            dataset = ds.dataset(files, format="parquet")
            yield from dataset.to_batches(columns=columns, batch_size=_ROWS_PER_BATCH)
        except (OSError, ValueError, TypeError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(
                "the shard files cannot be read as one dataset (e.g. their column types differ)",
                file=self.path,
                found=str(exc).splitlines()[0][:200],
            ) from None

    def item_catalogue(self) -> np.ndarray:
        """The sorted distinct item ids: one pass over the ``item`` column, batch by batch.

        Memory is O(number of items), never O(rows). The same catalogue a single-machine
        loader builds (sorted distinct ids of the file).
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        seen: Any = None
        for batch in self._batches(["item"]):
            u = pc.unique(batch.column(0))
            seen = u if seen is None else pc.unique(pa.concat_arrays([seen, u]))
        if seen is None or len(seen) == 0:
            raise DataError("the shard directory holds no interactions", file=self.path)
        if seen.null_count:
            raise DataError("missing item id", file=self.path, field="item", found="null")
        ids = np.asarray(seen.to_numpy(zero_copy_only=False))
        return np.asarray(pd.Index(ids).sort_values())

    def item_id_kind(self) -> str:
        """The numpy kind of the stored item ids (``"i"``, ``"u"``, ``"f"``; ``"U"`` for text…).

        Read from the first shard file's footer (its schema), not its rows: the driver converts
        a text catalogue to the data's id type with it, as ``on_catalogue`` does on one machine.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self.shard_files()
        if not files:
            raise DataError("the shard directory holds no shard files", file=self.path)
        f = files[0][1]
        try:
            t = pq.read_schema(f).field("item").type
        except Exception as exc:  # pyarrow raises several unrelated types for bad files
            raise DataError("not a readable Parquet shard", file=f, found=str(exc)[:200]) from None
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "U"
        try:
            return str(np.dtype(t.to_pandas_dtype()).kind)
        except (NotImplementedError, TypeError):
            return "O"

    # ----------------------------------------------------------------- reading
    def read_shards(
        self,
        shards: list[tuple[int, Path]],
        item_ids: np.ndarray,
        *,
        user_types: UserTypes | None = None,
    ) -> Interactions | None:
        """The interactions of the given shards as one :class:`Interactions` (a worker's part).

        Columns and duplicates are treated as the single-machine loaders treat them
        (``Interactions.from_arrays``: duplicate pairs summed with a warning; ``binarize``);
        items outside ``item_ids`` are an error. Users are checked against their shard.
        ``user_types`` carries the user column type across calls (a worker reads its files one
        at a time): files whose user id types differ are refused, since ``2`` and ``2.0`` (or
        ``"2"``) would be two people with the same id. Returns ``None`` when the shards are empty.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        types = user_types if user_types is not None else UserTypes()
        for shard, f in shards:
            try:
                t = pq.read_table(f, columns=list(self.columns))
            except Exception as exc:  # pyarrow raises several unrelated types for bad files
                raise DataError(
                    "not a readable Parquet shard", file=f, found=str(exc)[:200]
                ) from None
            types.see(str(t.schema.field("user").type), f)
            if t.num_rows:
                users = np.asarray(t.column("user").unique().to_numpy(zero_copy_only=False))
                wrong = user_shard(users, self.n_shards) != shard
                if wrong.any():  # counts only: an error message never holds a user id
                    raise DataError(
                        "a user is in the wrong shard file (every interaction of a user must be "
                        "in the file of their hash; rewrite the directory with write_user_shards)",
                        file=f,
                        field="user",
                        expected=f"only users of shard {shard}",
                        found=f"{int(wrong.sum())} of its {len(users)} users belong to other shards",
                    )
                tables.append(t)
        if not tables:
            return None
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        del tables
        cols = {c: table.column(c).to_numpy() for c in self.columns}
        del table
        source = str(self.path)
        for c in ("user", "item"):
            if cols[c].dtype == object and pd.isna(cols[c]).any():
                raise DataError(f"missing {c} id", file=source, field=c, found="null")
        data = Interactions.from_arrays(
            cols["user"],
            cols["item"],
            cols.get("weight"),
            cols.get("timestamp"),
            item_ids=item_ids,
            source=source,
        )
        if self.binarize is not None:
            data = data.binarize(self.binarize)
        return data

    def to_interactions(self, item_ids: np.ndarray | None = None) -> Interactions:
        """The whole directory in memory (small data: tests, the single-machine comparison)."""
        ids = self.item_catalogue() if item_ids is None else np.asarray(item_ids)
        data = self.read_shards(self.shard_files(), ids)
        if data is None:
            raise DataError("the shard directory holds no interactions", file=self.path)
        return data


def write_user_shards(
    source: Interactions | str | Path,
    directory: str | Path,
    n_shards: int,
    *,
    user_col: str = "user",
    item_col: str = "item",
    weight_col: str | None = None,
    timestamp_col: str | None = None,
    batch_rows: int = _ROWS_PER_BATCH,
) -> ParquetSource:
    """Write ``source`` as a user-sharded Parquet directory; returns it opened.

    ``source`` is an :class:`Interactions` or a Parquet file or directory (read in batches of
    ``batch_rows`` rows, never whole; ``*_col`` name its columns). Each shard file is written by
    one streaming writer, so memory is one batch plus the writers' buffers. ``directory`` must be
    new or empty.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not 1 <= n_shards <= 4096:
        raise DataError("n_shards must be between 1 and 4096", field="n_shards", found=n_shards)
    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise DataError("the shard directory is not empty", file=out, expected="a new directory")
    out.mkdir(parents=True, exist_ok=True)
    names = ["user", "item"]
    batches: Iterator[dict[str, np.ndarray]]
    if isinstance(source, Interactions):
        m = source.matrix
        if not np.all(m.data == 1.0):
            names.append("weight")
        if source.timestamps is not None:
            names.append("timestamp")
        batches = _interaction_batches(source, batch_rows)
    else:
        import pyarrow.dataset as ds

        src = Path(source)
        wanted = {"user": user_col, "item": item_col}
        if weight_col is not None:
            wanted["weight"] = weight_col
            names.append("weight")
        if timestamp_col is not None:
            wanted["timestamp"] = timestamp_col
            names.append("timestamp")
        try:
            dataset = ds.dataset(str(src), format="parquet")
        except Exception as exc:  # pyarrow raises several unrelated types
            raise DataError(
                "not a readable Parquet source", file=src, found=str(exc)[:200]
            ) from None
        missing = [c for c in wanted.values() if c not in dataset.schema.names]
        if missing:
            raise DataError(
                "missing column", file=src, field=missing[0], found=list(dataset.schema.names)
            )
        batches = (
            {k: b.column(v).to_numpy(zero_copy_only=False) for k, v in wanted.items()}
            for b in dataset.to_batches(columns=list(wanted.values()), batch_size=batch_rows)
        )
    writers: dict[int, Any] = {}
    try:
        for cols in batches:
            shard = user_shard(cols["user"], n_shards)
            order = np.argsort(shard, kind="stable")
            bounds = np.searchsorted(shard[order], np.arange(n_shards + 1))
            table = pa.table({k: cols[k][order] for k in names})
            for s in np.flatnonzero(np.diff(bounds)):
                part = table.slice(int(bounds[s]), int(bounds[s + 1] - bounds[s]))
                w = writers.get(int(s))
                if w is None:
                    w = writers[int(s)] = pq.ParquetWriter(_file(out, int(s)), table.schema)
                w.write_table(part)
    finally:
        for w in writers.values():
            w.close()
    return write_manifest(out, n_shards, names)


def write_manifest(directory: Path, n_shards: int, columns: list[str]) -> ParquetSource:
    """Declare ``directory`` a user-sharded dataset (for writers that wrote ``part-*.parquet``
    themselves, by :func:`user_shard`, e.g. the synthetic data of ``benchmarks/bench_scale.py``)."""
    meta = {
        "format": _FORMAT,
        "version": 1,
        "n_shards": n_shards,
        "hash": _HASH,
        "columns": columns,
    }
    (directory / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return ParquetSource.open(directory)


def shard_path(directory: Path, shard: int) -> Path:
    """The file of ``shard`` in ``directory``."""
    return _file(directory, shard)


def _interaction_batches(data: Interactions, batch_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows of ``data`` as column batches of about ``batch_rows`` interactions (whole users)."""
    m = data.matrix
    n_users = m.shape[0]
    cuts = np.searchsorted(m.indptr, np.arange(0, m.nnz + batch_rows, batch_rows))
    cuts = np.unique(np.clip(cuts, 0, n_users))
    if cuts[0] != 0:
        cuts = np.concatenate([[0], cuts])
    if cuts[-1] != n_users:
        cuts = np.concatenate([cuts, [n_users]])
    for a, b in itertools.pairwise(cuts):
        lo, hi = int(m.indptr[a]), int(m.indptr[b])
        rows = np.repeat(np.arange(a, b), np.diff(m.indptr[a : b + 1]))
        batch = {
            "user": np.asarray(data.user_ids)[rows],
            "item": np.asarray(data.item_ids)[m.indices[lo:hi]],
            "weight": np.asarray(m.data[lo:hi], dtype=np.float32),
        }
        if data.timestamps is not None:
            batch["timestamp"] = np.asarray(data.timestamps[lo:hi], dtype=np.float64)
        yield batch
