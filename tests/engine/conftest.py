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
