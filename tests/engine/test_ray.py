"""Private training on a real local Ray cluster equals single-machine training, release for release.

One cluster for the session (``ray_cluster``, 2 CPUs), tiny data. With the same seed the driver
draws the same noise and sampling salts as the single-machine ``fit``, and the workers sample
each user by their row in the whole data set, so the released arrays agree up to the order of
float sums — with the noise on (ε = 1) and with it negligible (ε = 10⁶).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privrec.engine import ParquetSource, RayEngine
from privrec.errors import ConfigError
from privrec.models import DPALS, DPEASE, DPPopularity
from privrec.models.dp_als import dpals_releases
from privrec.models.releases import Release

pytestmark = [
    pytest.mark.usefixtures("ray_cluster"),
    pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning"),
]

TOL = 1e-4  # float32 statistics summed in another order


def seeded(cls, **kw):  # type: ignore[no-untyped-def]
    """A private model with seeded noise (warns: not private — tests only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(seed=3, **kw)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _events(model: Any) -> list[dict[str, Any]]:
    return [e.to_dict() for e in model.privacy_guarantee.spent_events]


@pytest.fixture(scope="module")
def engine() -> Iterator[RayEngine]:
    eng = RayEngine(num_workers=2)  # its workers are reused from fit to fit on the same shards
    yield eng
    eng.shutdown()


@pytest.mark.parametrize(
    ("method", "epsilon", "extra"),
    [
        ("adaptive", 1.0, {}),  # lhs="none" (default), fixed B and k
        ("adaptive", 1.0, {"max_per_user": None, "factors": None}),  # data-adaptive B, k
        # α0 from the head's noisy density (post-processing of the same releases)
        ("adaptive", 1.0, {"max_per_user": None, "factors": None, "alpha0": "density"}),
        ("adaptive", 1.0, {"lhs": "diagonal"}),
        ("adaptive", 1.0, {"lhs": "full"}),
        ("uniform", 1e6, {}),
        ("tail", 1e6, {"lhs": "full"}),
    ],
)
def test_dpals_equals_single_machine(
    engine: RayEngine,
    small_data: Any,
    shards: Path,
    method: str,
    epsilon: float,
    extra: dict[str, Any],
) -> None:
    kw = dict(epsilon=epsilon, delta=1e-6, unit="user", factors=8, method=method,
              max_per_user=10, head_min=60) | extra  # fmt: skip
    steps: list[tuple[int, int]] = []
    one = seeded(DPALS, **kw).fit(small_data)
    dist = engine.fit(seeded(DPALS, **kw), shards, progress=lambda d, t: steps.append((d, t)))
    assert np.array_equal(one.head_items_, dist.head_items_)
    assert max_diff(one.noisy_counts_, dist.noisy_counts_) < 1e-9  # integer counts, same noise
    assert max_diff(one.item_factors_, dist.item_factors_) < TOL * max(
        1.0, float(np.abs(one.item_factors_).max())
    )
    assert _events(one) == _events(dist)
    assert (one.max_per_user_, one.count_sample_, one.factors_) == (
        dist.max_per_user_, dist.count_sample_, dist.factors_
    )  # fmt: skip
    assert dist.popularity_shrinkage_ == pytest.approx(one.popularity_shrinkage_)
    assert dist.privacy_guarantee.epsilon == pytest.approx(one.privacy_guarantee.epsilon)
    assert steps == [(i + 1, one.iterations_) for i in range(one.iterations_)]
    # the tree reduce moved the statistics: W × (Gramian + per-item lhs/rhs) per step, + counts
    assert engine.last_group is not None and engine.last_group.bytes_reduced > 0


@pytest.mark.parametrize(
    ("epsilon", "extra"),
    [
        (1e6, {}),  # noise negligible: the released statistics themselves agree (lhs="none")
        (1e6, {"lhs": "full", "method": "tail"}),
        (1.0, {"max_per_user": None, "factors": None, "lhs": "diagonal"}),  # + length histogram
    ],
)
def test_dpals_release_hook_sees_what_one_machine_shows(
    engine: RayEngine, small_data: Any, shards: Path, epsilon: float, extra: dict[str, Any]
) -> None:
    """``on_release`` on the engine: the same releases as ``dpals_releases`` and as the
    single-machine hook (labels, order, steps, noise, events, items), and with the same seed the
    same arrays up to the order of float sums."""
    kw = dict(epsilon=epsilon, delta=1e-6, unit="user", factors=8, max_per_user=10,
              head_min=60) | extra  # fmt: skip
    one_seen: list[Release] = []
    dist_seen: list[Release] = []
    one = seeded(DPALS, **kw).fit(small_data, on_release=one_seen.append)
    model = seeded(DPALS, **kw)
    dist = engine.fit(model, shards, on_release=dist_seen.append)
    c = dist.config()
    adaptive = c.max_per_user is None or c.factors is None
    planned = dpals_releases(
        dist.noise_scale_,
        dist.iterations_,
        c.nominal_bound if c.max_per_user is None else c.max_per_user,
        dist._ratios(c),
        c.length_noise_ratio if adaptive else None,
        c.lhs,
    )
    assert [r.label for r in dist_seen] == [p.label for p in planned]
    # with the histogram the counts' share is read from it: the counts and the steps then run at
    # the split's multipliers, which the single machine's fit reads alike (compared below)
    assert dist.count_noise_multiplier_ == pytest.approx(one.count_noise_multiplier_, rel=1e-12)
    assert len(dist_seen) == len(one_seen)
    assert [e.to_dict() for e in dist.privacy_guarantee.spent_events] == [
        e.to_dict() for e in one.privacy_guarantee.spent_events
    ]
    assert any(r.name == "lengths" for r in dist_seen) == adaptive
    for a, b in zip(one_seen, dist_seen, strict=True):
        assert (a.label, a.name, a.step, a.event) == (b.label, b.name, b.step, b.event)
        assert b.noise_std == pytest.approx(a.noise_std, rel=1e-12)
        assert b.sensitivity == pytest.approx(a.sensitivity, rel=1e-12)
        assert not b.value.flags.writeable and a.value.shape == b.value.shape
        scale = max(1.0, float(np.abs(a.value).max()))
        assert max_diff(a.value, b.value) < TOL * scale, b.label
        for attr in ("items", "item_factors"):
            x, y = getattr(a, attr), getattr(b, attr)
            assert (x is None) == (y is None), (b.label, attr)
            if x is not None:
                assert max_diff(x, y) < TOL * max(1.0, float(np.abs(x).max())), (b.label, attr)
    # what the last step's users were solved from, and the counts, are what the model keeps
    assert np.array_equal(dist_seen[-1].items, dist.head_items_)  # type: ignore[arg-type]
    counts = next(r for r in dist_seen if r.name == "counts")
    assert np.allclose(counts.value, dist.noisy_counts_, rtol=1e-6, atol=1e-4)
    assert model._on_release is None  # a fit argument: cleared after the fit


def test_release_hook_on_the_engine_is_dpals_only(engine: RayEngine, shards: Path) -> None:
    model = seeded(DPPopularity, epsilon=1.0, delta=1e-6, unit="user", max_per_user=10)
    with pytest.raises(ConfigError, match="on_release"):
        engine.fit(model, shards, on_release=lambda r: None)
    assert not hasattr(model, "guarantee_")


@pytest.mark.parametrize(("unit", "bound"), [("user", 10), ("interaction", 10), ("user", None)])
def test_dpease_and_dppopularity_equal_single_machine(
    engine: RayEngine, small_data: Any, shards: Path, unit: str, bound: int | None
) -> None:
    # bound None: data-adaptive B (and DPEASE's C) from the noisy length histogram
    kw: dict[str, Any] = dict(epsilon=2.0, delta=1e-6, unit=unit, max_per_user=bound)
    a, b = (
        seeded(DPPopularity, **kw).fit(small_data),
        engine.fit(seeded(DPPopularity, **kw), shards),
    )
    assert max_diff(a.item_popularity_, b.item_popularity_) < 1e-5
    assert _events(a) == _events(b)
    assert a.max_per_user_ == b.max_per_user_
    a, b = seeded(DPEASE, **kw).fit(small_data), engine.fit(seeded(DPEASE, **kw), shards)
    assert np.array_equal(a.head_items_, b.head_items_)
    assert max_diff(a.weights_, b.weights_) < 1e-6
    assert _events(a) == _events(b)
    assert (a.max_per_user_, a.max_contribution_) == (b.max_per_user_, b.max_contribution_)
    assert b.popularity_shrinkage_ == pytest.approx(a.popularity_shrinkage_)
    # the low-signal fallback (prior and β) is the same post-processing on both
    assert (b.popularity_blend_, b.signal_fraction_) == (a.popularity_blend_, a.signal_fraction_)
    assert max_diff(a.item_popularity_, b.item_popularity_) < 1e-5


def test_the_model_file_holds_no_user_data(engine: RayEngine, shards: Path, tmp_path: Path) -> None:
    model = engine.fit(
        seeded(DPALS, epsilon=1.0, delta=1e-6, unit="user", factors=4, iterations=1), shards
    )
    path = model.save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
    assert not any("user" in n for n in names), names
    loaded = DPALS.load(path)
    assert loaded.n_users_ == 0 and len(loaded.item_ids_) == 120
    recs, _ = loaded.recommend_history(np.ones((1, 120), dtype=np.float32), k=5)
    assert recs.shape == (1, 5)


def test_a_non_distributed_model_is_refused(engine: RayEngine, shards: Path) -> None:
    from privrec.models.base import MODEL_REGISTRY

    with pytest.raises(ConfigError, match="no distributed implementation"):
        engine.fit(MODEL_REGISTRY["popularity"](), shards)


@pytest.mark.parametrize("cls", [DPALS, DPPopularity])
def test_protection_tiers_are_refused_before_any_release(
    engine: RayEngine, shards: Path, cls: Any
) -> None:
    # each user's requested ε is not in the shards: refused, nothing planned or spent
    model = seeded(cls, epsilon=3.0, delta=1e-6, unit="user", tiers=(0.5, 1.0))
    with pytest.raises(ConfigError, match="protection tiers"):
        engine.fit(model, shards)
    assert not hasattr(model, "guarantee_")


def test_worker_killed_mid_step_is_replaced_and_the_ledger_charged_once(
    engine: RayEngine, small_data: Any, shards: Path, tmp_path: Path
) -> None:
    """A worker dies while step 2's statistics are computed: the step is retried from the
    broadcast item factors on a fresh worker, the result equals the single-machine one, and the
    ledger holds exactly one charge for the Ray training."""
    import ray

    from privrec.engine.governed import train_on_ray
    from privrec.governance import Ledger
    from privrec.governance.policy import policy_from_dict
    from privrec.governance.training import train

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    owner, _ = Ledger.init(url, owner="olga")
    owner.set_policy(
        "ratings",
        policy_from_dict({
            "purpose": "recommendations", "unit": "user", "columns": ["user", "item", "timestamp"],
            "max_interactions_per_user": 25, "budget": {"epsilon": 10.0, "delta": 1e-5},
        }),
    )  # fmt: skip
    owner.forget("ratings", small_data.user_ids[7])
    ann = Ledger.connect(url, owner.create_key("ann", "analyst"))
    kw = dict(epsilon=1.0, delta=1e-6, unit="user", factors=8, iterations=3, max_per_user=10,
              head_min=60)  # fmt: skip

    single = train(
        ann, seeded(DPALS, **kw), ann.load("ratings", small_data), output=tmp_path / "one.npz"
    )
    before = len(owner.history("ratings"))

    step_calls: list[str] = []
    killed: list[int] = []

    def kill_during_step_two(name: str, actors: list[Any]) -> None:
        if name == "dpals_step":
            step_calls.append(name)
            if len(step_calls) == 2:  # the second step's tasks were just submitted
                ray.kill(actors[1], no_restart=True)
                killed.append(1)

    engine.after_submit = kill_during_step_two
    try:
        dist, path, charge = train_on_ray(
            ann, seeded(DPALS, **kw), engine, ParquetSource.open(shards), dataset="ratings",
            output=tmp_path / "d.npz",
        )  # fmt: skip
    finally:
        engine.after_submit = None
    assert killed and engine.last_group is not None and engine.last_group.replaced == 1
    assert engine.last_policy_report.users_out == single.model.user_items_.shape[0]
    assert engine.last_policy_report.step("deletion").users_dropped == 1
    assert max_diff(single.model.item_factors_, dist.item_factors_) < TOL
    history = owner.history("ratings")
    assert len(history) == before + 1  # one charge for the Ray training, despite the retry
    assert charge.status == "committed" and path.exists()
    assert _events(single.model) == _events(dist)


def test_a_worker_that_died_between_fits_is_replaced(
    engine: RayEngine, small_data: Any, shards: Path
) -> None:
    import ray

    kw: dict[str, Any] = dict(epsilon=2.0, delta=1e-6, unit="user", max_per_user=10)
    engine.fit(seeded(DPPopularity, **kw), shards)
    assert engine.last_group is not None
    ray.kill(engine.last_group.actors[0], no_restart=True)  # an idle worker dies
    b = engine.fit(seeded(DPPopularity, **kw), shards)
    a = seeded(DPPopularity, **kw).fit(small_data)
    assert max_diff(a.item_popularity_, b.item_popularity_) < 1e-5


def test_a_replacement_worker_reading_changed_files_stops_the_fit(
    engine: RayEngine, shards: Path, tmp_path: Path
) -> None:
    """A shard file changes mid-fit and a worker dies: its replacement would train on other
    data than the rest of the fit (and than a ledger's recorded hash) — EngineError instead."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from privrec.errors import EngineError

    work = tmp_path / "changing"
    shutil.copytree(shards, work)
    calls: list[str] = []

    def change_then_kill(name: str, actors: list[Any]) -> None:
        if name == "dpals_step" and not calls:
            calls.append(name)
            for _, f in ParquetSource.open(work).shard_files():  # every file changes
                t = pq.read_table(f)
                pq.write_table(pa.concat_tables([t, t.slice(0, 5)]), f)
            ray.kill(actors[1], no_restart=True)

    engine.after_submit = change_then_kill
    try:
        kw: dict[str, Any] = dict(epsilon=1.0, delta=1e-6, unit="user", factors=4, iterations=2)
        with pytest.raises(EngineError, match="changed since the fit began"):
            engine.fit(seeded(DPALS, **kw), work)
    finally:
        engine.after_submit = None


def test_a_ray_training_is_a_dataset_version_deletions_and_lineage_see(
    engine: RayEngine, small_data: Any, shards: Path, tmp_path: Path
) -> None:
    """A hostile review found Ray-trained governed models registered no dataset version: a
    deletion request landing while the workers loaded was not enforced, and lineage and
    retraining duties never listed the artifact. Now the workers' result is a version (keyed
    member hashes, merged report) and the charge is reserved against it."""
    from privrec.engine.governed import train_on_ray
    from privrec.errors import StaleDataError
    from privrec.governance import Ledger
    from privrec.governance.policy import policy_from_dict

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    owner, _ = Ledger.init(url, owner="olga")
    owner.set_policy(
        "ratings",
        policy_from_dict({
            "purpose": "recommendations", "unit": "user",
            "budget": {"epsilon": 10.0, "delta": 1e-5}, "deletion": {"retrain_within_days": 30},
        }),
    )  # fmt: skip
    ann = Ledger.connect(url, owner.create_key("ann", "analyst"))
    victim, member = small_data.user_ids[5], small_data.user_ids[6]

    def model() -> DPPopularity:
        return DPPopularity(epsilon=1.0, delta=1e-6, unit="user")

    fired: list[bool] = []

    def forget_while_loading(n_users: int, nnz: int) -> None:
        if not fired:
            fired.append(True)
            owner.forget("ratings", victim, reason="erasure request")

    with pytest.raises(StaleDataError, match="load it again"):
        train_on_ray(
            ann, model(), engine, ParquetSource.open(shards), dataset="ratings",
            output=tmp_path / "a.npz", on_loaded=forget_while_loading,
        )  # fmt: skip
    assert fired and ann.history("ratings") == [] and not (tmp_path / "a.npz").exists()
    # filtered again: the victim is gone, the training is a version its members can trace
    _, path, charge = train_on_ray(
        ann, model(), engine, ParquetSource.open(shards), dataset="ratings",
        output=tmp_path / "b.npz",
    )  # fmt: skip
    assert charge.status == "committed" and charge.version_id is not None
    (entry,) = owner.lineage_of_user(member, "ratings")
    assert entry.artifact.version_id == charge.version_id and entry.artifact.path == str(path)
    assert owner.lineage_of_user(victim, "ratings") == []
    owner.forget("ratings", member, reason="erasure request")
    assert owner.retrains_due("ratings")
