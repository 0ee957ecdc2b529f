"""A privacy–utility comparison on the user's own split: the engine behind ``privrec report``
and ``privrec demo``.

Each baseline (non-private model) is fitted once; each private model is fitted at every ε
``draws`` times, every time with fresh CSPRNG noise, so the spread of its metrics over draws
is the noise's effect on utility (the error bars of the report). Every fit is evaluated on the
same split, with the per-activity-quartile breakdown, and each row keeps what a reviewer
needs beside the numbers: ε, δ, unit, accountant, seeded flag, the hyper-parameters that
differ from the defaults and the privrec version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privrec.errors import ConfigError
from privrec.evaluation import EvaluationResult, Split, evaluate
from privrec.evaluation.protocol import shown_groups
from privrec.privacy.guarantee import PrivacyGuarantee

__all__ = ["ModelSpec", "ReportRow", "run_comparison", "scoped_params"]

#: called before each fit: (label, model) -> the fitted model (e.g. with a progress bar)
Fitter = Callable[[str, Any, Any], Any]


@dataclass(frozen=True)
class ModelSpec:
    """One model of a comparison: its registry ``name`` and its hyper-parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportRow:
    """One model at one ε (``math.inf`` if not private): metrics averaged over noise draws.

    ``metrics`` are means, ``spread`` the standard deviations over draws (0 for one draw),
    ``quartiles`` the mean metric per user-activity quartile (``"Q1"`` = lightest users),
    ``details`` the settings a reviewer needs (δ, unit, accountant, seeded, parameters,
    version); ``guarantee`` is that of the first draw (all draws share the same ε and events).
    """

    model: str
    family: str
    epsilon: float
    metrics: dict[str, float]
    guarantee: PrivacyGuarantee | None = None
    spread: dict[str, float] = field(default_factory=dict)
    quartiles: dict[str, dict[str, float]] = field(default_factory=dict)
    draws: int = 1
    details: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, rounded to 4 decimals; no counts of users."""
        return {
            "model": self.model,
            "family": self.family,
            "epsilon": self.epsilon if self.private else None,
            "draws": self.draws,
            "metrics": {k: round(v, 4) for k, v in self.metrics.items()},
            "std": {k: round(v, 4) for k, v in self.spread.items()},
            "quartiles": {
                q: {k: round(v, 4) for k, v in m.items()} for q, m in self.quartiles.items()
            },
            "details": dict(self.details),
        }


def scoped_params(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The parameters for model ``name``: unscoped keys, then ``name.key`` ones (which win)."""
    out = {k: v for k, v in params.items() if "." not in k}
    prefix = f"{name}."
    out.update({k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)})
    return out


def _quartile(label: str) -> str:
    m = re.match(r"(Q\d+)", label)
    return m.group(1) if m else label


