"""Private hyper-parameter selection (Papernot & Steinke, ICLR 2022): repeated random trials, best kept.

Why: picking hyper-parameters on a validation split of the users' own data is a release like any
other — which candidate wins says something about the data — and the usual practice (ours in
``benchmarks/privacy_utility.py``, and the reference's) does not charge it. Here it is charged.

Mechanism
---------
Draw K ~ Geometric(1 / mean) (K ≥ 1, from the CSPRNG). K times: draw a candidate uniformly from
the grid, fit it (a DP model, calibrated to one Gaussian-equivalent multiplier ``z_m``) on the
training part of a per-user random split, and score it on the held-out part with a DP score —
the sum over validation users of their Recall@k (each in [0, 1], so sensitivity 1 per user, or
per interaction) plus Gaussian noise of std ``z_s``. Keep the trial with the highest noisy
score; release only its model, its candidate and its noisy score (never the other trials). A
trial whose fit fails (a typed privrec error: solves that overflow on this data) scores −∞ —
its failure is part of that trial's output, so the selection goes on rather than stop and show
which candidate was drawn; if every trial fails, the output is "no model" (still charged).
Every check that can run without the data's answers (arguments, candidates, δ, the split) runs
before the charge.

Guarantee
---------
Each trial is a composition of Gaussian mechanisms — the model's releases (all Gaussian: it is
checked that they collapse to one Gaussian of multiplier ≥ ``z_m``) and the score — so it is
exactly one Gaussian mechanism with multiplier ``z = (z_m⁻² + z_s⁻²)^(-1/2)``; the same for
every candidate, so the random choice of candidate does not change it. Theorem 2 of Papernot &
Steinke (2022) bounds the Rényi DP of "repeat a random number of times, output the best", which
dp-accounting implements as ``RepeatAndSelectDpEvent(GaussianDpEvent(z), mean, shape=1)`` under
its RDP accountant; ``z`` is calibrated so that this event meets (ε, δ). The split, the order of
candidates and K are independent of the data. The theorem covers the chosen trial's output
only: K itself must stay hidden (revealing it turns the selection into a plain best-of-K, which
the bound does not cover), so it is neither returned nor written anywhere — and, as the run
time grows with K, do not publish how long a selection took. Neighbouring relation: add/remove one user (the
user unit only: under the interaction unit, one more interaction can move another item of the
same user across the split).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import dp_event

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError, NonFiniteResultError, PrivrecError
from privrec.evaluation import evaluate, random_holdout
from privrec.models.base import as_interactions
from privrec.models.private import PrivateRecommender
from privrec.privacy.accounting import calibrate, simplify
from privrec.privacy.budget import Budget
from privrec.privacy.events import SpentEvent, total_event
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.randomness import resolve_generator
from privrec.privacy.units import PrivacyUnit

__all__ = ["TuningResult", "private_tune", "selection_event"]

#: Largest accepted mean number of trials (the run time grows linearly with it).
MAX_MEAN_TRIALS = 1000.0

SELECTION_LABEL = "private hyper-parameter selection (best of a random number of trials)"


def selection_event(z: float, mean_trials: float) -> dp_accounting.DpEvent:
    """The whole selection's event: the best of Geometric(1/mean) trials of one Gaussian(z)."""
    return dp_event.RepeatAndSelectDpEvent(
        dp_accounting.GaussianDpEvent(z), float(mean_trials), 1.0
    )


@dataclass(frozen=True)
class TuningResult:
    """The selected model (its guarantee covers the whole selection) and what was released with it."""

    model: PrivateRecommender
    params: dict[str, Any]
    noisy_score: float
    trial_epsilon: float
    guarantee: PrivacyGuarantee


