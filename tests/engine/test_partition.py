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
