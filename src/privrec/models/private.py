"""Shared machinery of the differentially private models.

A private model takes its privacy parameters as required constructor
arguments — ε, δ and the **privacy unit** — because they are part of what the
model *is*, not tuning knobs with safe defaults. It records every noisy
release as a labelled dp-accounting event while fitting, and carries the
resulting :class:`~privrec.privacy.guarantee.PrivacyGuarantee` (saved with the
model). Noise is drawn from a ChaCha20 CSPRNG unless ``seed`` is set, which
warns that the result is not private.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Self, get_args

import numpy as np
import numpy.typing as npt
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError, DataError, ModelFileError, NonFiniteResultError
from privrec.models.base import ModelConfig, Recommender, _empty_csr, check_array
from privrec.models.releases import Release, ReleaseHook, read_only
from privrec.privacy.accounting import AccountantKind, compose, gaussian_rate
from privrec.privacy.budget import Budget
from privrec.privacy.events import SpentEvent
from privrec.privacy.guarantee import PrivacyGuarantee, Tuning
from privrec.privacy.randomness import resolve_generator
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "PrivateConfig",
    "PrivateRecommender",
    "blend_neighbours",
    "blend_popularity",
    "rank_head_scores",
    "read_blend_state",
    "read_fold",
    "read_head_items",
]

_PRIVACY_PARAMS = frozenset({"epsilon", "delta", "unit", "accountant", "seed", "tiers"})


class PrivateConfig(ModelConfig):
    """Privacy fields every private model's config has (no defaults for ε, δ, unit)."""

    epsilon: float = pydantic.Field(gt=0, allow_inf_nan=False)
    delta: float = pydantic.Field(gt=0, lt=1)
    unit: PrivacyUnit
    accountant: Literal["pld", "rdp"] = "pld"
    seed: int | None = None