def private_tune(
    model_cls: type[PrivateRecommender],
    grid: Sequence[Mapping[str, Any]],
    data: Interactions,
    *,
    epsilon: float,
    delta: float,
    unit: PrivacyUnit | str = PrivacyUnit.USER,
    mean_trials: float | None = None,
    score_fraction: float = 0.05,
    valid_fraction: float = 0.2,
    k: int = 20,
    base_params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    release_gate: Callable[[list[SpentEvent]], None] | None = None,
) -> TuningResult:
    """Pick among ``grid`` on ``data`` itself, paying for it: the result is (ε, δ)-DP as a whole.

    Parameters
    ----------
    model_cls
        A private model class whose releases are all Gaussian (DPALS, DPEASE, DPPopularity).
    grid
        Candidate hyper-parameters (dicts of constructor arguments), at least one.
    epsilon, delta, unit
        The budget of the whole selection, model included (user unit only).
    mean_trials
        Mean of the geometric number of trials; default ``2 × len(grid)`` (every candidate is
        tried about twice on average; the cost grows only logarithmically with it).
    score_fraction
        Share of each trial's privacy rate (Σ 1/z²) spent on its noisy score.
    valid_fraction, k
        Each user's held-out share and the Recall cut-off of the score.
    base_params
        Constructor arguments shared by every candidate.
    seed
        Seeded noise, trial count and candidate draws — NOT private, for experiments.
    release_gate
        Called once, before any noise is drawn, with the selection's single labelled event
        (the write-ahead charge of :mod:`privrec.governance`); it may refuse by raising.

    Returns
    -------
    TuningResult
        The chosen trial's model — its released arrays learnt on the training part of the
        split, its users served from their whole histories — whose ``privacy_guarantee`` is
        replaced by the selection's, the chosen candidate, its noisy score and each trial's
        model ε (a function of the budget only). Never the number of trials (see the module
        docstring).
    """
    if isinstance(grid, str | bytes | Mapping) or not isinstance(grid, Sequence) or not grid:
        raise ConfigError("the grid must be a non-empty list of candidates (mappings)")
    if not (isinstance(model_cls, type) and issubclass(model_cls, PrivateRecommender)):
        raise ConfigError(f"{model_cls!r} is not a private model class")
    for name, value in (("epsilon", epsilon), ("delta", delta)):
        if not _is_number(value):  # True is not ε = 1, "1e-5" is not a δ (an untyped error)
            raise ConfigError(f"{name} must be a finite number, found {value!r}")
    if not (_is_number(score_fraction) and 0 < score_fraction < 1):
        raise ConfigError(f"score_fraction must be in (0, 1), found {score_fraction!r}")
    if mean_trials is not None and not _is_number(mean_trials):
        raise ConfigError(f"mean_trials must be a number, found {mean_trials!r}")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)):
        raise ConfigError(f"seed must be an integer or None, found {seed!r}")
    if base_params is not None and not isinstance(base_params, Mapping):
        raise ConfigError(f"base_params must be a mapping, found {type(base_params).__name__}")
    if not isinstance(data, Interactions):
        try:
            data = as_interactions(data)
        except (TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"data must be Interactions or a sparse users × items matrix, found "
                f"{type(data).__name__}"
            ) from None
    # cheap checks before anything is charged (they used to fail after the charge, some after
    # a noisy model had been trained)
    if not (isinstance(valid_fraction, int | float) and 0 < valid_fraction < 1):
        raise ConfigError(f"valid_fraction must be in (0, 1), found {valid_fraction!r}")
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ConfigError(f"k must be a positive integer, found {k!r}")
    try:
        unit = PrivacyUnit(unit)
    except ValueError:
        raise ConfigError(f"unknown privacy unit {unit!r}") from None
    if unit is not PrivacyUnit.USER:
        # one interaction more can move another of that user's items across the split, so the
        # training part would differ in two interactions: only the user unit is covered
        raise ConfigError("private_tune supports the user unit only")
    if not all(isinstance(g, Mapping) and all(isinstance(n, str) for n in g) for g in grid):
        raise ConfigError(
            "every grid candidate must be a mapping of constructor arguments (names as strings)"
        )
    # a repeated candidate would only raise the default number of trials (and their cost)
    grid = list({repr(sorted(g.items())): dict(g) for g in grid}.values())
    mean = float(mean_trials) if mean_trials is not None else 2.0 * len(grid)
    if not 1 <= mean <= MAX_MEAN_TRIALS:
        raise ConfigError(f"mean_trials must be in [1, {MAX_MEAN_TRIALS:g}], found {mean}")
    shared = dict(base_params or {})
    for key in ("epsilon", "delta", "unit", "accountant", "seed", "tiers"):
        if key in shared or any(key in g for g in grid):
            raise ConfigError(f"{key!r} is set by private_tune, not by the grid")
    # every candidate is checked before anything is charged: a bad one drawn late would
    # otherwise fail after the selection's budget was reserved (or never be noticed)
    for g in grid:
        _check_candidate(model_cls, {**shared, **g}, delta, unit)
    budget = Budget(epsilon, delta)
    budget.check_delta(data.n_users if unit is PrivacyUnit.USER else max(data.nnz, 1))
    z = calibrate(budget, lambda v: selection_event(v, mean), kind="rdp", unit=unit)
    z_model = z / math.sqrt(1.0 - score_fraction)
    z_score = z / math.sqrt(score_fraction)
    eps_model = float(dp_accounting.get_epsilon_gaussian(z_model, delta))
    if not (math.isfinite(eps_model) and eps_model > 0):
        raise ConfigError(
            f"at delta={delta:g} each trial's model would get epsilon={eps_model:g}: "
            "a delta that large leaves nothing to calibrate (use delta << 1 / users)"
        )
    planned = [SpentEvent(SELECTION_LABEL, selection_event(z, mean))]
    rng = resolve_generator(seed)
    # the split is data-independent randomness; made before the charge, so data it cannot
    # split (users too short to hold out) is refused before any budget is spent
    split = random_holdout(data, valid_fraction, seed=int(rng.integers(2**31)))
    if release_gate is not None:
        release_gate(list(planned))

    trials = int(rng.geometric(1.0 / mean))
    best: tuple[float, int, PrivateRecommender, dict[str, Any]] | None = None
    said: list[warnings.WarningMessage] = []  # the chosen trial's warnings
    for t in range(trials):
        params = dict(grid[int(rng.integers(len(grid)))])
        model = model_cls(
            epsilon=eps_model,  # type: ignore[call-arg]
            delta=delta,
            unit=unit,
            accountant="pld",
            seed=None if seed is None else seed + 1 + t,
            **shared,
            **params,
        )
        # Each trial's warnings are held back: one line per trial would count the trials,
        # which must stay hidden. Only the chosen trial's are shown (it is released anyway).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model.fit(split.train)
                _check_gaussian(model, z_model)  # before scoring: a refusal here is a bug
                per_user = evaluate(
                    model, split, k=(k,), on="test", groups=None, metrics=("recall",)
                )
            except _CalibrationError:
                raise
            except (PrivrecError, ArithmeticError, np.linalg.LinAlgError):
                # a trial that fails (a candidate whose solves overflow on this data, a model
                # that cannot be scored) scores −∞: it is never chosen, and the selection goes
                # on — stopping here would show which candidate was drawn and that it failed,
                # an output the bound does not cover. Its noise is drawn all the same, so the
                # trials stay alike.
                rng.normal(0.0, z_score)
                continue
        total = float(per_user.per_user[f"recall@{k}"].sum())
        noisy = total + float(rng.normal(0.0, z_score))  # sensitivity 1: each recall is in [0, 1]
        if best is None or noisy > best[0]:
            best, said = (noisy, t, model, params), list(caught)
    if best is None:  # every trial failed: the selection's output is "no model" (charged)
        raise NonFiniteResultError(
            "private selection: no trial produced a model (every candidate drawn failed to fit "
            "on this data); the selection's budget is spent — check the grid's candidates"
        )
    for text, category in dict.fromkeys((str(w.message), w.category) for w in said):
        warnings.warn(text, category, stacklevel=2)
    noisy, _, chosen, params = best
    inner = chosen.privacy_guarantee
    guarantee = PrivacyGuarantee.from_events(
        planned,
        delta=delta,
        unit=unit,
        accountant="rdp",
        mechanism=f"{inner.mechanism} with private hyper-parameter selection",
        released=[
            *inner.released,
            "the chosen hyper-parameters and their noisy validation score",
        ],
        not_released=[
            *inner.not_released,
            "the other trials' models and scores",
            "the number of trials (the selection's bound holds only while it stays hidden)",
        ],
        threat_model=inner.threat_model,
        seeded_noise=seed is not None,
    )
    guarantee = guarantee.with_disclosure(
        catalogue=inner.catalogue, tuning="charged", non_default_params=inner.non_default_params
    )
    # the released model's parameters state the budget its guarantee meets (the selection's,
    # under RDP), so a loaded file checks out against them; its σ is the trial's
    # (seeded runs: the selection's seed, not the trial's — seed + 1 + t would tell K ≥ t + 1)
    chosen.set_params(epsilon=float(epsilon), accountant="rdp", seed=seed)
    chosen.guarantee_ = guarantee
    _attach_histories(chosen, data)
    return TuningResult(chosen, params, noisy, eps_model, guarantee)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_candidate(
    model_cls: type[PrivateRecommender], params: dict[str, Any], delta: float, unit: PrivacyUnit
) -> None:
    """A typed error now if ``params`` does not make a valid ``model_cls`` (unknown key, bad value)."""
    try:
        model_cls(epsilon=1.0, delta=delta, unit=unit, accountant="pld", **params).config()  # type: ignore[call-arg]
    except TypeError as exc:
        raise ConfigError(f"grid candidate {params!r}: {exc}") from None


