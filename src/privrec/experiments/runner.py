"""Run an experiment: every privacy variant on one split, repeated noise draws, paired statistics."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from privrec.errors import ConfigError, DataError, PrivacyWarning
from privrec.evaluation.metrics import per_user_metrics
from privrec.evaluation.protocol import (
    MIN_GROUP_USERS,
    activity_groups,
    approx_count,
    round_count,
    shown_groups,
)
from privrec.evaluation.splits import Split
from privrec.experiments.config import (
    DataSpec,
    ExperimentConfig,
    noise_fixing,
    synthetic_size,
)
from privrec.experiments.stats import (
    FEW_DRAWS_WIDENING,
    PairedComparison,
    coverage,
    coverage_comparison,
    paired_comparison,
    power,
    repeats_needed,
    significant,
    users_needed,
)
from privrec.privacy.events import SpentEvent

__all__ = [
    "ChargeHook",
    "ExperimentResult",
    "LedgerCharge",
    "VariantResult",
    "load_governed_split",
    "load_split_for",
    "run_experiment",
]


class ChargeHook(Protocol):
    """Where an experiment's fits are charged (e.g. a budget ledger).

    ``reserve`` is called with a fit's planned releases **before the model draws any
    noise** (through the model's ``release_gate``) and may raise to refuse the fit;
    ``commit`` once the fit was evaluated.
    """

    def reserve(
        self, variant: str, draw: int, events: list[SpentEvent], description: str
    ) -> None: ...

    def commit(self, variant: str, draw: int, result: dict[str, float]) -> None: ...


def _rounded(values: dict[str, float]) -> dict[str, float | None]:
    return {k: significant(v, 4) for k, v in values.items()}


@dataclass
class VariantResult:
    """One variant over its draws: mean metrics, ε, and the comparison with the baseline.

    ``users_needed`` (at this many draws) and ``repeats_needed`` (with this many users) are
    ``None`` when no number of them reaches the power asked for: the draws' variance does not
    shrink with users, nor the users' spread with draws.
    """

    name: str
    model: str
    params: dict[str, Any]
    epsilon: float | None
    delta: float | None
    epsilon_all_draws: float | None
    seconds: float
    means: dict[str, float]
    draw_means: dict[str, list[float]]
    by_group: dict[str, dict[str, float]]
    comparisons: dict[str, PairedComparison] = field(default_factory=dict)
    group_comparisons: dict[str, dict[str, PairedComparison]] = field(default_factory=dict)
    users_needed: dict[str, int | None] = field(default_factory=dict)
    repeats_needed: dict[str, int | None] = field(default_factory=dict)
    power: dict[str, float] = field(default_factory=dict)
    compared_to: str | None = None
    #: a private variant whose draws all gave the same top-k lists: its noise did not vary
    #: between draws, so no interval involving it is given (see :meth:`ExperimentResult.notes`)
    identical_draws: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly. Metric values are rounded to 4 significant figures and power to 2
        decimals: at full precision a mean over users, or a power (a function of the number of
        users), can be solved for the exact number of users, which the outputs only give as
        ``"≈ 940"``; users needed are rounded like counts."""
        return {
            "name": self.name,
            "model": self.model,
            "params": self.params,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "epsilon_all_draws": self.epsilon_all_draws,
            "seconds": self.seconds,
            "means": _rounded(self.means),
            "draw_means": {k: [significant(x, 4) for x in v] for k, v in self.draw_means.items()},
            "by_group": {g: _rounded(m) for g, m in self.by_group.items()},
            "compared_to": self.compared_to,
            "identical_draws": self.identical_draws,
            "comparisons": {k: v.to_dict() for k, v in self.comparisons.items()},
            "group_comparisons": {
                g: {k: v.to_dict() for k, v in d.items()} for g, d in self.group_comparisons.items()
            },
            "users_needed": {
                k: None if n is None else round_count(n) for k, n in self.users_needed.items()
            },
            "repeats_needed": self.repeats_needed,
            "power": {k: round(p, 2) for k, p in self.power.items()},
        }


@dataclass
class ExperimentResult:
    """All variants of one experiment.

    The counts here are exact, for in-process use. The experiment evaluates on held-out data
    and is not differentially private, so :meth:`to_dict` (the ``--json`` file), the Markdown
    and the HTML report round them (``"≈ 940"``), as ``privrec evaluate`` does, and label
    activity groups by rounded quantile edges, never by one person's history length. They also
    round every statistic to a few significant figures and leave out the variance components:
    published at full precision, some combinations of them give the exact counts back.
    """

    config: ExperimentConfig
    split: str
    n_users: int
    n_items: int
    groups: list[str]
    group_sizes: list[int]
    variants: list[VariantResult]
    seconds: float

    @property
    def baseline(self) -> str:
        return self.config.baseline

    def notes(self) -> list[str]:
        """Caveats a reader must see before the numbers: one sentence per private variant whose
        draws all came out identical, one "too few noise draws" sentence when any comparison
        is flagged, and one when any difference was the same in every draw (no interval is
        given for it); each flagged comparison also carries its own note."""
        out = [
            _identical_variant_note(v.name, self.config.experiment.repeats)
            for v in self.variants
            if v.identical_draws
        ]
        shown = [
            c
            for v in self.variants
            for c in [
                *v.comparisons.values(),
                *(c for g in v.group_comparisons.values() for c in g.values()),
            ]
        ]
        out += self._few_draws_notes()
        if any(c.identical_draws for c in shown):
            out.append(
                "some differences (marked ‡) were the same in every noise draw although a side "
                "is private (by chance, with few draws of a coarse metric, or because the noise "
                "is fixed or too small to change a list): the variance between draws estimates "
                "as zero there, so an interval would count only the users and be too narrow — "
                "no interval or p-value is given for them"
            )
        return out

    def _few_draws_notes(self) -> list[str]:
        flagged = [
            c
            for v in self.variants
            for c in [
                *v.comparisons.values(),
                *(c for g in v.group_comparisons.values() for c in g.values()),
            ]
            if c.few_draws
        ]
        if not flagged:
            return []
        r = flagged[0].draws
        worst = max(c.widening for c in flagged)
        how = (
            f"intervals are up to {worst:.1f}× as wide as with many draws"
            if worst > FEW_DRAWS_WIDENING
            else "intervals may be too wide or too narrow (the draws may agree by chance)"
        )
        return [
            f"only {r} noise draws per variant: the variance between draws rests on {r - 1} "
            f"degree(s) of freedom, so {how} — run 5 or more repeats for useful intervals"
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "split": self.split,
            "n_users": approx_count(self.n_users),
            "n_items": approx_count(self.n_items),
            "baseline": self.baseline,
            "groups": self.groups,
            "group_sizes": [approx_count(n) for n in self.group_sizes],
            "seconds": self.seconds,
            "notes": self.notes(),
            "variants": [v.to_dict() for v in self.variants],
        }


def _existing(path: str) -> Any:
    """``data.path`` resolved (a ``shared/data`` path works from any folder), or a clear
    "not found": the loader would first try to guess the format from the name and report that
    instead."""
    from privrec.data.shared import resolve_shared_path

    p = resolve_shared_path(path)
    if not p.exists():
        raise DataError(
            "data file or folder not found", file=p, field="data.path", found="no such path"
        )
    return p


def load_split_for(spec: DataSpec, ledger: Any = None, dataset: str | None = None) -> Split:
    """The one split every variant is trained and evaluated on.

    With a ``ledger`` and ``dataset``, the data first passes the dataset's policy (deletion
    requests, consent, retention, minimisation, columns) through ``ledger.load``, as training
    does; a pre-split folder (``protocol = "files"``) cannot, and is refused. To charge the
    fits to that load (so a deletion request landing mid-run stops the experiment), use
    :func:`load_governed_split` and give its second value to :class:`LedgerCharge`.
    """
    if ledger is not None and dataset is not None:
        return load_governed_split(spec, ledger, dataset)[0]
    return _split(spec, _read(spec))


def load_governed_split(spec: DataSpec, ledger: Any, dataset: str) -> tuple[Split, Any]:
    """The split and the policy-checked load it was cut from (a ``GovernedData``).

    Every fit charged with ``LedgerCharge(..., data=governed)`` is reserved against that
    load: the ledger refuses it (``StaleDataError``) once a deletion request, a consent
    change, a policy change or the retention window has made the load out of date, so no
    noise is drawn from data that should no longer be used.
    """
    if spec.protocol == "files":
        raise ConfigError(
            "a pre-split folder (protocol 'files') cannot pass through a dataset's policy: give "
            "the interaction file as data.path with another protocol"
        )
    governed = ledger.load(dataset, _read(spec))
    return _split(spec, governed.interactions), governed


def _read(spec: DataSpec) -> Any:
    """The interactions ``spec`` names (``None`` for a pre-split folder)."""
    from privrec.data import load, synthetic

    if spec.protocol == "files":
        return None
    if spec.synthetic is not None:
        users, items = synthetic_size(spec.synthetic)
        return synthetic(n_users=users, n_items=items, seed=spec.seed)
    assert spec.path is not None
    data = load(_existing(spec.path), format=spec.format)
    if spec.binarize is not None:
        data = data.binarize(spec.binarize)
    return data


def _split(spec: DataSpec, data: Any) -> Split:
    from privrec import evaluation as ev

    if spec.protocol == "files":
        if spec.path is None:
            raise ConfigError("protocol 'files' needs data.path (a folder of train/valid/test)")
        return ev.load_split(_existing(spec.path), merge_valid_into_train=True)
    if spec.protocol == "holdout":
        return ev.random_holdout(data, test_fraction=spec.test_fraction, seed=spec.seed)
    if spec.protocol == "leave-last-out":
        return ev.leave_last_out(data)
    return ev.strong_generalization(data, n_heldout_users=0.1, seed=spec.seed)


def _model_class(name: str) -> Any:
    import privrec.models.all  # noqa: F401  (registers every model)
    from privrec.models import MODEL_REGISTRY

    if name not in MODEL_REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_REGISTRY))}"
        )
    return MODEL_REGISTRY[name]


