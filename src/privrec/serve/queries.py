"""Answering a DP query: plan, charge write-ahead, compute, commit, release — in that order.

1. **Plan** (:func:`privrec.serve.analytics.plan_query`): validate the request, resolve item
   ids against the public catalogue and calibrate the noise. Nothing touches the data yet.
   Item-level queries are refused here when the catalogue comes from the data file and the
   policy removes people (:meth:`ServedDataset.item_query_refusal`).
2. **Load** the policy view if none is cached — after :func:`precheck` has refused what the
   ledger would refuse anyway (undeclared purpose, no dataset budget), so a refused request
   never reads the data nor writes a version.
3. **Reserve** the charge in the analyst's name (:meth:`Ledger.reserve`), inside the ledger's
   serialised transaction that checks every applicable budget (dataset, analyst, purpose).
   A charge that would pass a cap raises :class:`~privrec.errors.BudgetExceededError`: nothing
   is written and no noise is drawn (the API answers 403 with the remaining ε).
4. **Compute** the noisy answer (CSPRNG noise) on the policy-filtered data of the version the
   charge names.
5. **Commit** the charge with the answer stored as its result. Only then does the answer leave.

Idempotency: a request carrying an ``Idempotency-Key`` that the same analyst already used for
the same request gets the *stored* answer and no second charge — re-sending a paid-for release
is post-processing. If the first attempt reserved but never committed (it crashed or is still
running), the retry computes an answer and commits it; the ledger keeps only the first commit,
and both attempts return that one, so a charge never releases two different noisy answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from privrec.errors import (
    ConfigError,
    GovernanceError,
    PolicyViolation,
    PrivrecError,
    StaleDataError,
)
from privrec.governance import Ledger
from privrec.governance.policy import Policy
from privrec.privacy.randomness import resolve_generator
from privrec.privacy.units import PrivacyUnit
from privrec.serve import analytics
from privrec.serve.analytics import QueryPlan
from privrec.serve.datasets import ServedDataset, View, server_side

__all__ = ["QueryOutcome", "QueryRequest", "plan", "precheck", "run_query"]


@dataclass(frozen=True)
class QueryRequest:
    """A validated query (the API's body, plus the route's kind)."""

    kind: str
    epsilon: float
    delta: float | None = None
    purpose: str | None = None
    items: tuple[Any, ...] | None = None
    k: int | None = None
    column: str | None = None

    def canonical(self) -> str:
        """The request as canonical JSON: what an idempotent retry must repeat exactly."""
        return json.dumps(
            {
                "kind": self.kind,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "purpose": self.purpose,
                "items": None if self.items is None else [str(i) for i in self.items],
                "k": self.k,
                "column": self.column,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class QueryOutcome:
    answer: dict[str, Any]
    charge_id: int
    replayed: bool


def _dataset(ledger: Ledger, name: str) -> tuple[Policy, int]:
    """The dataset's policy and how many deletion requests the ledger holds for it."""
    info = ledger.dataset(name)
    return Policy.model_validate(info.policy), info.deletions


def precheck(ledger: Ledger, name: str, purpose: str | None) -> None:
    """Refuse, before any data is loaded, what the ledger's reservation would refuse anyway.

    Loading data through the policy registers a dataset version (with its member hashes) and an
    audit row, and reads the whole file: a request refused for an undeclared purpose or a
    missing dataset budget must cost none of that. The rules are the ledger's own
    (:meth:`Ledger.check_use <privrec.governance.Ledger.check_use>`, which
    :meth:`~privrec.governance.Ledger.reserve` applies too); this only runs before a load,
    never on the cached path.
    """
    ledger.check_use(name, purpose)


