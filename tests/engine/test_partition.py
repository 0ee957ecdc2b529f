"""Workers driven in-process (no Ray): a user's keyed sample and bounded contribution do not depend
on which worker holds them, and partial sums add up to the whole-matrix statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.engine import ParquetSource
from privrec.engine.partition import Partition
from privrec.errors import ConfigError
from privrec.privacy.contribution import sample_per_user
from privrec.privacy.units import PrivacyUnit


def _partitions(src: ParquetSource, n_workers: int) -> list[Partition]:
    items = src.item_catalogue()
    parts = [Partition(src, shards, 1) for shards in src.assign(n_workers) if shards]
    for p in parts:
        p.load(items, None)
    ids = [p.sorted_user_ids() for p in parts]
    for p in parts:
        p.set_row_keys(*ids)
    return parts


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_keyed_samples_do_not_depend_on_the_partition(
    small_data, shards: Path, n_workers: int
) -> None:  # type: ignore[no-untyped-def]
    src = ParquetSource.open(shards)
    whole = small_data.binarize()
    want = sample_per_user(whole.matrix, 7, None, salt=12345)
    kept = {}
    for p in _partitions(src, n_workers):
        got = sample_per_user(p.binary(), 7, None, salt=12345, row_keys=p.row_keys)
        for r, u in enumerate(p.data.user_ids):  # type: ignore[union-attr]
            kept[u] = set(got.indices[got.indptr[r] : got.indptr[r + 1]].tolist())
    for r, u in enumerate(whole.user_ids):
        assert kept[u] == set(want.indices[want.indptr[r] : want.indptr[r + 1]].tolist())
        assert len(kept[u]) <= 7  # the bound holds on every worker


def test_partial_counts_add_up_and_one_user_moves_them_by_at_most_sqrt_b(
    small_data,
    shards: Path,  # type: ignore[no-untyped-def]
) -> None:
    from privrec.models.dp_popularity import bounded_counts

    parts = _partitions(ParquetSource.open(shards), 2)
    for p in parts:
        p.bounded_counts(PrivacyUnit.USER, 10, 99)
    total = sum(p.partial()[0] for p in parts)
    x = small_data.binarize().matrix
    want, sens = bounded_counts(x, PrivacyUnit.USER, 10, None, salt=99)
    assert np.array_equal(total, want)
    # removing one user (the busiest) changes the released vector by at most the sensitivity
    u = int(np.argmax(np.diff(x.indptr)))
    keep = np.ones(x.shape[0], bool)
    keep[u] = False
    keys = np.flatnonzero(keep).astype(np.uint64)  # the others keep their rows' keys
    without, _ = bounded_counts(sp.csr_matrix(x[keep]), PrivacyUnit.USER, 10, None, salt=99,
                                row_keys=keys)  # fmt: skip
    assert np.linalg.norm(want - without) <= sens + 1e-12


def test_row_keys_of_the_wrong_length_are_refused() -> None:
    m = sp.csr_matrix(np.ones((3, 4), np.float32))
    with pytest.raises(ConfigError, match="row_keys"):
        sample_per_user(m, 2, None, salt=1, row_keys=np.arange(2, dtype=np.uint64))
    with pytest.raises(ConfigError, match="salt"):
        sample_per_user(m, 2, None)


@pytest.mark.parametrize("kind", ["float", "str"])
def test_one_worker_refuses_its_files_holding_user_ids_of_two_types(
    tmp_path: Path, kind: str
) -> None:
    """A worker reads its files one at a time: the type check must span them (2 and 2.0 would
    be two people), with the single-machine reader's DataError."""
    from privrec.errors import DataError

    from .conftest import write_mixed_user_types

    write_mixed_user_types(tmp_path / "d", kind)
    src = ParquetSource.open(tmp_path / "d")
    with pytest.raises(DataError, match="user id type differs") as single:
        src.to_interactions()
    (part,) = [Partition(src, shards, 1) for shards in src.assign(1)]
    with pytest.raises(DataError, match="user id type differs") as worker:
        part.load(src.item_catalogue(), None)
    assert worker.value.found == single.value.found
    assert part.data is None


def test_dpals_prepare_retried_on_a_prepared_worker_is_a_no_op(shards: Path) -> None:
    """The driver retries dpals_prepare on every worker when one was lost during it: the
    survivors (their full matrix already dropped) must accept the same call again."""
    from privrec.errors import EngineError

    (part,) = _partitions(ParquetSource.open(shards), 1)
    head, counts = np.arange(50), np.linspace(1.0, 50.0, 50)
    part.dpals_prepare(head, counts, "uniform", 10, 0.5, 77)
    weights = part.weights.copy()
    part.dpals_prepare(head, counts, "uniform", 10, 0.5, 77)  # the retry
    assert (part.weights != weights).nnz == 0
    with pytest.raises(EngineError, match="holds no data"):
        part.dpals_prepare(head, counts, "uniform", 10, 0.5, 78)  # not a retry: refused


def test_a_workers_data_warnings_are_kept_for_the_driver(tmp_path: Path) -> None:
    from privrec.errors import DataWarning

    from .conftest import write_duplicate_rows

    write_duplicate_rows(tmp_path / "d")
    src = ParquetSource.open(tmp_path / "d")
    (part,) = [Partition(src, shards, 1) for shards in src.assign(1)]
    part.load(src.item_catalogue(), None)
    got = part.take_warnings()
    assert [c for c, _ in got] == [DataWarning, DataWarning]  # one per shard file
    assert sum(int(m.split()[0]) for _, m in got) == 60 and "duplicate" in got[0][1]
    assert part.take_warnings() == []  # handed over once