def _takes_seed(name: str) -> bool:
    """Whether the model has a ``seed`` to set for common random numbers: a non-private
    baseline such as ``popularity`` draws no noise and has none to seed."""
    return "seed" in _model_class(name).Config.model_fields


def _build(name: str, params: dict[str, Any]) -> Any:
    return _model_class(name).from_config(params)


def _identical_variant_note(name: str, repeats: int) -> str:
    return (
        f"variant {name!r}: all {repeats} noise draws of this private model gave the same "
        "top-k lists — its noise did not vary between draws (is it fixed, e.g. by a seed, or "
        "too small to change any list?), so the variance between draws is not measured and no "
        "interval involving it is given"
    )


def _same_every_draw(x: np.ndarray) -> bool:
    """Whether every row (draw) of ``x`` equals the first, exactly: exact, because floating-
    point noise in a variance estimate (e.g. 6e-39 for identical draws) must not pass as a
    measured between-draw spread."""
    return bool(x.shape[0] > 1 and np.array_equal(np.broadcast_to(x[:1], x.shape), x))


def _flagged(
    cmp: PairedComparison, diff: np.ndarray, variant: VariantResult, ref: VariantResult
) -> PairedComparison:
    """``cmp`` marked ``identical_draws`` when noise is expected (a side is private) but the
    draws did not vary: a side gave the same lists in every draw, or the difference ``diff``
    (draws × users) was the same in every draw. Its interval would then count only the users."""
    noisy = variant.epsilon is not None or ref.epsilon is not None
    if variant.identical_draws or ref.identical_draws or (noisy and _same_every_draw(diff)):
        return dataclasses.replace(cmp, identical_draws=True)
    return cmp


