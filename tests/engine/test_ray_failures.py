"""The Ray engine on bad input and lost workers: typed errors, nothing double counted, nothing leaked.

The same local cluster as ``test_ray.py`` (``ray_cluster``, 2 CPUs). Every failure here must
leave the cluster able to run the next fit (a failed fit's workers are stopped), and the catalogue,
the warnings and the retries must behave as on one machine.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privrec.engine import ParquetSource, RayEngine
from privrec.errors import ConfigError, DataError, DataWarning
from privrec.models import DPALS, DPPopularity

from .conftest import write_duplicate_rows, write_mixed_user_types

pytestmark = [
    pytest.mark.usefixtures("ray_cluster"),
    pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning"),
]


def seeded(cls, **kw):  # type: ignore[no-untyped-def]
    """A private model with seeded noise (warns: not private — tests only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(seed=3, **kw)


POP: dict[str, Any] = dict(epsilon=2.0, delta=1e-6, unit="user", max_per_user=10)


@pytest.fixture(scope="module")
def engine() -> Iterator[RayEngine]:
    # a short ping timeout: if a failed fit leaked its workers, the next fit fails fast
    eng = RayEngine(num_workers=2, ping_timeout=20)
    yield eng
    eng.shutdown()


def _all_dead(actors: list[Any]) -> bool:
    """Whether every actor is gone (``ray.kill`` is asynchronous: wait up to 20 s)."""
    import time

    import ray

    deadline = time.monotonic() + 20
    while True:
        alive = 0
        for a in actors:
            try:
                ray.get(a.ping.remote(), timeout=20)
                alive += 1
            except ray.exceptions.RayActorError:
                pass
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.2)


@pytest.mark.parametrize("kind", ["float", "str"])
def test_user_ids_of_two_types_on_two_workers_are_refused_before_any_noise(
    engine: RayEngine, tmp_path: Path, kind: str
) -> None:
    """One person stored as 2 on one worker and 2.0 (or "2") on another: the single-machine
    reader's DataError, raised by the driver before any statistic is computed; without the
    check the float fit counted the person twice and the str fit failed untyped."""
    write_mixed_user_types(tmp_path / "d", kind)
    with pytest.raises(DataError, match="user id type differs") as single:
        ParquetSource.open(tmp_path / "d").to_interactions()
    model = seeded(DPPopularity, **POP)
    with pytest.raises(DataError, match="user id type differs") as dist:
        engine.fit(model, tmp_path / "d")
    assert dist.value.found == single.value.found == ("double" if kind == "float" else "string")
    assert not hasattr(model, "guarantee_") and not hasattr(model, "item_popularity_")
    assert engine.last_group is not None and _all_dead(engine.last_group.actors)


