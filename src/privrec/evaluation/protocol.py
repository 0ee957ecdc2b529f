"""Run a fitted model on a :class:`~privrec.evaluation.splits.Split` and report metrics.

:func:`evaluate` asks the model for one ranked list per evaluated user (at the
largest cut-off, in batches), derives every metric at every cut-off from it,
and breaks Recall/NDCG down by user activity: averages hide that most models
serve heavy users far better than light ones, which matters when judging what
a privacy mechanism costs and whom it costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from privrec.errors import DataError
from privrec.evaluation.metrics import METRICS, PerUserMetrics, normalize_ks, per_user_metrics
from privrec.evaluation.splits import Split

__all__ = [
    "MIN_GROUP_USERS",
    "EvaluationResult",
    "SupportsRecommend",
    "activity_groups",
    "approx_count",
    "evaluate",
    "round_count",
    "shown_groups",
]

_GROUP_METRICS = ("recall", "ndcg")
#: metrics that are a count of users (or of hits) over the number of users
_COUNT_RATIOS = frozenset({"hitrate", "precision"})


class SupportsRecommend(Protocol):
    """What :func:`evaluate` needs from a model: the ``Recommender`` scoring contract."""

    def recommend(
        self, user_ids: npt.ArrayLike, k: int = ..., exclude_seen: bool = ...
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def recommend_history(
        self, user_items: Any, k: int = ..., exclude_seen: bool = ...
    ) -> tuple[np.ndarray, np.ndarray]: ...


def round_count(n: int) -> int:
    """``n`` to two significant figures (``937 → 940``; below 100 unchanged).

    Evaluation outputs are computed on held-out data and are *not* differentially private;
    what leaves the process (printed tables, JSON, HTML) carries counts and activity bounds
    rounded by this rule, so no exact number of users and no one person's history length
    (the heaviest user's count is the top of the activity range) is shown.
    """
    n = int(n)
    if abs(n) < 100:
        return n
    digits = len(str(abs(n))) - 2
    return int(round(n, -digits))


#: Fewest users a printed group's metrics may average over: below it a group's metrics and
#: its history range are withheld from every output fit to leave the process (a group of one
#: is one person's recall and history length).
MIN_GROUP_USERS = 10


def approx_count(n: int) -> str:
    """A count as text fit for reports and JSON files, which carry no exact number of users:
    ``"0"``, ``"< 10"``, to the nearest ten below 100 (``"≈ 100"`` for 98), else to two
    significant figures (``"≈ 940"``)."""
    n = int(n)
    if n <= 0:
        return "0" if n == 0 else f"≈ {round_count(n):,}"
    if n < 10:
        return "< 10"
    if n < 100:
        return f"≈ {int(round(n, -1)):,}"
    return f"≈ {round_count(n):,}"


def shown_groups(sizes: Sequence[int]) -> list[bool]:
    """Which groups (of these sizes) may have their metrics printed.

    A group of fewer than :data:`MIN_GROUP_USERS` is withheld, and so — complementary
    suppression — are the smallest other groups until the withheld ones hold at least
    :data:`MIN_GROUP_USERS` users together: the overall mean is printed too, and the overall
    mean less the shown groups' means recovers the withheld groups' mean (a reviewer read a
    lone heavy user's recall, 0.336 for 1/3, off the overall and ``Q1`` means of ~100 users).
    """
    n = [int(v) for v in sizes]
    shown = [v >= MIN_GROUP_USERS for v in n]
    hidden = sum(v for v, ok in zip(n, shown, strict=True) if not ok)
    if 0 < hidden < MIN_GROUP_USERS:
        for g in sorted((g for g, ok in enumerate(shown) if ok), key=lambda g: n[g]):
            shown[g] = False
            hidden += n[g]
            if hidden >= MIN_GROUP_USERS:
                break
    return shown


def _withheld(label: str, shown: bool) -> str:
    """A group label without its history range when the group's metrics are withheld."""
    return label if shown else label.split(" ")[0]


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Metrics of one model on one evaluation set.

    Attributes
    ----------
    table
        Mean metric values: one row per metric (``recall``, ``ndcg``,
        ``precision``, ``hitrate``, ``map``, ``mrr``, ``coverage``), one column
        per cut-off ``k``.
    per_group
        One row per user-activity group (quantiles of the number of
        training / fold-in interactions of the evaluated users; labels carry
        the rounded quantile edges, e.g. ``"Q1 (≤ 12)"``, see :func:`activity_groups`):
        ``n_users``, ``min_history``, ``max_history`` (exact, for in-process use only) and
        ``recall@k`` / ``ndcg@k`` columns. :meth:`groups_table` is the printable form.
    per_user
        One row per evaluated user: ``user_id``, ``history``, ``n_targets``,
        ``group`` and every ``metric@k``.
    n_users
        Users evaluated (those with at least one target).
    n_users_without_targets
        Users of the evaluation set left out because they had no target.
    model, protocol, on
        Model name, split protocol and which set (``"test"``/``"valid"``).
    ks
        Cut-offs, ascending.
    """

    table: pd.DataFrame
    per_group: pd.DataFrame
    per_user: pd.DataFrame
    n_users: int
    n_users_without_targets: int
    model: str
    protocol: str
    on: str
    ks: tuple[int, ...]

    def metric(self, name: str, k: int) -> float:
        """One mean value, e.g. ``result.metric("recall", 20)`` (names are case-insensitive)."""
        key = name.lower()
        if key not in self.table.index:
            raise KeyError(f"unknown metric {name!r}; available: {list(self.table.index)}")
        if k not in self.table.columns:
            raise KeyError(f"k={k} was not evaluated; available: {list(self.table.columns)}")
        return float(cast(float, self.table.loc[key, k]))

    def to_dict(self, *, exact: bool = False) -> dict[str, Any]:
        """Plain JSON-friendly dict (NaN becomes ``None``; keys of ``k`` are strings).

        This is what ``privrec evaluate --json`` writes, so by default it is fit to leave the
        machine: metrics rounded to 4 decimals (hit rate and precision, counts over the users, to
        2), user counts to two significant figures
        (``"≈ 940"``) and activity groups labelled ``Q1``… without the users' exact history
        lengths. ``exact=True`` keeps full precision and exact counts (for in-process use).
        """

        def num(v: float, places: int = 4) -> float | None:
            out = _json_float(v)
            return out if out is None or exact else round(out, places)

        # a hit rate is (users with a hit) / n, and precision (hits) / (k·n): at 4 decimals a
        # few of them pin n exactly, so they are written to 2
        few = self.withheld and not exact  # a handful of people's own metrics: not printed
        metrics = {
            str(name): {
                str(k): None
                if few
                else num(float(self.table.loc[name, k]), 2 if name in _COUNT_RATIOS else 4)
                for k in self.ks
            }
            for name in self.table.index
        }
        groups: list[dict[str, Any]] = []
        shown = shown_groups([int(cast(int, n)) for n in self.per_group["n_users"]])
        for (label, row), ok in zip(self.per_group.iterrows(), shown, strict=True):
            g: dict[str, Any] = {"group": str(label) if exact else str(label).split(" ")[0]}
            small = not ok
            for col, v in row.items():
                if col in ("n_users", "min_history", "max_history"):
                    if exact:
                        g[str(col)] = int(cast(int, v))
                else:  # a group too small to print has its metrics withheld
                    g[str(col)] = None if small and not exact else num(float(cast(float, v)))
            if small and not exact:
                g["withheld"] = (
                    f"fewer than {MIN_GROUP_USERS} users"
                    if int(cast(int, row["n_users"])) < MIN_GROUP_USERS
                    else f"would reveal the mean of groups of fewer than {MIN_GROUP_USERS} users"
                )
            groups.append(g)
        users: Any = self.n_users if exact else approx_count(self.n_users)
        skipped: Any = (
            self.n_users_without_targets if exact else approx_count(self.n_users_without_targets)
        )
        return {
            "model": self.model,
            "protocol": self.protocol,
            "on": self.on,
            "k": list(self.ks),
            "n_users": users,
            "n_users_without_targets": skipped,
            "metrics": metrics,
            **({"withheld": f"fewer than {MIN_GROUP_USERS} users"} if few else {}),
            "per_group": groups,
        }

    @property
    def withheld(self) -> bool:
        """Whether the metrics are withheld from the outward forms (:meth:`to_dict`,
        :meth:`format`): fewer than :data:`MIN_GROUP_USERS` users were evaluated, so the means
        are a few people's own (one user's recall, for a set of one)."""
        return self.n_users < MIN_GROUP_USERS

    def groups_table(self) -> pd.DataFrame:
        """The per-activity-group breakdown as printed: users rounded by :func:`round_count`
        (text ``"≈ 940"``), no exact history bounds — the form fit to leave the process."""
        pg = self.per_group.drop(columns=["min_history", "max_history"]).copy()
        sizes = [int(n) for n in self.per_group["n_users"]]
        shown = shown_groups(sizes)
        small = ~np.asarray(shown, dtype=bool)
        metric_cols = [c for c in pg.columns if c != "n_users"]
        pg.loc[small, metric_cols] = np.nan  # withheld: one person's metrics otherwise
        pg["n_users"] = [approx_count(n) for n in sizes]
        pg = pg.rename(columns={"n_users": "users"})
        pg.index = [_withheld(str(lab), ok) for lab, ok in zip(pg.index, shown, strict=True)]
        return pg

    def __str__(self) -> str:
        return self.format()

    def format(self, *, groups: bool = True) -> str:
        """The printable summary (what ``privrec evaluate`` prints), with the per-activity-group
        breakdown unless ``groups=False``. Held-out evaluation is not differentially private:
        the text rounds user counts and shows activity groups by rounded quantile edges."""
        head = (
            f"{self.model} on {self.on} ({self.protocol}): {approx_count(self.n_users)} users"
            + (
                f", {approx_count(self.n_users_without_targets)} without targets skipped"
                if self.n_users_without_targets
                else ""
            )
        )
        tab = self.table.copy()
        tab.columns = [f"@{k}" for k in tab.columns]
        if self.withheld:
            tab.loc[:, :] = np.nan
            head += f" — metrics withheld (fewer than {MIN_GROUP_USERS} users: their own)"
        lines = [head, "", tab.to_string(float_format=lambda v: f"{v:.4f}", na_rep="—")]
        if groups and len(self.per_group):
            pg = self.groups_table().to_string(float_format=lambda v: f"{v:.4f}", na_rep="—")
            lines += ["", "by user activity:", pg]
        return "\n".join(lines)

    def __repr__(self) -> str:
        summary = ", ".join(  # withheld as in format(): a handful of people's own metrics
            f"{m}@{k}=" + ("withheld" if self.withheld else f"{self.metric(m, k):.4f}")
            for m in ("recall", "ndcg")
            for k in self.ks
            if m in self.table.index
        )
        return (
            f"EvaluationResult(model={self.model!r}, on={self.on!r}, "
            f"n_users={approx_count(self.n_users)!r}, {summary})"
        )


def _model_name(model: object) -> str:
    name = getattr(type(model), "name", None)
    if isinstance(name, str) and name not in ("", "recommender"):
        return name
    return type(model).__name__


def activity_groups(history: np.ndarray, groups: int) -> tuple[np.ndarray, list[str]]:
    """Group index of each user by quantiles of ``history``, and labels with each group's range.

    Quantile edges are cut on the values, so ties (many users with the same
    count) can leave a group empty; empty groups are dropped and the rest
    renumbered, so labels are always ``Q1..Qm`` with ``m <= groups``.

    Labels are fit to be printed: they show the quantile *edges* between groups, rounded
    by :func:`round_count` — ``"Q1 (≤ 12)"``, ``"Q2 (13–30)"``, ``"Q4 (≥ 120)"`` — never the
    lightest or heaviest user's own count (the top group's maximum is one person's exact
    history length).
    """
    if history.size == 0:
        return np.zeros(0, dtype=np.int64), []
    inner = np.quantile(history, np.linspace(0, 1, groups + 1)[1:-1])
    raw = np.searchsorted(inner, history, side="left")
    present, idx = np.unique(raw, return_inverse=True)
    # group r holds inner[r-1] < h <= inner[r]; histories are integers
    upper = [round_count(math.floor(e)) for e in inner]
    lower = [round_count(math.floor(e) + 1) for e in inner]
    labels = []
    for g, r in enumerate(int(v) for v in present):
        if inner.size == 0:
            rng = "all"
        elif r == 0:
            rng = f"≤ {upper[0]:,}"
        elif r == inner.size:
            rng = f"≥ {lower[-1]:,}"
        else:
            rng = f"{lower[r - 1]:,}–{upper[r]:,}"
        labels.append(f"Q{g + 1} ({rng})")
    return idx.astype(np.int64), labels


def _rank(
    model: SupportsRecommend, split: Split, on: str, rows: np.ndarray, k: int, batch_size: int
) -> np.ndarray:
    es = split.eval_set("valid" if on == "valid" else "test")
    parts: list[np.ndarray] = []
    for lo in range(0, rows.size, batch_size):  # batches of users, not single users
        sel = rows[lo : lo + batch_size]
        if es.fold_in is not None:
            items, _ = model.recommend_history(
                sp.csr_matrix(es.fold_in[sel]), k=k, exclude_seen=True
            )
        else:
            assert es.users is not None
            items, _ = model.recommend(es.users[sel], k=k, exclude_seen=True)
        items = np.asarray(items)
        if items.ndim != 2 or items.shape[0] != sel.size:
            raise DataError(
                "the model returned lists of the wrong shape",
                field="recommend",
                expected=f"({sel.size}, <= {k})",
                found=items.shape,
            )
        parts.append(items[:, :k].astype(np.int64))
    if not parts:
        return np.zeros((0, k), dtype=np.int64)
    width = max(p.shape[1] for p in parts)
    return np.vstack(
        [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1) for p in parts]
    )


def evaluate(
    model: SupportsRecommend,
    split: Split,
    k: int | Sequence[int] = (10, 20, 50),
    on: Literal["test", "valid"] = "test",
    groups: int | None = 4,
    metrics: Sequence[str] | None = None,
    *,
    batch_size: int = 4096,
) -> EvaluationResult:
    """Evaluate a fitted model on the test (or validation) users of a split.

    The model is asked once per batch of users for its top ``max(k)`` items —
    ``recommend`` for users in training (their training items excluded),
    ``recommend_history`` for held-out users (their fold-in items excluded) —
    and every metric at every ``k`` is derived from those lists.

    Parameters
    ----------
    model
        Anything with the :class:`~privrec.models.base.Recommender` methods,
        fitted on ``split.train``.
    split
        From :mod:`privrec.evaluation.splits`.
    k
        Cut-offs.
    on
        ``"test"`` or ``"valid"`` (for model selection).
    groups
        Number of user-activity quantile groups (``None`` or 0: no breakdown).
    metrics
        Subset of :data:`~privrec.evaluation.metrics.METRICS`; all by default.
        Catalogue coverage is always reported (naming it is allowed).
    batch_size
        Users per model call; bounds memory for large catalogues.

    Examples
    --------
    >>> import numpy as np
    >>> from privrec.data import Interactions
    >>> from privrec.evaluation.splits import random_holdout
    >>> x = Interactions.from_arrays(np.repeat(np.arange(4), 5), np.tile(np.arange(5), 4))
    >>> split = random_holdout(x, test_fraction=0.4, seed=0)
    >>> class Oracle:  # ranks each user's held-out items first
    ...     def recommend(self, users, k=10, exclude_seen=True):
    ...         t = split.test.targets.toarray()[np.searchsorted(split.test.users, users)]
    ...         order = np.argsort(-t, axis=1, kind="stable")[:, :k]
    ...         return order, np.take_along_axis(t, order, axis=1)
    ...     def recommend_history(self, user_items, k=10, exclude_seen=True):
    ...         raise AssertionError("a weak-generalisation split never folds users in")
    >>> result = evaluate(Oracle(), split, k=(1, 2))
    >>> result.metric("recall", 2), result.n_users
    (1.0, 4)
    """
    ks = normalize_ks(k)
    if on not in ("test", "valid"):
        raise DataError("unknown evaluation set", field="on", expected="'test' | 'valid'", found=on)
    if groups is not None and (isinstance(groups, bool) or groups < 0):
        raise DataError("groups must be >= 0 or None", field="groups", found=groups)
    if batch_size < 1:
        raise DataError("batch_size must be >= 1", field="batch_size", found=batch_size)
    # coverage is always reported; accept it in the list rather than reject it
    names = METRICS if metrics is None else tuple(m.lower() for m in metrics if m != "coverage")
    es = split.eval_set(on)
    has_targets = es.n_targets > 0
    rows = np.flatnonzero(has_targets)
    top = _rank(model, split, on, rows, ks[-1], batch_size)
    res: PerUserMetrics = per_user_metrics(top, sp.csr_matrix(es.targets[rows]), ks, names)

    table = pd.DataFrame(
        [[float(v) for v in res.mean()[m].values()] for m in names]
        + [[res.coverage[kk] for kk in ks]],
        index=[*names, "coverage"],
        columns=list(ks),
    )
    table.columns.name = "k"

    history = es.history_counts(split.train)[rows].astype(np.int64)
    per_user = pd.DataFrame(
        {
            "user_id": es.user_ids[rows],
            "history": history,
            "n_targets": res.n_targets,
        }
    )
    for m in names:
        for j, kk in enumerate(ks):
            per_user[f"{m}@{kk}"] = res.values[m][:, j]

    group_cols = [f"{m}@{kk}" for kk in ks for m in _GROUP_METRICS if m in names]
    if groups:
        gidx, labels = activity_groups(history, int(groups))
        per_user["group"] = (
            pd.Categorical.from_codes(gidx, categories=pd.Index(labels)) if labels else []
        )
        agg = per_user.groupby("group", observed=True)
        per_group = pd.DataFrame(
            {
                "n_users": agg.size(),
                "min_history": agg["history"].min(),
                "max_history": agg["history"].max(),
            }
        )
        for col in group_cols:
            per_group[col] = agg[col].mean()
        per_group.index = pd.Index([str(i) for i in per_group.index], name="group")
    else:
        per_group = pd.DataFrame(
            columns=["n_users", "min_history", "max_history", *group_cols]
        ).rename_axis("group")

    return EvaluationResult(
        table=table,
        per_group=per_group,
        per_user=per_user,
        n_users=res.n_users,
        n_users_without_targets=int((~has_targets).sum()),
        model=_model_name(model),
        protocol=split.protocol,
        on=on,
        ks=ks,
    )