def _attach_histories(model: PrivateRecommender, data: Interactions) -> None:
    """Serve every user from their whole history, not only the training part of the split.

    The chosen trial was fitted on the training part; its released arrays are final, but a
    user's own list should exclude — and DPALS's user factors be solved from — all of that
    user's items. Post-processing with each user's own data only (joint DP), as ``fit``
    itself does; the split's index spaces are the data's, so the shapes agree.
    """
    model.user_items_ = data.matrix
    if hasattr(model, "user_factors_") and hasattr(model, "fold_in"):
        model.user_factors_ = model.fold_in(data.matrix)


def _check_gaussian(model: PrivateRecommender, z_model: float) -> None:
    """The trial's model must be one Gaussian mechanism of multiplier ≥ z_model (as accounted)."""
    event = simplify(total_event(model.privacy_guarantee.spent_events))
    if not isinstance(event, dp_accounting.GaussianDpEvent):
        raise _CalibrationError(
            f"{type(model).__name__}'s releases are not all Gaussian: private selection cannot "
            "account for them"
        )
    if event.noise_multiplier < z_model * (1 - 1e-9):
        raise _CalibrationError(  # a calibration bug: the trial would spend more than accounted
            f"{type(model).__name__}: trial noise multiplier {event.noise_multiplier} below the "
            f"accounted {z_model}; private selection cannot account for this model class"
        )


class _CalibrationError(ConfigError):
    """A trial's releases are not the Gaussian mechanism the selection accounted for: the run
    stops (its budget stays charged) rather than score a model that spent more than counted."""
