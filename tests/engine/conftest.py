"""One real local Ray cluster for the engine tests (2 CPUs, loopback only), stopped after them.

Package scope: the cluster (and Ray's threads in the test process) is gone before other test
packages run — some of them fork processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# CI installs the [ray] extra with [dev] and must run these tests: there, a missing Ray fails.
ray = __import__("ray") if os.environ.get("CI") else pytest.importorskip("ray")


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=200 * 1024 * 1024,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def small_data():  # type: ignore[no-untyped-def]
    """400 users × 120 items with timestamps; some users longer than B = 10 (sampling matters)."""
    from privrec.data import synthetic

    return synthetic(n_users=400, n_items=120, seed=0)


@pytest.fixture(scope="session")
def shards(small_data, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    from privrec.engine import write_user_shards

    out = tmp_path_factory.mktemp("shards") / "data"
    write_user_shards(small_data, out, 5)
    return out


def write_mixed_user_types(directory: Path, kind: str) -> int:
    """Two shard files whose user ids differ in type (int64 in one, ``kind`` — "float" or "str"
    — in the other), each file consistent with its own hash, and one person in both: stored
    as ``p`` in file 0 and as ``p`` converted in file 1. Returns ``p``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from privrec.engine.parquet import shard_path, user_shard, write_manifest

    def conv(a: np.ndarray) -> np.ndarray:
        return a.astype(str) if kind == "str" else a.astype(np.float64)

    def shard(a: np.ndarray) -> int:
        return int(user_shard(a, 2)[0])

    p = next(u for u in range(100) if shard(np.array([u])) == 0 and shard(conv(np.array([u]))) == 1)
    ints = np.array([u for u in range(40) if shard(np.array([u])) == 0])
    others = np.array([u for u in range(40, 80) if shard(conv(np.array([u]))) == 1] + [p])
    directory.mkdir(parents=True)
    pq.write_table(
        pa.table({"user": ints, "item": np.zeros(len(ints), np.int64)}), shard_path(directory, 0)
    )
    pq.write_table(
        pa.table({"user": conv(others), "item": np.ones(len(others), np.int64)}),
        shard_path(directory, 1),
    )
    write_manifest(directory, 2, ["user", "item"])
    return p


def write_duplicate_rows(directory: Path) -> None:
    """Two shard files in which every user has item 0 twice (60 users, 2 shards)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from privrec.engine.parquet import shard_path, user_shard, write_manifest

    users = np.repeat(np.arange(60), 3)
    items = np.tile([0, 0, 1], 60)
    shard = user_shard(users, 2)
    directory.mkdir(parents=True)
    for s in range(2):
        table = pa.table({"user": users[shard == s], "item": items[shard == s]})
        pq.write_table(table, shard_path(directory, s))
    write_manifest(directory, 2, ["user", "item"])