class PrivateRecommender(Recommender):
    """Base of private models: budget checks, noise source, event ledger, guarantee."""

    save_user_data: ClassVar[bool] = False
    mechanism_name: ClassVar[str] = "private model"

    guarantee_: PrivacyGuarantee

    #: Write-ahead hook (set by :mod:`privrec.governance`): called by :meth:`_plan` with every
    #: release ``fit`` is about to make, before any noise is drawn; it may refuse by raising.
    release_gate: Callable[[list[SpentEvent]], None] | None = None

    @property
    def rdp_only_events(self) -> bool:
        """True when this model's events are proven only in Rényi DP (distributed discrete
        noise): a ledger must then compose its charge under RDP, never under PLD, whose ε for the
        same events would be smaller than the bound actually proven."""
        return False

    #: The ``on_release`` hook of the fit in progress (see :mod:`privrec.models.releases`);
    #: set by the models' ``fit`` for one call only.
    _on_release: ReleaseHook | None = None

    def _begin(self, data: Interactions, config: Any) -> tuple[Budget, np.random.Generator]:
        """Validate the budget against the data and open a fresh noise source and ledger."""
        budget = Budget(config.epsilon, config.delta)
        n_units = data.n_users if config.unit is PrivacyUnit.USER else max(data.nnz, 1)
        budget.check_delta(n_units)
        self._spent: list[SpentEvent] = []
        self._planned: list[SpentEvent] | None = None
        self._group: tuple[SpentEvent, list[SpentEvent]] | None = None
        return budget, resolve_generator(config.seed)

    def _plan(self, planned: list[SpentEvent]) -> None:
        """Announce the releases ``fit`` will make, after calibration and before any noise is drawn.

        A ledger attached as :attr:`release_gate` reserves their charge here (and refuses when a
        budget would be exceeded, so no noise is ever drawn); :meth:`_finish` checks that the
        releases actually made are exactly the ones announced.
        """
        self._planned = list(planned)
        if self.release_gate is not None:
            self.release_gate(list(planned))

    def _spend(self, label: str, event: Any) -> None:
        self._spent.append(SpentEvent(label, event))

    def _open_group(self, whole: SpentEvent) -> None:
        """The releases from here to :meth:`_finish` make up ``whole``, one announced Gaussian event.

        Each is still recorded with its own event for the ``on_release`` hook; the guarantee
        and the write-ahead charge hold ``whole``, and :meth:`_finish` checks that their rates
        Σ 1/z² add up to its own (a composition of Gaussian releases is exactly one Gaussian
        release with the summed rate — and adaptively so, which lets a model split the rate
        after an earlier release).
        """
        if getattr(self, "_group", None) is not None:
            raise RuntimeError("a release group is already open")
        self._group = (whole, [])

    def _close_group(self) -> None:
        group = getattr(self, "_group", None)
        if group is None:
            return
        whole, parts = group
        self._group = None
        got = gaussian_rate(compose([p.event for p in parts])) if parts else None
        want = gaussian_rate(whole.event)
        if got is None or want is None or not math.isclose(got, want, rel_tol=1e-9):
            raise RuntimeError(  # a bug in the model: its announced event would be wrong
                f"{type(self).__name__}'s releases of {whole.label!r} do not add up to the "
                f"announced event (rate {got!r} against {want!r})"
            )
        self._spent.append(whole)

    def _release(
        self,
        spent: SpentEvent,
        value: np.ndarray,
        *,
        name: str,
        noise_std: float,
        sensitivity: float,
        step: int | None = None,
        items: np.ndarray | None = None,
        item_factors: np.ndarray | None = None,
    ) -> None:
        """Record a noisy release (as :meth:`_spend`) and show it to the fit's ``on_release`` hook.

        Call it only once ``value`` carries its noise. The hook gets read-only copies (made
        only when a hook is set), so it can neither see the clean statistic nor change the fit.
        Inside a group (:meth:`_open_group`) the release counts towards the group's event.
        """
        group = getattr(self, "_group", None)
        (self._spent if group is None else group[1]).append(spent)
        hook = self._on_release
        if hook is None:
            return
        hook(
            Release(
                label=spent.label,
                name=name,
                step=step,
                value=read_only(value),
                noise_std=float(noise_std),
                sensitivity=float(sensitivity),
                event=spent.event,
                items=read_only(items),
                item_factors=read_only(item_factors),
            )
        )

    def _finish(
        self, config: Any, *, released: list[str], not_released: list[str], threat_model: str
    ) -> None:
        # an extreme setting (a zero ridge, a huge clip norm) can overflow the solves: refuse
        # before the model claims a guarantee, so no non-finite model is ever saved or served
        bad = sorted(
            name
            for name, value in vars(self).items()
            if name.endswith("_")
            and not name.startswith("_")
            and isinstance(value, np.ndarray)
            and value.dtype.kind in "fc"
            and not np.all(np.isfinite(value))
        )
        if bad:
            raise NonFiniteResultError(
                f"{type(self).__name__} produced non-finite {', '.join(bad)}: a setting is out of "
                "its useful range (e.g. regularization 0 or an extreme clip_norm); nothing is released"
            )
        self._close_group()
        planned = getattr(self, "_planned", None)
        if planned is not None and [p.to_dict() for p in planned] != [
            s.to_dict() for s in self._spent
        ]:
            raise RuntimeError(  # a bug in the model: its write-ahead charge would be wrong
                f"{type(self).__name__} released other events than it announced to _plan"
            )
        self.guarantee_ = PrivacyGuarantee.from_events(
            self._spent,
            delta=config.delta,
            unit=config.unit,
            accountant=AccountantKind(config.accountant),
            mechanism=self.mechanism_name,
            released=released,
            not_released=not_released,
            threat_model=threat_model,
            seeded_noise=config.seed is not None,
        )

    def declare_tuning(self, how: Tuning) -> Self:
        """Say how the hyper-parameters were chosen; it is written into the guarantee.

        ``"defaults"`` (privrec's, chosen on public benchmark data), ``"public"`` (chosen on
        public or separate data) or ``"private"`` (chosen on this training data — not charged
        to ε, which :meth:`~privrec.privacy.guarantee.PrivacyGuarantee.explain` then says in
        capitals). Without a declaration the guarantee says it is unknown and lists the
        settings that differ from the defaults. Returns ``self`` (chainable).
        """
        if how not in get_args(Tuning):
            raise ConfigError(
                f"unknown tuning declaration {how!r}; choose one of {', '.join(get_args(Tuning))}"
            )
        self._tuning: Tuning = how
        return self

    def _non_default_params(self) -> tuple[str, ...]:
        cfg = self.config()
        out = []
        for name, field in type(cfg).model_fields.items():
            if name in _PRIVACY_PARAMS or field.is_required():
                continue
            if getattr(cfg, name) != field.get_default(call_default_factory=True):
                out.append(name)
        return tuple(out)

    def _after_fit(self) -> None:
        self.guarantee_ = self.guarantee_.with_disclosure(
            catalogue="given" if getattr(self, "_catalogue_source", "data") == "given" else "data",
            tuning=getattr(self, "_tuning", "unstated"),
            non_default_params=self._non_default_params(),
        )

    @classmethod
    def from_release(
        cls,
        params: ModelConfig | dict[str, Any],
        *,
        item_ids: npt.ArrayLike,
        state: dict[str, np.ndarray],
        guarantee: PrivacyGuarantee,
    ) -> Self:
        """A model built from released arrays only — e.g. the result of cross-silo training.

        ``state`` holds what :meth:`_state` would return (for DPALS: ``item_factors``,
        ``head_items``, ``noisy_counts``, ``noise_scale``, ``fold`` = [α0, user ridge],
        ``popularity_blend``); ``item_ids`` is the catalogue. The arrays are checked as a
        loaded file's are and the guarantee is verified against ``params`` (δ, unit,
        accountant, seed, ε within the budget), so the model can be saved with :meth:`save`,
        explained, verified and served through :meth:`recommend_history` like any other.
        It knows no users.
        """
        from privrec.privacy.verify import check_against_params

        model = cls.from_config(params)
        ids = np.asarray(item_ids)
        if ids.dtype == object:
            ids = ids.astype(str)
        if ids.ndim != 1 or ids.size == 0 or len(np.unique(ids)) != len(ids):
            raise DataError(
                "item_ids must be a non-empty 1-D array of unique ids", field="item_ids"
            )
        model.item_ids_ = ids
        model.user_ids_ = np.zeros(0, dtype=ids.dtype)
        model.user_items_ = _empty_csr((0, len(ids)))
        model._released_only = True
        model._set_state({k: np.asarray(v) for k, v in state.items()})
        model._check_state()
        model._set_extra_meta({"guarantee": guarantee.model_dump(mode="json")})
        model.guarantee_ = model.guarantee_.with_disclosure().verify()
        check_against_params(model.guarantee_, model.config().model_dump(mode="json"))
        return model

    @property
    def privacy_guarantee(self) -> PrivacyGuarantee:
        self._check_fitted()
        return self.guarantee_

    def _extra_meta(self) -> dict[str, Any]:
        return {"guarantee": self.guarantee_.model_dump(mode="json")}

    def _set_extra_meta(self, extra: dict[str, Any]) -> None:
        # strict: a number stored as text is a malformed file, not something to coerce
        self.guarantee_ = PrivacyGuarantee.model_validate_json(
            json.dumps(extra["guarantee"]), strict=True
        )