def _preflight(config: ExperimentConfig) -> None:
    """Everything about the variants that can be checked before the data is loaded or any fit
    is charged: no noise seed in their params (the experiment owns the seeds), known models,
    valid parameters. A bad second variant must not cost the first variant's budget."""
    spec = config.experiment
    for v in config.variant:
        fixed = noise_fixing(v.params)
        if fixed:
            raise ConfigError(
                f"variant {v.name!r}: params {', '.join(fixed)} would fix the noise of every "
                "draw; the experiment owns the noise seeds (use [experiment] seeded = true)"
            )
        params = dict(v.params)
        if spec.seeded and _takes_seed(v.model):
            params["seed"] = spec.seed
        _build(v.model, params)


def _top_lists(model: Any, split: Split, k: int) -> np.ndarray:
    es = split.test
    parts = []
    for lo in range(0, es.n_users, 4096):
        sel = np.arange(lo, min(es.n_users, lo + 4096))
        if es.fold_in is not None:
            items, _ = model.recommend_history(sp.csr_matrix(es.fold_in[sel]), k=k)
        else:
            assert es.users is not None
            items, _ = model.recommend(es.users[sel], k=k)
        items = np.asarray(items, dtype=np.int64)
        if items.shape[1] < k:
            items = np.pad(items, ((0, 0), (0, k - items.shape[1])), constant_values=-1)
        parts.append(items)
    return np.vstack(parts) if parts else np.zeros((0, k), np.int64)