def plan(
    ds: ServedDataset,
    req: QueryRequest,
    unit: PrivacyUnit,
    delta: float,
    *,
    item_refusal: str | None = None,
) -> QueryPlan:
    """Validate ``req`` against the dataset and calibrate it (no data read).

    ``item_refusal`` (from :meth:`ServedDataset.item_query_refusal`) refuses every query that
    names or ranks items, before any item id is looked up: whether an item is in the catalogue
    must not be learnt from the refusal either.
    """
    b = ds.spec.max_per_user
    names_items = req.kind in ("item_counts", "cooccurrence", "top_k") or (
        req.kind == "segment_counts" and req.items is not None
    )
    if item_refusal is not None and names_items:
        raise PolicyViolation(item_refusal)
    if req.kind in ("item_counts", "cooccurrence"):
        if not req.items:
            raise ConfigError(f"a {req.kind} query needs a list of items")
        if len(set(map(str, req.items))) != len(req.items):
            raise ConfigError("an item is listed twice")
        limit = 20 if req.kind == "cooccurrence" else ds.spec.max_items_per_query
        if len(req.items) > limit:
            raise ConfigError(f"a {req.kind} query takes at most {limit} items")
        ds.item_positions(list(req.items))  # unknown ids: UnknownItemError, before any charge
        m = len(req.items)
    elif req.kind == "top_k":
        if req.k is None or not 1 <= req.k <= min(ds.n_items, 1000):
            raise ConfigError(f"k must be between 1 and {min(ds.n_items, 1000)}")
        m = ds.n_items
    elif req.kind == "segment_counts":
        if req.column not in ds.segments:
            declared = ", ".join(ds.segments) or "none"
            raise ConfigError(  # the caller's input is not echoed
                f"the column is not a declared segment column of {ds.name!r} (declared: {declared})"
            )
        if req.items is not None:
            if len(req.items) > ds.spec.max_items_per_query:
                raise ConfigError(f"at most {ds.spec.max_items_per_query} items")
            ds.item_positions(list(req.items))
        m = len(ds.segments[req.column])
    else:
        raise ConfigError(f"unknown query {req.kind!r}")
    return analytics.plan_query(req.kind, epsilon=req.epsilon, delta=delta, unit=unit, m=m, bound=b)


def compute(
    ds: ServedDataset, view: View, req: QueryRequest, qp: QueryPlan, seed: int | None
) -> dict[str, Any]:
    """The noisy answer (rounded: post-processing) and how it was made."""
    rng = resolve_generator(seed)
    answer: dict[str, Any]
    if req.kind == "item_counts":
        assert req.items is not None
        cols = ds.item_positions(list(req.items))
        noisy = analytics.item_counts(view.matrix, cols, qp, rng)
        answer = {
            "counts": [
                {"item": i, "count": round(float(c), 2)}
                for i, c in zip(ds.item_ids(cols), noisy, strict=True)
            ]
        }
    elif req.kind == "top_k":
        assert req.k is not None
        top, noisy = analytics.top_k_popular(view.matrix, req.k, qp, rng)
        answer = {
            "items": [
                {"item": i, "count": round(float(c), 2)}
                for i, c in zip(ds.item_ids(top), noisy, strict=True)
            ]
        }
    elif req.kind == "cooccurrence":
        assert req.items is not None
        cols = ds.item_positions(list(req.items))
        noisy = analytics.cooccurrence_counts(view.matrix, cols, qp, rng)
        ids = ds.item_ids(cols)
        iu = np.triu_indices(len(cols), k=1)
        answer = {
            "pairs": [
                {"items": [ids[a], ids[b]], "count": round(float(c), 2)}
                for a, b, c in zip(iu[0].tolist(), iu[1].tolist(), noisy, strict=True)
            ]
        }
    else:
        assert req.column is not None
        values = ds.segments[req.column]
        among = None if req.items is None else ds.item_positions(list(req.items))
        noisy = analytics.segment_counts(
            view.matrix, view.codes[req.column], len(values), among, qp, rng
        )
        answer = {
            "segments": [
                {"value": v, "count": round(float(c), 2)}
                for v, c in zip(values, noisy, strict=True)
            ]
        }
    return {"kind": req.kind, "dataset": ds.name, **answer, "privacy": qp.describe()}


