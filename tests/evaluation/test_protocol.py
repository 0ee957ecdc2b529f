"""evaluate(): calls the model contract, reports tables, groups and anchors on real data."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import DataError
from privrec.evaluation import (
    EvaluationResult,
    evaluate,
    leave_last_out,
    load_split,
    per_user_metrics,
    random_holdout,
    split_from_interactions,
    strong_generalization,
)
from privrec.evaluation.protocol import approx_count, round_count
from privrec.models.ranking import mask_seen, top_k


class FixedOrder:
    """Fake model: ranks items by one fixed global order, honouring ``exclude_seen``.

    Records every call so tests can check how ``evaluate`` uses the contract.
    """

    name = "fixed-order"

    def __init__(self, train: Interactions, order: np.ndarray | None = None) -> None:
        self.seen = train.matrix
        n = train.n_items
        order = np.arange(n) if order is None else np.asarray(order)
        self.score = np.empty(n, dtype=np.float32)
        self.score[order] = np.arange(n, 0, -1, dtype=np.float32)  # first in order scores highest
        self.calls: list[tuple[str, int, int]] = []

    def _rank(
        self, seen: sp.csr_matrix, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        s = np.tile(self.score, (seen.shape[0], 1))
        if exclude_seen:
            mask_seen(s, seen)
        return top_k(s, k)

    def recommend(
        self, user_ids: Any, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(user_ids)
        self.calls.append(("recommend", users.size, k))
        return self._rank(sp.csr_matrix(self.seen[users]), k, exclude_seen)

    def recommend_history(
        self, user_items: Any, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        hist = sp.csr_matrix(user_items)
        self.calls.append(("recommend_history", hist.shape[0], k))
        return self._rank(hist, k, exclude_seen)


def _data(seed: int = 0, n_users: int = 40, n_items: int = 25) -> Interactions:
    rng = np.random.default_rng(seed)
    # heavier users further down, so activity groups differ
    p = np.linspace(0.05, 0.6, n_users)[:, None]
    u, i = np.nonzero(rng.random((n_users, n_items)) < p)
    return Interactions.from_arrays(u, i, user_ids=np.arange(n_users), item_ids=np.arange(n_items))


# ----------------------------------------------------------------------------- hand case
@pytest.fixture
def tiny() -> tuple[Any, FixedOrder]:
    users = ["u0", "u1", "u2"]
    train = Interactions.from_arrays(
        ["u0", "u1", "u2"], [0, 1, 2], user_ids=users, item_ids=range(5)
    )
    test = Interactions.from_arrays(
        ["u0", "u0", "u1"], [1, 2, 0], user_ids=users, item_ids=range(5)
    )
    split = split_from_interactions(train, test)
    return split, FixedOrder(split.train)


def test_hand_case(tiny: tuple[Any, FixedOrder]) -> None:
    split, model = tiny
    r = evaluate(model, split, k=(1, 2), groups=None)
    # order 0,1,2,3,4 minus training items: u0 -> [1, 2], u1 -> [0, 2]; u2 has no target
    assert r.n_users == 2 and r.n_users_without_targets == 1
    assert r.metric("recall", 1) == 1.0
    assert r.metric("recall", 2) == 1.0
    assert r.metric("precision", 2) == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert r.metric("ndcg", 2) == 1.0
    assert r.metric("coverage", 1) == pytest.approx(2 / 5)  # items 1 and 0
    assert r.metric("coverage", 2) == pytest.approx(3 / 5)  # items 0, 1, 2
    assert r.model == "fixed-order" and r.on == "test" and r.protocol == "given split"
    assert model.calls == [("recommend", 2, 2)]  # users without targets are not scored


def test_result_accessors_and_rendering(tiny: tuple[Any, FixedOrder]) -> None:
    split, model = tiny
    r = evaluate(model, split, k=(1, 2), groups=2)
    assert isinstance(r, EvaluationResult)
    assert r.metric("Recall", 2) == r.metric("recall", 2)
    with pytest.raises(KeyError, match="unknown metric"):
        r.metric("auc", 2)
    with pytest.raises(KeyError, match="k=20"):
        r.metric("recall", 20)
    assert list(r.table.index) == [
        "recall",
        "ndcg",
        "precision",
        "hitrate",
        "map",
        "mrr",
        "coverage",
    ]
    assert list(r.table.columns) == [1, 2]
    text = str(r)
    assert "fixed-order" in text and "recall" in text and "@2" in text
    assert "< 10 without targets" in text and "< 10 users" in text
    # a group of fewer than 10 users: its metrics (one or two people's own) are withheld
    assert text.splitlines()[-1].split()[:2] == ["Q1", "<"] and "—" in text.splitlines()[-1]
    assert "recall@2" in repr(r)
    d = r.to_dict(exact=True)
    again = json.loads(json.dumps(d))
    assert again["metrics"]["recall"]["2"] == 1.0
    assert again["n_users"] == 2 and again["k"] == [1, 2]
    assert sum(g["n_users"] for g in again["per_group"]) == 2
    # what leaves the machine (evaluate --json): no exact counts, no history lengths
    public = json.loads(json.dumps(r.to_dict()))
    assert public["n_users"] == "< 10" and "n_users" not in public["per_group"][0]
    assert public["per_group"][0]["group"] == "Q1" and "min_history" not in public["per_group"][0]
    assert public["per_group"][0]["recall@2"] is None and "withheld" in public["per_group"][0]


def test_to_dict_turns_nan_into_none() -> None:
    train = Interactions.from_arrays([0, 1], [0, 1])
    empty = Interactions.from_arrays([], [], user_ids=[0, 1], item_ids=[0, 1])
    split = split_from_interactions(train, empty)
    r = evaluate(FixedOrder(split.train), split, k=1)
    assert r.n_users == 0 and r.n_users_without_targets == 2
    assert r.to_dict()["metrics"]["recall"]["1"] is None
    assert math.isnan(r.metric("recall", 1))
    str(r)


# ----------------------------------------------------------------------------- weak / strong
def test_weak_matches_direct_metrics_and_excludes_training_items() -> None:
    data = _data()
    split = random_holdout(data, test_fraction=0.3, seed=4)
    order = np.random.default_rng(1).permutation(data.n_items)
    model = FixedOrder(split.train, order)
    r = evaluate(model, split, k=(3, 5), groups=3)

    top, _ = model.recommend(split.test.users, 5)
    seen = split.train.matrix[split.test.users].toarray() != 0
    assert not np.take_along_axis(seen, np.maximum(top, 0), axis=1)[top >= 0].any()
    direct = per_user_metrics(top, split.test.targets, (3, 5)).mean()
    for name in ("recall", "ndcg", "precision", "hitrate", "map", "mrr"):
        for k in (3, 5):
            assert r.metric(name, k) == pytest.approx(direct[name][k])
    assert r.per_user.shape[0] == r.n_users
    assert r.per_user["history"].tolist() == split.train.user_counts[split.test.users].tolist()


def test_batches_give_the_same_result() -> None:
    data = _data(1)
    split = random_holdout(data, seed=2)
    m1, m2 = FixedOrder(split.train), FixedOrder(split.train)
    a = evaluate(m1, split, k=(2, 4), batch_size=7)
    b = evaluate(m2, split, k=(2, 4))
    assert a.table.equals(b.table)
    assert len(m1.calls) == math.ceil(a.n_users / 7) and len(m2.calls) == 1
    assert all(c == ("recommend", c[1], 4) for c in m1.calls)  # asked once for max k


def test_strong_uses_recommend_history_and_excludes_fold_in() -> None:
    data = _data(2, n_users=60)
    split = strong_generalization(data, 10, seed=3)
    model = FixedOrder(split.train)
    r = evaluate(model, split, k=(5, 10), on="test")
    assert {c[0] for c in model.calls} == {"recommend_history"}
    assert r.protocol == "strong_generalization"
    assert r.per_user["history"].tolist() == np.diff(split.test.fold_in.indptr).tolist()  # type: ignore[union-attr]
    top, _ = model.recommend_history(split.test.fold_in, 10)
    direct = per_user_metrics(top, split.test.targets, (5, 10)).mean()
    assert r.metric("ndcg", 10) == pytest.approx(direct["ndcg"][10])
    rv = evaluate(model, split, k=5, on="valid")
    assert rv.on == "valid" and rv.n_users == 10


def test_activity_groups_have_ranges_in_labels() -> None:
    data = _data(3, n_users=80)
    split = random_holdout(data, seed=0)
    r = evaluate(FixedOrder(split.train), split, k=(5, 10), groups=4)
    pg = r.per_group
    assert len(pg) == 4
    assert int(pg["n_users"].sum()) == r.n_users
    # labels carry the quantile edges between groups (exact below 100), not the users' extremes
    for label, row in pg.iterrows():
        m = re.fullmatch(r"Q(\d) \((?:≤ (\d+)|(\d+)–(\d+)|≥ (\d+))\)", str(label))
        assert m is not None, label
        if m[2] is not None:
            assert row["max_history"] <= int(m[2])
        elif m[5] is not None:
            assert row["min_history"] >= int(m[5])
        else:
            assert int(m[3]) <= row["min_history"] <= row["max_history"] <= int(m[4])
    assert str(pg.index[0]).startswith("Q1 (≤") and str(pg.index[-1]).startswith("Q4 (≥")
    assert (np.diff(pg["min_history"].to_numpy()) > 0).all()  # ordered by activity
    assert {"recall@5", "ndcg@5", "recall@10", "ndcg@10"} <= set(pg.columns)
    # group means weighted by size give the overall mean
    overall = (pg["recall@10"] * pg["n_users"]).sum() / pg["n_users"].sum()
    assert overall == pytest.approx(r.metric("recall", 10))


def _exact(n: int) -> str:
    """A regex for ``n`` printed as a number of its own (not part of 0.4370 or 1437)."""
    return rf"(?<![\w.,]){n:,}(?!\w)|(?<![\w.,]){n}(?!\w)"


def test_printed_evaluation_hides_exact_counts_and_the_heaviest_history() -> None:
    # 437 users with 8..130 items, one with 590: "Q4 (119–590)" would print that person's count
    rng = np.random.default_rng(0)
    n_users, n_items = 438, 700
    sizes = np.r_[rng.integers(8, 131, n_users - 1), 590]
    u = np.repeat(np.arange(n_users), sizes)
    i = np.concatenate([rng.choice(n_items, s, replace=False) for s in sizes])
    split = random_holdout(Interactions.from_arrays(u, i), test_fraction=0.2, seed=0)
    r = evaluate(FixedOrder(split.train), split, k=(5, 10), groups=4)
    heaviest = int(r.per_group["max_history"].max())
    assert heaviest > 400 and r.n_users > 400  # the exact values exist in-process
    sizes_ = [int(n) for n in r.per_group["n_users"]]
    outputs = {
        "str": str(r),
        "repr": repr(r),
        "groups_table": r.groups_table().to_string(),
        "json": json.dumps(r.to_dict()),
    }
    for name, text in outputs.items():
        for n in (heaviest, r.n_users, *sizes_):
            if round_count(n) == n:  # e.g. 110 prints as "≈ 110" and gives nothing away
                continue
            assert re.search(_exact(n), text) is None, (name, n)
    assert "≈ 440" in outputs["str"] and "Q4 (≥" in outputs["str"]
    assert "min_history" not in outputs["str"] and "max_history" not in outputs["groups_table"]


def test_ties_collapse_groups() -> None:
    # every evaluated user has the same training count: one group, not four empty ones
    n_users, n_items = 12, 10
    u = np.repeat(np.arange(n_users), 5)
    i = (np.arange(5)[None, :] + np.arange(n_users)[:, None]).ravel() % n_items
    split = random_holdout(Interactions.from_arrays(u, i), test_fraction=0.2, seed=0)
    r = evaluate(FixedOrder(split.train), split, k=3, groups=4)
    assert list(r.per_group.index) == ["Q1 (≤ 4)"]
    assert evaluate(FixedOrder(split.train), split, k=3, groups=None).per_group.empty


def test_argument_errors(tiny: tuple[Any, FixedOrder]) -> None:
    split, model = tiny
    with pytest.raises(DataError, match="no validation"):
        evaluate(model, split, on="valid")
    with pytest.raises(DataError):
        evaluate(model, split, on="train")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        evaluate(model, split, k=0)
    with pytest.raises(DataError):
        evaluate(model, split, batch_size=0)
    with pytest.raises(DataError, match="unknown metric"):
        evaluate(model, split, metrics=["auc"])


def test_wrong_shaped_model_output_is_reported(tiny: tuple[Any, FixedOrder]) -> None:
    split, _ = tiny

    class Broken(FixedOrder):
        def recommend(
            self, user_ids: Any, k: int = 10, exclude_seen: bool = True
        ) -> tuple[np.ndarray, np.ndarray]:
            return np.zeros(3, dtype=np.int64), np.zeros(3)

    with pytest.raises(DataError, match="wrong shape"):
        evaluate(Broken(split.train), split)


def test_metric_subset(tiny: tuple[Any, FixedOrder]) -> None:
    split, model = tiny
    r = evaluate(model, split, k=2, metrics=["NDCG", "coverage"])
    assert list(r.table.index) == ["ndcg", "coverage"]
    assert list(r.per_group.columns) == ["n_users", "min_history", "max_history", "ndcg@2"]


# ----------------------------------------------------------------------------- real data
class Popularity:
    """Most-popular items by training count, without the user's own items.

    Vectorised without a dense users × items block: only the ``k + longest
    history`` most popular items can make any user's list.
    """

    name = "popularity"

    def __init__(self, train: Interactions) -> None:
        self.seen = train.matrix
        self.counts = np.asarray(train.item_counts, dtype=np.float64)
        self.order = np.argsort(-self.counts, kind="stable")

    def _rank(self, seen: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.order.size)
        width = min(k + int(np.diff(seen.indptr).max(initial=0)), self.order.size)
        cand = self.order[:width]
        keep = seen[:, cand].toarray() == 0
        pos = np.cumsum(keep, axis=1)
        items = np.full((seen.shape[0], k), -1, dtype=np.int64)
        r, c = np.nonzero(keep & (pos <= k))
        items[r, pos[r, c] - 1] = cand[c]
        return items, np.where(items >= 0, self.counts[np.maximum(items, 0)], -np.inf)

    def recommend(
        self, user_ids: Any, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._rank(sp.csr_matrix(self.seen[np.asarray(user_ids)]), k)

    def recommend_history(
        self, user_items: Any, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._rank(sp.csr_matrix(user_items), k)


def test_popularity_helper_matches_dense_ranking() -> None:
    data = _data(5)
    pop = Popularity(data)
    dense = FixedOrder(data, pop.order)
    users = np.arange(data.n_users)
    assert np.array_equal(pop.recommend(users, 7)[0], dense.recommend(users, 7)[0])


@pytest.mark.realdata
def test_popularity_anchor_ml1m(dataset) -> None:  # type: ignore[no-untyped-def]
    split = load_split(dataset("ml-1m-implicit-r3"), merge_valid_into_train=True)
    r = evaluate(Popularity(split.train), split, k=(10, 20, 50))
    assert r.n_users == 6038
    assert r.metric("recall", 20) == pytest.approx(0.183, abs=0.005)  # published anchor
    assert len(r.per_group) == 4


@pytest.mark.realdata
def test_popularity_gowalla(dataset) -> None:  # type: ignore[no-untyped-def]
    split = load_split(dataset("gowalla-lightgcn"), merge_valid_into_train=True)
    r = evaluate(Popularity(split.train), split, k=20, groups=None)
    assert r.n_users == 29_858
    # measured 0.0428 when this test was written; a regression guard, not a published anchor
    assert r.metric("recall", 20) == pytest.approx(0.0428, abs=0.002)


@pytest.mark.parametrize("protocol", ["random_holdout", "leave_last_out", "strong"])
def test_end_to_end_on_synthetic_data(protocol: str) -> None:
    from privrec.data.synthetic import synthetic

    data = synthetic(300, 120, 20, rank=4, popularity_exponent=1.0, seed=0)
    if protocol == "random_holdout":
        split = random_holdout(data, test_fraction=0.2, valid_fraction=0.1, seed=0)
    elif protocol == "leave_last_out":
        split = leave_last_out(data, n=2)
    else:
        split = strong_generalization(data, 0.1, seed=0)
    pop = evaluate(Popularity(split.train), split, k=(10, 20))
    worst = evaluate(
        FixedOrder(split.train, Popularity(split.train).order[::-1]), split, k=(10, 20)
    )
    assert pop.n_users > 0
    # on popularity-skewed data the most popular items beat the least popular ones
    assert pop.metric("recall", 20) > worst.metric("recall", 20)
    assert evaluate(Popularity(split.train), split, k=10, on="valid").n_users > 0


def test_public_hit_rates_and_precision_do_not_pin_the_user_count() -> None:
    """Hit rate is (users with a hit) / n: at 4 decimals a few of them gave n = 942 exactly
    while n_users said "≈ 940". Count ratios are written to 2 decimals, the rest to 4."""
    from privrec.data import synthetic
    from privrec.evaluation import random_holdout
    from privrec.models.popularity import Popularity

    data = synthetic(n_users=137, n_items=40, seed=3)
    split = random_holdout(data, 0.2, seed=0)
    r = evaluate(
        Popularity().fit(split.train), split, k=(5, 10), metrics=("hitrate", "precision", "recall")
    )
    public = r.to_dict()["metrics"]
    exact = r.to_dict(exact=True)["metrics"]
    for name in ("hitrate", "precision"):
        for k, v in public[name].items():
            assert v == round(exact[name][k], 2)
    assert all(v == round(exact["recall"][k], 4) for k, v in public["recall"].items())


def test_counts_and_small_groups_leave_the_process_blurred() -> None:
    """A reviewer found "≈ 1" users and one user's exact recall and history length in a group of
    one, and "≈ 98" (exact) counts: below 10 a count prints as "< 10", below 100 to the nearest
    ten, and a group of fewer than 10 users has its metrics and history range withheld."""
    assert [approx_count(n) for n in (0, 1, 9, 10, 14, 98, 937)] == [
        "0", "< 10", "< 10", "≈ 10", "≈ 10", "≈ 100", "≈ 940",
    ]  # fmt: skip
    from privrec.data import synthetic

    data = synthetic(n_users=60, n_items=30, seed=0)
    split = random_holdout(data, 0.2, seed=0)
    r = evaluate(Popularity(split.train), split, k=(5,), groups=10)
    small = r.per_group["n_users"].to_numpy() < 10
    assert small.sum() >= 3 and not small.all()  # 60 users in up to 10 groups
    table = r.groups_table()
    metrics = table.drop(columns=["users"])
    assert metrics[small].isna().all().all() and metrics[~small].notna().all().all()
    labels = [str(label) for label in table.index]
    assert all(" " not in lab for lab, s in zip(labels, small, strict=True) if s)  # no "(13–13)"
    public = r.to_dict()
    got = [g["recall@5"] is None for g in public["per_group"]]
    assert got == small.tolist()


def test_a_lone_small_group_cannot_be_recovered_from_the_overall_mean() -> None:
    """A reviewer read a lone heavy user's recall (≈ 0.336 for 1/3) off the overall mean less
    the one shown group's mean (~100 users): with withheld groups holding fewer than
    MIN_GROUP_USERS users together, the smallest shown groups are withheld too."""
    from privrec.evaluation.protocol import MIN_GROUP_USERS, shown_groups

    assert shown_groups([96, 1]) == [False, False]
    assert shown_groups([50, 30, 3]) == [True, False, False]
    assert shown_groups([50, 30, 3, 8]) == [True, True, False, False]  # 11 withheld already
    assert shown_groups([50, 30]) == [True, True] and shown_groups([]) == []
    rng = np.random.default_rng(0)
    n, n_items = 97, 50
    tu: list[int] = []
    ti: list[int] = []
    su: list[int] = []
    si: list[int] = []
    for u in range(n):
        h = 5 if u < n - 1 else 30  # one heavy user: a group of one
        items = rng.choice(n_items, h + 3, replace=False)
        tu += [u] * h
        ti += list(items[:h])
        su += [u] * 3
        si += list(items[h:])
    split = split_from_interactions(
        Interactions.from_arrays(tu, ti, user_ids=np.arange(n), item_ids=np.arange(n_items)),
        Interactions.from_arrays(su, si, user_ids=np.arange(n), item_ids=np.arange(n_items)),
    )
    r = evaluate(Popularity(split.train), split, k=(10,), groups=4)
    assert sorted(r.per_group["n_users"].tolist()) == [1, n - 1]
    public = r.to_dict()
    assert all(g["recall@10"] is None for g in public["per_group"])
    assert r.groups_table().drop(columns=["users"]).isna().all().all()
    assert all(" " not in str(lab) for lab in r.groups_table().index)
    from privrec.report.compare import _metrics  # the HTML report's quartile columns too

    _, quartiles = _metrics(r, 10)
    assert all(math.isnan(v) for q in quartiles.values() for v in q.values())
    assert MIN_GROUP_USERS == 10


def test_an_evaluation_of_fewer_than_ten_users_withholds_its_metrics() -> None:
    """A reviewer read one user's exact recall off ``privrec evaluate`` of a one-user test set
    (the count said "< 10", the metrics beside it were that person's own): the outward forms
    withhold them; ``exact=True`` (in-process) keeps them."""
    from privrec.evaluation.protocol import MIN_GROUP_USERS
    from privrec.report.compare import _metrics

    n, n_items = MIN_GROUP_USERS - 1, 30
    rng = np.random.default_rng(1)
    tu: list[int] = []
    ti: list[int] = []
    su: list[int] = []
    si: list[int] = []
    for u in range(n):
        items = rng.choice(n_items, 8, replace=False)
        tu += [u] * 6
        ti += list(items[:6])
        su += [u] * 2
        si += list(items[6:])
    split = split_from_interactions(
        Interactions.from_arrays(tu, ti, user_ids=np.arange(n), item_ids=np.arange(n_items)),
        Interactions.from_arrays(su, si, user_ids=np.arange(n), item_ids=np.arange(n_items)),
    )
    r = evaluate(Popularity(split.train), split, k=(5,), groups=None)
    assert r.withheld
    public = r.to_dict()
    assert public["withheld"] == f"fewer than {MIN_GROUP_USERS} users"
    assert all(v is None for m in public["metrics"].values() for v in m.values())
    assert "metrics withheld" in r.format() and f"{r.metric('recall', 5):.4f}" not in r.format()
    assert r.to_dict(exact=True)["metrics"]["recall"]["5"] == r.metric("recall", 5)
    # repr too (it printed recall@5=0.1389), and the report's coverage of their own lists
    assert f"{r.metric('recall', 5):.4f}" not in repr(r) and "recall@5=withheld" in repr(r)
    metrics, _ = _metrics(r, 5)
    assert math.isnan(metrics["Recall@5"]) and math.isnan(metrics["NDCG@5"])
    assert math.isnan(metrics["Coverage@5"])
