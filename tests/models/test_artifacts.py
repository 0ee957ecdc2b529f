"""A private model file holds only what its guarantee covers (issue 10, item 1).

Every kind of private model file privrec writes is opened member by member and must not
identify a training user: no user ids, no exact user or interaction count, no per-user array,
no training structure. The scanner itself is shown to fail on a file that does hold user data.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privrec.data import Interactions
from privrec.errors import (
    DataError,
    GuaranteeMismatchError,
    MissingUserDataError,
    PrivacyWarning,
    UnknownUserError,
)
from privrec.models import DPALS, DPEASE, DPPopularity, load_model

N_USERS = 437  # 19 × 23: no sampling rate written as a decimal is a multiple of 1/437


def members_data() -> Interactions:
    rng = np.random.default_rng(7)
    users, items = [], []
    pop = 1.0 / np.arange(1, 62) ** 0.8
    pop /= pop.sum()
    for u in range(N_USERS):
        n = int(rng.integers(6, 20))
        for i in rng.choice(61, size=n, replace=False, p=pop):
            users.append(f"member-{u:04d}-zq")
            items.append(f"item-{i:03d}")
    return Interactions.from_arrays(users, items)


@pytest.fixture(scope="module")
def data() -> Interactions:
    return members_data()


def _ids(data: Interactions) -> dict[str, Any]:
    return {
        "user_ids": [str(u) for u in data.user_ids],
        "counts": [data.n_users, data.nnz],
        "denominators": [data.n_users],
    }


def _fit(model: Any, data: Interactions, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # seeded noise in tests
        return model.fit(data, **kw)


PRIVATE = [
    pytest.param(
        lambda: DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0), id="dppopularity"
    ),
    pytest.param(
        lambda: DPEASE(epsilon=2.0, delta=1e-6, unit="user", head_min=20, seed=0), id="dpease"
    ),
    pytest.param(
        lambda: DPALS(epsilon=2.0, delta=1e-6, unit="user", factors=8, seed=0), id="dpals"
    ),
]


@pytest.mark.parametrize("make", PRIVATE)
def test_private_model_file_identifies_no_user(
    make: Any, data: Interactions, tmp_path: Path, no_user_data: Any
) -> None:
    model = _fit(make(), data)
    path = model.save(tmp_path / "model.npz")
    no_user_data(path, **_ids(data))
    again = load_model(path)
    # the user's own side still works: scores from a history, identical to the fitted model's
    hist = data.matrix[:5]
    np.testing.assert_array_equal(
        again.recommend_history(hist, k=5)[0], model.recommend_history(hist, k=5)[0]
    )
    assert again.n_items_ == data.n_items and again.n_users_ == 0
    with pytest.raises(MissingUserDataError, match="--history"):
        again.recommend_ids([str(data.user_ids[0])], k=3)
    with pytest.raises(MissingUserDataError):
        again.recommend([0], k=3)


def test_scanner_fails_on_a_file_with_user_data(
    data: Interactions, tmp_path: Path, scan: Any
) -> None:
    model = _fit(DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0), data)
    with pytest.warns(PrivacyWarning, match="does not cover"):
        path = model.save(tmp_path / "with-users.npz", include_user_data=True)
    problems = scan(path, **_ids(data))
    assert any("user-data member" in p for p in problems)
    assert any("user id" in p for p in problems)
    assert any("dimension 437" in p for p in problems)
    # whoever loads the file (e.g. `privrec recommend --history`) is told as well
    from privrec.models import load_model

    with pytest.warns(PrivacyWarning, match="outside the model's privacy guarantee"):
        load_model(path)


def test_scanner_flags_a_sampling_rate_that_reveals_the_count(tmp_path: Path, scan: Any) -> None:
    import json

    p = tmp_path / "x.json"
    p.write_text(json.dumps({"q": 100 / N_USERS, "recall": 0.2288}))
    assert scan(p, user_ids=[], counts=[N_USERS], denominators=[N_USERS]) == [
        f"x.json.q: {100 / N_USERS!r} = 100/{N_USERS} reveals a count"
    ]


def test_federated_mf_file_through_the_same_save_path(
    data: Interactions, tmp_path: Path, no_user_data: Any
) -> None:
    from privrec.federated.model import FederatedMF

    model = _fit(
        FederatedMF(epsilon=5.0, factors=4, rounds=3, sampling_rate=0.25, head_items=None, seed=0),
        data,
    )
    path = model.save(tmp_path / "fed.npz")
    no_user_data(path, **_ids(data))
    again = load_model(path)
    np.testing.assert_array_equal(
        again.recommend_history(data.matrix[:3], k=4)[0],
        model.recommend_history(data.matrix[:3], k=4)[0],
    )


@pytest.mark.parametrize("fraction", [0.9, 1.0])
def test_federated_dpals_file_states_no_survivor_count(
    data: Interactions, tmp_path: Path, no_user_data: Any, fraction: float
) -> None:
    """The threat model once said "sized for ≥ n_min honest survivors", n_min = ⌈fraction·n⌉:
    the exact user count (fraction 1) or within one of it. It now states the fraction."""
    import math

    from privrec.federated import FederatedDPALS

    model = _fit(
        FederatedDPALS(epsilon=2.0, delta=1e-6, factors=4, min_survivor_fraction=fraction, seed=0),
        data,
    )
    path = model.save(tmp_path / "fed-dpals.npz")
    ids = _ids(data)
    n_min = math.ceil(fraction * data.n_users)
    ids["counts"] = [*ids["counts"], n_min, n_min - 1, n_min + 1]
    no_user_data(path, **ids)
    assert f"{fraction:.0%} of the devices" in load_model(path).privacy_guarantee.threat_model


# Fixed in the federated area: q = clients_per_round / n_users is rounded up to two significant
# digits (FederatedMFConfig.sampling_probability), so the stored events no longer reveal n_users.
def test_federated_mf_clients_per_round_reveals_user_count(
    data: Interactions, tmp_path: Path, no_user_data: Any
) -> None:
    from privrec.federated.model import FederatedMF

    model = _fit(
        FederatedMF(
            epsilon=5.0, factors=4, rounds=3, clients_per_round=100, head_items=None, seed=0
        ),
        data,
    )
    no_user_data(model.save(tmp_path / "fed.npz"), **_ids(data))


def test_model_built_from_released_arrays_saves_loads_and_serves(
    data: Interactions, tmp_path: Path, no_user_data: Any
) -> None:
    fitted = _fit(DPALS(epsilon=2.0, delta=1e-6, unit="user", factors=8, seed=0), data)
    params = fitted.config().model_dump(mode="json")
    state = fitted._state()  # what cross-silo training hands over: released arrays only
    built = DPALS.from_release(
        params, item_ids=data.item_ids, state=state, guarantee=fitted.guarantee_
    )
    path = built.save(tmp_path / "silo.npz")
    no_user_data(path, **_ids(data))
    again = load_model(path)
    np.testing.assert_array_equal(
        again.recommend_history(data.matrix[:4], k=5)[0],
        fitted.recommend_history(data.matrix[:4], k=5)[0],
    )
    assert "Assumed public" in again.guarantee_.explain()
    with pytest.raises(GuaranteeMismatchError, match="delta"):
        DPALS.from_release(
            {**params, "delta": 1e-7},
            item_ids=data.item_ids,
            state=state,
            guarantee=fitted.guarantee_,
        )
    with pytest.raises(DataError, match="unique"):
        DPALS.from_release(
            params, item_ids=np.zeros(data.n_items), state=state, guarantee=fitted.guarantee_
        )


def test_explicit_catalogue_is_disclosed_and_adds_untouched_items(data: Interactions) -> None:
    catalogue = [*map(str, data.item_ids), "item-never-touched"]
    model = _fit(
        DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0), data, item_ids=catalogue
    )
    assert model.n_items_ == data.n_items + 1
    assert list(model.item_ids_) == catalogue
    g = model.guarantee_
    assert g.catalogue == "given"
    assert "passed explicitly" in g.explain()
    implicit = _fit(DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0), data)
    assert implicit.guarantee_.catalogue == "data"
    assert "taken from the training data" in implicit.guarantee_.explain()
    with pytest.raises(DataError, match="not in the given catalogue"):
        DPPopularity(epsilon=1.0, delta=1e-6, unit="user").fit(data, item_ids=catalogue[1:])


def test_unknown_user_on_a_model_with_user_data_is_still_a_key_error(data: Interactions) -> None:
    model = _fit(DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0), data)
    with pytest.raises(UnknownUserError):
        model.recommend_ids(["nobody"], k=2)


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_partial_one(
    data: Interactions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing straight into the target destroyed the good model on a full disk."""
    import privrec.models.persistence as persistence

    model = _fit(DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0), data)
    path = model.save(tmp_path / "m.npz")
    before = path.read_bytes()

    def full_disk(fh: Any, **arrays: Any) -> None:
        fh.write(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence.np, "savez_compressed", full_disk)
    with pytest.raises(OSError):
        model.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