def _metrics(res: EvaluationResult, k: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    metrics = {  # fewer than MIN_GROUP_USERS users evaluated: their own metrics, withheld
        name: float("nan") if res.withheld else res.metric(metric, k)
        for name, metric in ((f"Recall@{k}", "recall"), (f"NDCG@{k}", "ndcg"))
    }
    # withheld too, as evaluate withholds it: the lists of those few people's own histories
    metrics[f"Coverage@{k}"] = float("nan") if res.withheld else res.metric("coverage", k)
    quartiles: dict[str, dict[str, float]] = {}
    # a group of fewer than MIN_GROUP_USERS is withheld (NaN, shown as "—"): its mean is a few
    # people's own recall; so are the smallest others that would give it away by subtraction
    shown = shown_groups([int(n) for n in res.per_group["n_users"]])
    for (label, row), ok in zip(res.per_group.iterrows(), shown, strict=True):
        small = not ok
        quartiles[_quartile(str(label))] = {
            f"Recall@{k}": float("nan") if small else float(row.get(f"recall@{k}", float("nan"))),
            f"NDCG@{k}": float("nan") if small else float(row.get(f"ndcg@{k}", float("nan"))),
        }
    return metrics, quartiles


def _details(model: Any, guarantee: PrivacyGuarantee | None) -> dict[str, str]:
    from privrec import __version__

    cfg = model.config()
    changed = {
        n: getattr(cfg, n)
        for n, f in type(cfg).model_fields.items()
        if n not in ("epsilon", "delta", "unit", "accountant", "seed")
        and not f.is_required()
        and getattr(cfg, n) != f.get_default(call_default_factory=True)
    }
    out = {
        "hyper-parameters": ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults",
        "version": (guarantee.privrec_version if guarantee is not None else __version__),
    }
    if guarantee is not None:
        out |= {
            "delta": f"{guarantee.delta:.0e}",
            "unit": guarantee.unit.value,
            "accountant": guarantee.accountant.value.upper(),
            "seeded": "yes — NOT private" if guarantee.seeded_noise else "no (CSPRNG)",
        }
    return out


def _mean_std(values: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = values[0].keys()
    mean = {k: float(np.mean([v[k] for v in values])) for k in keys}
    std = {
        k: float(np.std([v[k] for v in values], ddof=1)) if len(values) > 1 else 0.0 for k in keys
    }
    return mean, std


def run_comparison(
    split: Split,
    specs: Sequence[ModelSpec],
    *,
    epsilons: Sequence[float],
    delta: float | None,
    unit: str = "user",
    draws: int = 1,
    k: int = 20,
    fit: Fitter | None = None,
    on_row: Callable[[ReportRow], None] | None = None,
) -> list[ReportRow]:
    """Fit and evaluate every model of ``specs`` on ``split``; private ones at every ε.

    Parameters
    ----------
    split
        The user's own split (fitted on ``split.train``, scored on its test set).
    specs
        Models by registry name with their parameters; which ones are private is read from
        the registry. Private models get ``epsilon``/``delta``/``unit`` from here.
    epsilons, delta, unit
        The sweep; ``delta`` is required when any model is private.
    draws
        Fits per private model and ε, each with fresh CSPRNG noise (≥ 1).
    k
        Cut-off of Recall/NDCG/coverage.
    fit
        ``fit(label, model, train) -> model``; defaults to ``model.fit(train)``.
    on_row
        Called with each finished row (e.g. to print it).
    """
    from privrec.models.private import PrivateRecommender
    from privrec.models.registry import available_models, model_class

    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}")
    do_fit: Fitter = fit or (lambda _label, model, train: model.fit(train))
    rows: list[ReportRow] = []
    for spec in specs:
        cls = model_class(spec.name)
        if cls is None:
            raise ConfigError(
                f"unknown model {spec.name!r}; choose one of: {', '.join(available_models())}"
            )
        private = issubclass(cls, PrivateRecommender)
        if private and delta is None:
            raise ConfigError(f"{spec.name} is a private model: give delta")
        grid = list(epsilons) if private else [math.inf]
        for eps in grid:
            params = dict(spec.params)
            if private:
                params |= {"epsilon": eps, "delta": delta, "unit": unit}
            n = draws if private else 1
            label = spec.name if not private else f"{spec.name} (ε={eps:g})"
            results, quartiles, guarantee, model = [], [], None, None
            for d in range(n):
                model = cls.from_config(params)
                model = do_fit(label if n == 1 else f"{label} draw {d + 1}/{n}", model, split.train)
                m, q = _metrics(evaluate(model, split, k=(k,)), k)
                results.append(m)
                quartiles.append(q)
                guarantee = guarantee or getattr(model, "guarantee_", None)
            mean, std = _mean_std(results)
            qs = {q: _mean_std([x[q] for x in quartiles if q in x])[0] for q in quartiles[0]}
            row = ReportRow(
                model=label,
                family=spec.name,
                epsilon=eps,
                metrics=mean,
                guarantee=guarantee,
                spread=std,
                quartiles=qs,
                draws=n,
                details=_details(model, guarantee),
            )
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows
