"""The ``/v1`` routes. Each names the role it needs; the ledger enforces it.

=========================================  ===================  ==================================
route                                      who                  what
=========================================  ===================  ==================================
``GET /v1/health``                         anyone               liveness, version
``GET /v1/me``                             any key              the key's principal and role
``GET /v1/models`` (``/{id}``)             any key              models, guarantees, lineage, eval
``POST /v1/recommend``                     any key              top-k from a user's own history
``POST /v1/models/{id}/he-score``          any key              encrypted scoring (CKKS)
``GET /v1/datasets``                       any key              datasets and their queries
``POST /v1/datasets/{name}/queries/…``     analyst              DP queries, charged write-ahead
``GET /v1/budgets``                        any key (own view)   budgets, composed vs naive ε
``GET /v1/charges``                        any key (own view)   charges, newest first
``GET /v1/evaluations``                    any key              ε vs Recall/NDCG per quartile
``GET /v1/artifacts``                      owner, auditor       artifacts with lineage
``GET /v1/audit``                          owner, auditor       audit log and chain status
``GET /v1/governance``                     owner, auditor       consent, deletion, retention
=========================================  ===================  ==================================
"""

from __future__ import annotations

import math
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from privrec import __version__
from privrec.errors import ConfigError, PermissionDeniedError, UnknownDatasetError
from privrec.governance import Ledger
from privrec.governance.policy import Policy
from privrec.serve import dashboard
from privrec.serve.app import ApiError, ServeContext
from privrec.serve.fastpath import recommendation
from privrec.serve.guard import key_ident
from privrec.serve.models import ServedModel
from privrec.serve.queries import QueryRequest, run_query
from privrec.serve.schemas import (
    MODEL_ID,
    CooccurrenceQuery,
    ErrorResponse,
    ItemCountsQuery,
    RecommendRequest,
    RecommendResponse,
    SegmentCountsQuery,
    TopKQuery,
)

__all__ = ["router"]