def run_query(
    ledger: Ledger,
    ds: ServedDataset,
    req: QueryRequest,
    *,
    idempotency_key: str | None = None,
    seed: int | None = None,
) -> QueryOutcome:
    """Plan, reserve (write-ahead), compute, commit; returns the released answer.

    The cached view is reloaded only when the ledger says it is out of date
    (:class:`~privrec.errors.StaleDataError`: a deletion, consent or policy change, or the
    retention window passing its oldest interaction). Any other refusal (an undeclared purpose,
    no dataset budget, a budget exceeded) is answered as it is: reloading would not change it,
    and would cost a full read of the data and a new version in the ledger per refused request.
    """
    try:
        return _run(ledger, ds, req, idempotency_key, seed)
    except PrivrecError as exc:
        # an error naming a server file (the consent file vanished before a charge, say) is the
        # server's configuration, not the analyst's request: a fixed 503, detail in the log
        found = server_side(ds.name, exc)
        if found is exc:
            raise
        raise found from exc


def _plan_now(ledger: Ledger, ds: ServedDataset, req: QueryRequest) -> QueryPlan:
    """:func:`plan` against the dataset's policy and deletions as the ledger holds them now."""
    policy, deletions = _dataset(ledger, ds.name)
    delta = req.delta if req.delta is not None else policy.budget.delta
    return plan(ds, req, policy.unit, delta, item_refusal=ds.item_query_refusal(policy, deletions))


def _run(
    ledger: Ledger,
    ds: ServedDataset,
    req: QueryRequest,
    idempotency_key: str | None,
    seed: int | None,
) -> QueryOutcome:
    qp = _plan_now(ledger, ds, req)
    canonical = req.canonical()
    description = f"{req.kind} {hashlib.sha256(canonical.encode()).hexdigest()[:32]} {canonical}"
    if not ds.loaded:
        precheck(ledger, ds.name, req.purpose)
    view = ds.view(ledger)
    for attempt in range(2):
        try:
            charge = ledger.reserve(
                ds.name,
                qp.events(),
                purpose=req.purpose,
                kind="query",
                description=description[:2000],
                data=view.governed,
                idempotency_key=idempotency_key,
            )
            break
        except StaleDataError:
            if attempt:
                raise
            precheck(ledger, ds.name, req.purpose)
            view = ds.view(ledger, stale=view)
            # the data changed because the policy or its deletions did: what may be asked, and
            # how, is decided again on them (a deletion recorded since the plan above can make
            # item-level queries over a catalogue taken from the data refused)
            qp = _plan_now(ledger, ds, req)
    if charge.replayed:
        if charge.status == "committed" and charge.result is not None:
            return QueryOutcome(charge.result, charge.id, True)
        if charge.status != "reserved":
            raise GovernanceError(
                f"the request with this idempotency key ended as {charge.status}; "
                "send it again with a new key"
            )
    try:
        answer = compute(ds, view, req, qp, seed)
        done = ledger.commit(charge, result=answer)
    except BaseException as exc:
        # Nothing has left the process: the answer is sent only after its commit. Noise drawn
        # and never released costs no privacy, and a reservation left behind would hold its ε
        # in every window of a rolling budget for good (a review: each failed query shrank the
        # shared budget permanently). So the charge is aborted; if even that fails (a key
        # revoked mid-request), it stays reserved for an owner to abort (`ledger abort`).
        try:
            ledger.abort(
                charge, reason=f"query failed before its answer left ({type(exc).__name__})"
            )
        except Exception:
            with contextlib.suppress(Exception):
                ledger.note(charge, f"query failed after reserving ({type(exc).__name__}); kept")
        raise
    return QueryOutcome(done.result, done.id, charge.replayed)