def _composed_epsilon(guarantees: list[Any]) -> float | None:
    """ε of all draws' releases composed (what the experiment would cost if all were released)."""
    if not guarantees or guarantees[0] is None:
        return None
    from privrec.privacy.accounting import epsilon_of
    from privrec.privacy.events import total_event

    g = guarantees[0]
    events = [e for gg in guarantees for e in gg.spent_events]
    return float(epsilon_of(total_event(events), g.delta, g.accountant, g.unit))


def run_experiment(
    config: ExperimentConfig,
    *,
    split: Split | None = None,
    charge: ChargeHook | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Train every variant ``repeats`` times on one split and compare each with the baseline.

    ``charge`` (optional) is told about every fit before it draws noise and after it was
    evaluated — the hook a budget ledger plugs into (:class:`LedgerCharge`); an exception
    it raises (budget exceeded) stops the experiment before that fit's noise is drawn.
    """
    t0 = time.perf_counter()
    spec = config.experiment
    _preflight(config)
    if spec.seeded:
        warnings.warn(
            "experiment: every model is trained with seeded noise (common random numbers across "
            "variants) — reproducible and NOT private; none of these models may be released",
            PrivacyWarning,
            stacklevel=2,
        )
    split = load_split_for(config.data) if split is None else split
    ks = sorted(set(spec.k))
    kmax = ks[-1]
    es = split.test
    targets = sp.csr_matrix(es.targets, copy=True)
    targets.eliminate_zeros()  # a stored zero is no target: the metrics skip such users
    evaluable = int((np.diff(targets.indptr) > 0).sum())
    if evaluable < MIN_GROUP_USERS:  # refused before any fit (or charge)
        raise DataError(
            f"the test set holds fewer than {MIN_GROUP_USERS} users with held-out items: every "
            "metric of the experiment would be those few people's own",
            field="test users",
        )
    history = es.history_counts(split.train)
    # metric arrays per variant: name -> metric key -> (draws, evaluated users)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    tops: dict[str, list[np.ndarray]] = {}
    out: list[VariantResult] = []
    users: np.ndarray | None = None
    for v in config.variant:
        tv = time.perf_counter()
        per_draw: dict[str, list[np.ndarray]] = {}
        tops[v.name] = []
        guarantees = []
        seedable = spec.seeded and _takes_seed(v.model)
        for r in range(spec.repeats):
            params = dict(v.params)
            if seedable:
                params["seed"] = spec.seed + r
            model = _build(v.model, params)
            if progress is not None:
                progress(f"{v.name}: draw {r + 1}/{spec.repeats}")
            desc = f"experiment variant {v.name!r}, draw {r + 1}"
            reserved: list[bool] = []
            if charge is not None and hasattr(model, "release_gate"):

                def gate(
                    planned: list[SpentEvent],
                    _n: str = v.name,
                    _r: int = r,
                    _d: str = desc,
                    _done: list[bool] = reserved,
                ) -> None:
                    charge.reserve(_n, _r, planned, _d)
                    _done.append(True)

                model.release_gate = gate
            with warnings.catch_warnings():
                if seedable:
                    # the run-level warning above already says this run is seeded; a seeded
                    # model of an unseeded run (none should exist) still warns
                    warnings.filterwarnings("ignore", category=PrivacyWarning, message=".*seeded")
                model.fit(split.train)
            g = getattr(model, "guarantee_", None)
            guarantees.append(g)
            if charge is not None and g is not None and not reserved:
                # a model without the write-ahead hook: charged before any output leaves
                charge.reserve(v.name, r, g.spent_events, desc)
            top = _top_lists(model, split, kmax)
            pum = per_user_metrics(top, es.targets, k=ks, metrics=("recall", "ndcg"))
            if charge is not None and g is not None:
                charge.commit(
                    v.name,
                    r,
                    {
                        f"recall@{kk}": float(pum.values["recall"][:, j].mean())
                        for j, kk in enumerate(ks)
                    },
                )
            users = pum.users
            for m in ("recall", "ndcg"):
                for j, kk in enumerate(ks):
                    per_draw.setdefault(f"{m}@{kk}", []).append(pum.values[m][:, j])
            tops[v.name].append(top[pum.users])
        arrays[v.name] = {key: np.vstack(vals) for key, vals in per_draw.items()}
        g0 = guarantees[0]
        # a private model whose noise changed nothing: every draw gave the same lists
        identical = g0 is not None and _same_every_draw(np.stack(tops[v.name]))
        if identical:
            warnings.warn(
                _identical_variant_note(v.name, spec.repeats), PrivacyWarning, stacklevel=2
            )
        means = {key: float(a.mean()) for key, a in arrays[v.name].items()}
        draw_means = {key: [float(x) for x in a.mean(axis=1)] for key, a in arrays[v.name].items()}
        if "coverage" in spec.metrics:
            for kk in ks:
                covs = [coverage(t, split.train.n_items, kk) for t in tops[v.name]]
                means[f"coverage@{kk}"] = float(np.mean(covs))
                draw_means[f"coverage@{kk}"] = covs
        out.append(
            VariantResult(
                name=v.name,
                model=v.model,
                params=dict(v.params),
                epsilon=None if g0 is None else float(g0.epsilon),
                delta=None if g0 is None else float(g0.delta),
                epsilon_all_draws=_composed_epsilon(guarantees),
                seconds=time.perf_counter() - tv,
                means=means,
                draw_means=draw_means,
                by_group={},
                identical_draws=identical,
            )
        )
    assert users is not None
    gidx, labels = activity_groups(history[users], spec.groups)
    sizes = [int((gidx == g).sum()) for g in range(len(labels))]
    # a group of fewer than MIN_GROUP_USERS keeps no metrics, comparison or history range in
    # any output: its means are a few people's own recall (a reviewer found one user's)
    # (and complementary groups: the overall means less the shown groups' would recover theirs)
    shown = shown_groups(sizes)
    labels = [lab if ok else lab.split(" ")[0] for lab, ok in zip(labels, shown, strict=True)]
    by_name = {vr.name: vr for vr in out}
    keys = [f"{m}@{kk}" for m in ("recall", "ndcg") if m in spec.metrics for kk in ks]
    for vr in out:
        a = arrays[vr.name]
        vr.by_group = {
            lab: {key: float(a[key][:, gidx == g].mean()) for key in a}
            for g, lab in enumerate(labels)
            if shown[g]
        }
        base = config.reference_of(vr.name)
        if base is None:
            continue
        vr.compared_to = base
        b = arrays[base]
        ref = by_name[base]
        for key in keys:
            cmp = _flagged(
                paired_comparison(a[key], b[key], confidence=spec.confidence),
                a[key] - b[key],
                vr,
                ref,
            )
            vr.comparisons[key] = cmp
            if cmp.identical_draws:
                continue  # no planning from a between-draw variance that was not measured
            comps = cmp.components
            assert comps is not None
            vr.users_needed[key] = users_needed(
                comps, spec.detect, repeats=cmp.draws, alpha=spec.alpha, power_=spec.power
            )
            vr.repeats_needed[key] = repeats_needed(
                comps, spec.detect, users=cmp.users, alpha=spec.alpha, power_=spec.power
            )
            vr.power[key] = power(
                comps, spec.detect, repeats=cmp.draws, users=cmp.users, alpha=spec.alpha
            )
        for key in keys:
            for g, lab in enumerate(labels):
                sel = gidx == g
                if shown[g]:
                    av, bv = a[key][:, sel], b[key][:, sel]
                    vr.group_comparisons.setdefault(lab, {})[key] = _flagged(
                        paired_comparison(av, bv, confidence=spec.confidence), av - bv, vr, ref
                    )
        if "coverage" in spec.metrics:
            for kk in ks:
                cov_diff = np.subtract(
                    vr.draw_means[f"coverage@{kk}"], ref.draw_means[f"coverage@{kk}"]
                )
                vr.comparisons[f"coverage@{kk}"] = _flagged(
                    coverage_comparison(
                        tops[vr.name],
                        tops[base],
                        split.train.n_items,
                        kk,
                        confidence=spec.confidence,
                        n_boot=max(50, min(spec.bootstrap, 300)),
                        seed=spec.seed,
                    ),
                    cov_diff[:, None],
                    vr,
                    ref,
                )
    return ExperimentResult(
        config=config,
        split=split.protocol,
        n_users=int(users.size),
        n_items=int(split.train.n_items),
        groups=labels,
        group_sizes=sizes,
        variants=out,
        seconds=time.perf_counter() - t0,
    )


class LedgerCharge:
    """A :class:`ChargeHook` recording every fit of an experiment in a governance ledger.

    Each fit is reserved before it draws noise (refused with ``BudgetExceededError`` when it
    would pass a budget) and committed as a ``kind="experiment"`` charge with its recall:
    models trained for an experiment spend privacy like any other use of the data, even
    though none of them is released.

    ``data`` is the ``GovernedData`` the experiment's split was cut from
    (:func:`load_governed_split`); each reservation is checked against it, so a deletion
    request, consent change or expired retention window stops the run before the next fit
    draws noise. Without it the fits are charged but tied to no load — nothing stops a run
    whose data went out of date — and a :class:`~privrec.errors.PrivacyWarning` says so.
    """

    def __init__(
        self, ledger: Any, dataset: str, *, purpose: str | None = None, data: Any = None
    ) -> None:
        self.ledger = ledger
        self.dataset = dataset
        self.purpose = purpose
        self.data = data
        self._open: dict[tuple[str, int], Any] = {}
        if data is None:
            warnings.warn(
                "LedgerCharge without data=: the experiment's fits are charged but not checked "
                "against a policy-checked load, so a deletion request or consent withdrawal "
                "during the run does not stop it (use load_governed_split)",
                PrivacyWarning,
                stacklevel=2,
            )

    def reserve(self, variant: str, draw: int, events: list[SpentEvent], description: str) -> None:
        kw: dict[str, Any] = {} if self.data is None else {"data": self.data}
        self._open[(variant, draw)] = self.ledger.reserve(
            self.dataset,
            events,
            purpose=self.purpose,
            kind="experiment",
            description=description,
            **kw,
        )

    def commit(self, variant: str, draw: int, result: dict[str, float]) -> None:
        info = self._open.pop((variant, draw))
        self.ledger.commit(info, result={"variant": variant, "draw": draw, **result})