_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing, malformed, unknown or revoked key"},
    429: {"model": ErrorResponse, "description": "Rate limit of this key exceeded"},
    503: {"model": ErrorResponse, "description": "The server's configuration needs attention"},
}
_write_errors: dict[int | str, dict[str, Any]] = {
    **_errors,
    403: {"model": ErrorResponse, "description": "Wrong role, or the budget would be exceeded"},
    404: {"model": ErrorResponse, "description": "Unknown dataset"},
    409: {"model": ErrorResponse, "description": "Idempotency key reused for another request"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    422: {"model": ErrorResponse, "description": "Malformed request"},
}

router = APIRouter(prefix="/v1", responses={422: {"model": ErrorResponse}})
_bearer = HTTPBearer(auto_error=False, description="A ledger API key: prk_<id>_<secret>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def _state(request: Request) -> ServeContext:
    ctx: ServeContext = request.app.state.ctx
    return ctx


async def _ctx(request: Request) -> ServeContext:
    """The service's shared state (async: a sync dependency would cost a thread hop)."""
    return _state(request)


async def _key(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> str:
    key = creds.credentials if creds is not None else header
    if not key:
        raise ApiError(
            401,
            "unauthenticated",
            "no API key: send `Authorization: Bearer prk_…` or `X-API-Key`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # a malformed key (or an X-API-Key with whitespace around it; HTTPBearer strips the bearer
    # credentials, so `Bearer  <key>` is that same key and bucket) is refused here with 401,
    # before it could take a rate-limit bucket: junk keys cannot grow the limiter's table
    wait = _state(request).limiter.allow(key_ident(key))
    if wait > 0:
        raise ApiError(
            429,
            "rate_limited",
            "too many requests for this key; slow down",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
            retry_after_seconds=wait,
        )
    return key


async def reader(request: Request, key: Annotated[str, Depends(_key)]) -> Ledger:
    """The caller's ledger for reads (a verified key is reused for a few seconds)."""
    keys = _state(request).keys
    source = request.client.host if request.client else None
    if keys.cached(key) is None:  # verifying may hash the secret (scrypt): not on the loop
        return await run_in_threadpool(lambda: keys.ledger(key, source=source))
    return keys.ledger(key, source=source)


def spender(request: Request, key: Annotated[str, Depends(_key)]) -> Ledger:
    """The caller's ledger re-checked in the database (anything that spends budget)."""
    source = request.client.host if request.client else None
    return _state(request).keys.ledger(key, fresh=True, source=source)


Reader = Annotated[Ledger, Depends(reader)]
Spender = Annotated[Ledger, Depends(spender)]
Ctx = Annotated[ServeContext, Depends(_ctx)]


# ---------------------------------------------------------------------------- basics
@router.get("/health", tags=["service"])
def health() -> dict[str, str]:
    """Liveness: no key needed, nothing about the ledger."""
    return {"status": "ok", "version": __version__, "api": "v1"}


@router.get("/me", tags=["service"], responses=_errors)
def me(ledger: Reader) -> dict[str, str]:
    """Who the key belongs to, and their role (owner, analyst or auditor)."""
    return {"name": ledger.principal.name, "role": ledger.principal.role.value}


# ---------------------------------------------------------------------------- models
def _lineage(ledger: Ledger, sm: ServedModel) -> dict[str, Any]:
    try:
        rec = ledger.artifact(sm.file_hash)
    except UnknownDatasetError:
        return {"recorded": False, "note": "the ledger has no record of this file"}
    except PermissionDeniedError:
        return {
            "recorded": True,
            "note": "trained by another analyst: its lineage is visible to owners and auditors",
        }
    return {
        "recorded": True,
        "artifact_id": rec.id,
        "dataset": rec.dataset,
        "dataset_version": rec.version_id,
        "dataset_hash": rec.dataset_hash,
        "trained_by": rec.created_by,
        "created_at": rec.created_at,
        "privrec_version": rec.privrec_version,
        "git_commit": rec.git_commit,
        "charge_ids": list(rec.charge_ids),
        "seeded_noise": rec.seeded_noise,
        "signer": rec.signer,
    }


def model_entry(ctx: ServeContext, ledger: Ledger, sm: ServedModel) -> dict[str, Any]:
    g = sm.guarantee_summary()
    return {
        "id": sm.id,
        "kind": sm.kind,
        "private": sm.private,
        "served": ctx.models.servable(sm),
        "n_items": sm.n_items,
        "file_hash": sm.file_hash,
        "signature": sm.signature_summary(),
        "guarantee": g,
        "plain_language": _plain_language(sm, g),
        "lineage": _lineage(ledger, sm),
        "evaluation": sm.evaluation,
        "he_scoring": hasattr(sm.model, "item_factors_"),
    }


def _plain_language(sm: ServedModel, g: dict[str, Any] | None) -> str:
    if g is None:
        return (
            "This model has no differential-privacy guarantee: its file and its answers may "
            "reveal the people it was trained on."
        )
    text = str(g["explanation"])
    if not getattr(sm.model, "_released_only", True):
        text += (
            " WARNING: this file also stores the training users and interactions, which the "
            "guarantee does NOT cover: it is no private release."
        )
    return text


@router.get("/models", tags=["models"], responses=_errors)
def list_models(ctx: Ctx, ledger: Reader) -> dict[str, Any]:
    """Every model file served: guarantee in numbers and in plain language, lineage, evaluation."""
    return {
        "models": [model_entry(ctx, ledger, sm) for sm in ctx.models.list()],
        "required_signer": ctx.models.signer,
        # reasons name the file and the error, never a server path (ModelStore.rejected)
        "rejected": [{"file": f, "reason": r} for f, r in sorted(ctx.models.rejected.items())],
    }


@router.get(
    "/models/{model_id}",
    tags=["models"],
    responses={**_errors, 404: {"model": ErrorResponse, "description": "Unknown model"}},
)
def get_model(
    ctx: Ctx, ledger: Reader, model_id: Annotated[str, Path(pattern=MODEL_ID)]
) -> dict[str, Any]:
    """One model (as in the listing)."""
    return model_entry(ctx, ledger, ctx.models.get(model_id))


@router.post(
    "/recommend",
    tags=["models"],
    response_model=RecommendResponse,
    responses={
        **_errors,
        403: {"model": ErrorResponse, "description": "Model without a DP guarantee"},
        404: {"model": ErrorResponse, "description": "Unknown model"},
        413: {"model": ErrorResponse, "description": "Request body too large"},
    },
)
async def recommend(ctx: Ctx, _ledger: Reader, body: RecommendRequest) -> Response:
    """Top-k items for a user from their own history (fold-in); nothing of the request is kept.

    For DPALS the user's factors are solved from the released item factors and this history
    only (joint DP): the answer depends on other people only through the released model.
    Well-formed requests are answered by :mod:`privrec.serve.fastpath` before they reach this
    route (same checks, same answer); this route answers the rest.
    """
    # a Response is returned as it is (the schema above documents it; re-validating costs time)
    return JSONResponse(recommendation(ctx, body.model, body.history, body.k))


_he_lock = threading.Lock()


def _he_server(ctx: ServeContext, sm: ServedModel) -> tuple[Any, threading.Lock]:
    with _he_lock:
        found = ctx.he_servers.get(sm.file_hash)
        if found is None:
            try:
                from privrec.secure.he import PrivateScoringServer
            except ImportError:  # pragma: no cover - the [he] extra is missing
                raise ApiError(
                    501, "he_unavailable", "encrypted scoring needs the [he] extra"
                ) from None
            # max_sessions=0: no client context is kept between requests
            server = PrivateScoringServer.from_model(sm.model, max_sessions=0)
            found = (server, threading.Lock())
            ctx.he_servers[sm.file_hash] = found
        return found


@router.post(
    "/models/{model_id}/he-score",
    tags=["models"],
    response_class=Response,
    responses={
        **_errors,
        200: {"content": {"application/octet-stream": {}}, "description": "Encrypted scores"},
        404: {"model": ErrorResponse, "description": "Unknown model"},
        413: {"model": ErrorResponse, "description": "Request body too large"},
    },
)
async def he_score(
    request: Request, ctx: Ctx, _ledger: Reader, model_id: Annotated[str, Path(pattern=MODEL_ID)]
) -> Response:
    """Encrypted private scoring: the body is a ``ScoringRequest`` (privrec.secure.he) carrying the
    client's public context and its encrypted user vector; the answer is the encrypted scores of
    every item. The server never sees the user's factors, history or scores, and keeps no
    client context between requests (send the context every time)."""
    sm = ctx.models.get(model_id)
    if not ctx.models.servable(sm):
        raise ApiError(403, "not_private", f"model {sm.id!r} is not served")
    if not hasattr(sm.model, "item_factors_"):
        raise ApiError(422, "not_a_factor_model", f"model {sm.id!r} has no item factors")
    body = await request.body()
    server, lock = await run_in_threadpool(_he_server, ctx, sm)

    def score() -> bytes:
        with lock:
            out: bytes = server.score(body).to_bytes()
            return out

    return Response(await run_in_threadpool(score), media_type="application/octet-stream")


# ---------------------------------------------------------------------------- queries
@router.get("/datasets", tags=["queries"], responses=_errors)
def list_datasets(ctx: Ctx, ledger: Reader) -> dict[str, Any]:
    """Datasets this service answers queries about (and whether the ledger knows them)."""
    known = {d.name: d for d in ledger.datasets()}
    out = []
    for name, ds in sorted(ctx.datasets.items()):
        info = known.get(name)
        refusal = (
            None
            if info is None
            else ds.item_query_refusal(Policy.model_validate(info.policy), info.deletions)
        )
        out.append(
            {
                "name": name,
                "registered": info is not None,
                "unit": None if info is None else info.unit,
                "purpose": None if info is None else info.policy.get("purpose"),
                "catalogue": "declared" if ds.declared_catalogue else "from the data file",
                # a catalogue taken from the data while the policy removes people is not public
                # any more: not even its size is shown then (nor item-level queries answered)
                "catalogue_size": None if refusal is not None else ds.n_items,
                "item_queries": refusal is None,
                "segment_columns": {c: list(v) for c, v in ds.segments.items()},
                "max_per_user": ds.spec.max_per_user,
                "queries": ["item-counts", "top-k", "cooccurrence", "segment-counts"],
            }
        )
    return {"datasets": out}


def _answer(
    ctx: ServeContext, ledger: Ledger, dataset: str, req: QueryRequest, idem: str | None
) -> dict[str, Any]:
    ds = ctx.datasets.get(dataset)
    if ds is None:
        raise UnknownDatasetError("this service answers no queries about a dataset of that name")
    if idem is not None and not (0 < len(idem) <= 128 and idem.isprintable()):
        raise ConfigError("Idempotency-Key must be 1-128 printable characters")
    out = run_query(ledger, ds, req, idempotency_key=idem, seed=ctx.settings.seed)
    budgets = [_budget(b) for b in ledger.status(dataset)]
    return {
        **out.answer,
        "charge": {"id": out.charge_id, "replayed": out.replayed},
        "budgets": budgets,
    }


def _budget(b: Any) -> dict[str, Any]:
    return {
        "dataset": b.dataset,
        "scope": b.scope,
        "scope_value": b.scope_value,
        "epsilon": b.epsilon,
        "delta": b.delta,
        "period_days": b.period_days,
        "accountant": b.accountant,
        "composed_epsilon": b.composed_epsilon,
        "naive_epsilon": b.naive_epsilon,
        "remaining_epsilon": b.remaining,
        "committed": b.committed,
        "reserved": b.reserved,
        "aborted": b.aborted,
    }


DatasetName = Annotated[str, Path(min_length=1, max_length=128)]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=128)]


@router.post("/datasets/{dataset}/queries/item-counts", tags=["queries"], responses=_write_errors)
def query_item_counts(
    ctx: Ctx, ledger: Spender, dataset: DatasetName, body: ItemCountsQuery, idem: IdemKey = None
) -> dict[str, Any]:
    """Noisy user counts of the listed items. Charged to your budget before the answer leaves."""
    req = QueryRequest("item_counts", body.epsilon, body.delta, body.purpose, tuple(body.items))
    return _answer(ctx, ledger, dataset, req, idem)


@router.post("/datasets/{dataset}/queries/top-k", tags=["queries"], responses=_write_errors)
def query_top_k(
    ctx: Ctx, ledger: Spender, dataset: DatasetName, body: TopKQuery, idem: IdemKey = None
) -> dict[str, Any]:
    """The k most popular items (noisy counts over the catalogue, then the top k)."""
    req = QueryRequest("top_k", body.epsilon, body.delta, body.purpose, k=body.k)
    return _answer(ctx, ledger, dataset, req, idem)


@router.post("/datasets/{dataset}/queries/cooccurrence", tags=["queries"], responses=_write_errors)
def query_cooccurrence(
    ctx: Ctx, ledger: Spender, dataset: DatasetName, body: CooccurrenceQuery, idem: IdemKey = None
) -> dict[str, Any]:
    """Noisy co-occurrence counts (users having both) for every pair of 2–20 items."""
    req = QueryRequest("cooccurrence", body.epsilon, body.delta, body.purpose, tuple(body.items))
    return _answer(ctx, ledger, dataset, req, idem)


@router.post(
    "/datasets/{dataset}/queries/segment-counts", tags=["queries"], responses=_write_errors
)
def query_segment_counts(
    ctx: Ctx, ledger: Spender, dataset: DatasetName, body: SegmentCountsQuery, idem: IdemKey = None
) -> dict[str, Any]:
    """Noisy active-user counts per declared value of a segment column."""
    items = None if body.items is None else tuple(body.items)
    req = QueryRequest(
        "segment_counts", body.epsilon, body.delta, body.purpose, items, column=body.column
    )
    return _answer(ctx, ledger, dataset, req, idem)


# ---------------------------------------------------------------------------- ledger views
@router.get("/budgets", tags=["ledger"], responses=_errors)
def budgets(
    ctx: Ctx,
    ledger: Reader,
    dataset: Annotated[str | None, Query(max_length=128)] = None,
    series: bool = False,
) -> dict[str, Any]:
    """Budgets you may see (analysts: dataset, purpose and their own): composed ε, naive Σε,
    remaining; with ``series=true`` also the spend after each charge over time."""

    def compute() -> list[dict[str, Any]]:
        out = []
        for b in ledger.status(dataset):
            entry = _budget(b)
            if series:
                entry["series"] = dashboard.series(ledger, b)
            out.append(entry)
        return out

    out = ctx.views.get(
        ledger,
        ("budgets", dataset, series),
        compute,
        expires=lambda bs: any(b["period_days"] is not None for b in bs),
    )
    return {"budgets": out}


@router.get("/charges", tags=["ledger"], responses=_errors)
def charges(
    ledger: Reader,
    dataset: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Charges, newest first (analysts see their own)."""
    return {"charges": [dashboard.charge_entry(c) for c in ledger.history(dataset, limit=limit)]}


@router.get("/evaluations", tags=["models"], responses=_errors)
def evaluations(ctx: Ctx, _ledger: Reader) -> dict[str, Any]:
    """Recorded evaluations: ε against Recall/NDCG, overall and per user-activity quartile."""
    return dashboard.tradeoff(ctx.models.list())


@router.get("/artifacts", tags=["ledger"], responses={**_errors, 403: {"model": ErrorResponse}})
def artifacts(ledger: Reader) -> dict[str, Any]:
    """Every artifact in the ledger with its lineage and guarantee (owner, auditor)."""
    return {"artifacts": [dashboard.artifact_entry(a) for a in ledger.artifacts()]}


@router.get("/audit", tags=["ledger"], responses={**_errors, 403: {"model": ErrorResponse}})
def audit(
    ctx: Ctx, ledger: Reader, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    """The audit log's newest rows and the verification of its whole hash chain (owner, auditor)."""
    return dashboard.audit(ctx, ledger, limit)


@router.get("/governance", tags=["ledger"], responses={**_errors, 403: {"model": ErrorResponse}})
def governance(ledger: Reader) -> dict[str, Any]:
    """Consent, deletion, retention and minimisation figures per dataset (owner, auditor)."""
    return dashboard.governance(ledger)