def test_a_fit_failing_while_loading_or_fitting_stops_its_workers(
    engine: RayEngine, small_data: Any, shards: Path, tmp_path: Path
) -> None:
    """A bad shard (refused in ``load``) or a failure inside the fit: the workers are stopped,
    so the engine's next fit can start (they held every CPU of the cluster)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    (_, f0), (_, f1) = ParquetSource.open(bad).shard_files()[:2]
    pq.write_table(pa.concat_tables([pq.read_table(f0), pq.read_table(f1).slice(0, 1)]), f0)
    with pytest.raises(DataError, match="wrong shard file") as err:
        engine.fit(seeded(DPPopularity, **POP), bad)
    assert "np.int64" not in str(err.value)  # a count, not the user's id
    assert engine.last_group is not None and _all_dead(engine.last_group.actors)

    def refuse(n_users: int, nnz: int) -> None:
        raise ConfigError("refused after loading")

    with pytest.raises(ConfigError, match="refused after loading"):
        engine.fit(seeded(DPPopularity, **POP), shards, on_loaded=refuse)
    assert _all_dead(engine.last_group.actors)
    got = engine.fit(seeded(DPPopularity, **POP), shards)  # starts: the CPUs are free
    want = seeded(DPPopularity, **POP).fit(small_data)
    assert np.abs(got.item_popularity_ - want.item_popularity_).max() < 1e-5


def test_with_catalogue_is_honoured_as_on_one_machine(
    engine: RayEngine, small_data: Any, shards: Path
) -> None:
    catalogue = np.arange(130)  # public, larger than the 120 items interacted with
    one = seeded(DPPopularity, **POP).with_catalogue(catalogue).fit(small_data)
    dist = engine.fit(seeded(DPPopularity, **POP).with_catalogue(catalogue), shards)
    assert np.array_equal(dist.item_ids_, one.item_ids_) and len(dist.item_ids_) == 130
    assert dist.privacy_guarantee.catalogue == one.privacy_guarantee.catalogue == "given"
    assert np.abs(dist.item_popularity_ - one.item_popularity_).max() < 1e-5


def test_a_text_catalogue_takes_the_data_item_id_type(
    engine: RayEngine, small_data: Any, shards: Path
) -> None:
    """``train --items FILE`` reads text ids; with integer item ids in the shards they are
    converted as ``on_catalogue`` converts them on one machine (were: every item refused)."""
    text = [str(i) for i in range(125)]
    one = seeded(DPPopularity, **POP).with_catalogue(text).fit(small_data)
    dist = engine.fit(seeded(DPPopularity, **POP), shards, item_ids=text)
    assert dist.item_ids_.dtype.kind == "i" and np.array_equal(dist.item_ids_, one.item_ids_)
    assert np.abs(dist.item_popularity_ - one.item_popularity_).max() < 1e-5
    with pytest.raises(DataError, match="lists an item twice"):
        engine.fit(seeded(DPPopularity, **POP), shards, item_ids=[*text, "007"])


def test_a_worker_lost_during_dpals_prepare_is_replaced(
    engine: RayEngine, small_data: Any, shards: Path
) -> None:
    """The surviving worker has dropped its full matrix when the call is retried: the retry is
    a no-op there, the replacement prepares from its re-read shards, and the fit equals the
    single-machine one (was: an untyped AssertionError after the counts were released)."""
    import ray

    killed: list[str] = []

    def kill_in_prepare(name: str, actors: list[Any]) -> None:
        if name == "dpals_prepare" and not killed:
            killed.append(name)
            ray.kill(actors[1], no_restart=True)

    kw: dict[str, Any] = dict(epsilon=1.0, delta=1e-6, unit="user", factors=4, iterations=2,
                              max_per_user=10, head_min=60)  # fmt: skip
    engine.after_submit = kill_in_prepare
    try:
        dist = engine.fit(seeded(DPALS, **kw), shards)
    finally:
        engine.after_submit = None
    one = seeded(DPALS, **kw).fit(small_data)
    assert killed and engine.last_group is not None and engine.last_group.replaced == 1
    assert np.abs(dist.item_factors_ - one.item_factors_).max() < 1e-4
    events = [e.to_dict() for e in dist.privacy_guarantee.spent_events]
    assert events == [e.to_dict() for e in one.privacy_guarantee.spent_events]  # charged once


def test_a_workers_data_warnings_reach_the_caller(engine: RayEngine, tmp_path: Path) -> None:
    write_duplicate_rows(tmp_path / "d")
    with pytest.warns(DataWarning, match="duplicate") as seen:
        engine.fit(seeded(DPPopularity, **POP), tmp_path / "d")
    merged = [w for w in seen if issubclass(w.category, DataWarning)]
    assert sum(int(str(w.message).split()[0]) for w in merged) == 60  # as on one machine


@pytest.mark.parametrize(
    "kw",
    [
        {"ping_timeout": float("nan")},
        {"ping_timeout": -1},
        {"max_retries": 1.5},
        {"num_workers": "2"},
        {"num_workers": 1.5},
        {"num_workers": True},
        {"threads_per_worker": 0},
        {"object_store_memory": -5},
        {"address": 6379},
    ],
)
def test_bad_engine_arguments_are_config_errors_at_construction(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kw))):
        RayEngine(**kw)