def head_item_scores(
    u: np.ndarray,
    item_factors: np.ndarray,
    head: np.ndarray,
    noisy_counts: np.ndarray,
    beta: float,
    *,
    shrinkage: float = 0.0,
    lengths: np.ndarray | None = None,
) -> np.ndarray:
    """Catalogue scores of users ``u`` from factors released for the ``head`` items only.

    Off the head, ``-inf``. With ``beta > 0`` the factor scores are blended with the
    released noisy counts (:func:`blend_popularity`); with ``beta = 0`` they are kept raw
    and a user with no history (all-zero factors) gets the noisy-count ranking of the
    head. With ``shrinkage`` s > 0 and the users' own history ``lengths`` n_u, user u's
    blend weight is ``β + s / n_u`` (:func:`~privrec.models.dp_rules.user_blend`): the
    fewer items, the more popularity. Post-processing of released statistics and the
    user's own data only.
    """
    scores = u @ item_factors[head].T
    cold = ~np.any(u != 0, axis=1)
    return rank_head_scores(
        scores, head, item_factors.shape[0], noisy_counts, beta,
        shrinkage=shrinkage, lengths=lengths, cold=cold,
    )  # fmt: skip


def rank_head_scores(
    scores: np.ndarray,
    head: np.ndarray,
    n_items: int,
    noisy_counts: np.ndarray,
    beta: float,
    *,
    shrinkage: float = 0.0,
    lengths: np.ndarray | None = None,
    cold: np.ndarray | None = None,
) -> np.ndarray:
    """Catalogue scores from the raw factor scores ``scores`` (users × head items).

    The ranking half of :func:`head_item_scores`, for a caller that has ``u·Vᵀ`` over the
    head but not ``u`` itself — a private-scoring client decrypting the server's encrypted
    inner products (:mod:`privrec.secure.he`) must rank them exactly as the model does.
    ``cold`` marks users with no history (all-zero factors); with ``beta = 0`` they get
    the noisy-count ranking of the head. Post-processing of released statistics and the
    user's own data only.
    """
    scores = np.asarray(scores)
    out = np.full((scores.shape[0], n_items), -np.inf, dtype=np.float32)
    counts = noisy_counts[head]
    if lengths is not None and shrinkage > 0:
        from privrec.models.dp_rules import user_blend

        prior = blend_popularity(np.zeros((1, len(head)), np.float32), counts, 1.0)
        out[:, head] = blend_popularity(scores, counts, 0.0)
        out[:, head] += user_blend(beta, shrinkage, lengths) * prior
        return out
    if beta > 0:
        out[:, head] = blend_popularity(scores, counts, beta)
        return out
    out[:, head] = scores
    if cold is not None and cold.any():
        out[np.ix_(cold, head)] = counts
    return out


def _standardise_rows(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=1, keepdims=True)
    out: np.ndarray = (x - x.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    return out


def blend_neighbours(
    ranked: np.ndarray,
    history_head: sp.csr_matrix,
    head_factors: np.ndarray,
    head: np.ndarray,
    weight: float,
) -> np.ndarray:
    """Blend catalogue scores with an item-kNN reading of the released head factors.

    For user u with head history H_u, the neighbour score of head item j is
    ``Σ_{i ∈ H_u} cos(v_i, v_j)``; the head columns of ``ranked`` become
    ``(1 − weight)`` × their row-standardised values plus ``weight`` × the
    row-standardised neighbour scores (off-head columns stay as they are, −∞ for a
    private model). A single ridge solution averages a user's separate clusters of
    interest into one direction; the sum of similarities keeps them apart. Users
    without head history keep ``ranked``. Pure post-processing: released factors and
    the user's own history only.
    """
    if weight <= 0:
        return ranked
    v = np.asarray(head_factors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = v / np.where(norms > 0, norms, 1.0)
    h = sp.csr_matrix(history_head, dtype=np.float64, copy=True)
    h.sum_duplicates()
    h.data[:] = 1.0
    warm = np.diff(h.indptr) > 0
    if not warm.any():
        return ranked
    out = np.array(ranked, dtype=np.float32, copy=True)
    near = np.asarray((h[warm] @ unit) @ unit.T)
    base = out[np.ix_(np.flatnonzero(warm), head)].astype(np.float64)
    mixed = (1.0 - weight) * _standardise_rows(base) + weight * _standardise_rows(near)
    out[np.ix_(np.flatnonzero(warm), head)] = mixed.astype(np.float32)
    return out


def blend_popularity(scores: np.ndarray, noisy_counts: np.ndarray, beta: float) -> np.ndarray:
    """Row-standardised ``scores`` plus ``beta`` × the standardised log noisy counts.

    ``scores`` are one user per row over the same items as ``noisy_counts``.
    Standardising each row (mean 0, std 1) makes β comparable across users,
    data sets and ε (the scale of factor scores varies with the noise and the
    ridge); the prior ``log(1 + max(ñ_j, 0))`` is standardised over the items.
    Pure post-processing: the counts are already released (and charged), and a
    row uses only that user's own scores. A constant row (a user with no
    history) becomes the popularity ranking.
    """
    s = np.asarray(scores, dtype=np.float32)
    prior = np.log1p(np.maximum(np.asarray(noisy_counts, dtype=np.float64), 0.0))
    prior = (prior - prior.mean()) / max(float(prior.std()), 1e-12)
    sd = s.std(axis=1, keepdims=True)
    z = (s - s.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, np.float32(1.0))
    out: np.ndarray = (z + np.float32(beta) * prior.astype(np.float32)).astype(np.float32)
    return out


def read_blend_state(arrays: dict[str, np.ndarray]) -> tuple[float, float]:
    """The popularity blend β and the per-user shrinkage stored in a model file.

    Files written before either setting existed ranked users by the model alone, so a
    missing value reads as 0 (no blend, every user alike) rather than today's default:
    loading an old file must reproduce the recommendations it was released with. Both are
    range-checked like every other stored parameter (a tampered file gets a typed error).
    """
    beta = (
        float(check_array(arrays, "popularity_blend", kind="f", shape=(), low=0, high=10))
        if "popularity_blend" in arrays
        else 0.0
    )
    shrinkage = (
        float(check_array(arrays, "popularity_shrinkage", kind="f", shape=(), low=0, high=1000))
        if "popularity_shrinkage" in arrays
        else 0.0
    )
    return beta, shrinkage


def read_head_items(arrays: dict[str, np.ndarray], n_items: int | None) -> np.ndarray:
    """The stored head items: non-empty, sorted, unique catalogue indices (int64).

    Scoring indexes the item arrays by them, so a tampered list gets a typed error here
    rather than an IndexError or silently duplicated scores later.
    """
    high = None if n_items is None else n_items - 1
    head = check_array(arrays, "head_items", kind="iu", shape=(None,), low=0, high=high)
    if len(head) == 0 or np.any(np.diff(head.astype(np.int64)) <= 0):
        raise ModelFileError(
            "head items must be non-empty, sorted and unique", field="state_head_items"
        )
    return head.astype(np.int64)


def read_fold(arrays: dict[str, np.ndarray]) -> tuple[float, float]:
    """The stored fold-in settings (α0, user ridge): the ridge must be positive, or the
    users' solves at recommendation time are singular."""
    fold = check_array(arrays, "fold", kind="f", shape=(2,), low=0)
    if fold[1] <= 0:
        raise ModelFileError(
            "the user ridge must be positive", field="state_fold", found=float(fold[1])
        )
    return float(fold[0]), float(fold[1])
