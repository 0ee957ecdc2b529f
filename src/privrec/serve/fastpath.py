"""``POST /v1/recommend`` without the framework: the hot route, answered in a fraction of the time.

A recommendation is the one request a service sees thousands of times a second, and its own work
(the fold-in, :mod:`privrec.serve.foldin`) takes about 0.1 ms. Through FastAPI it took ~1 ms of
CPU: routing, the dependency graph (three security dependencies), pydantic validation of the
history, exception middleware, a response model. :class:`RecommendFastPath` is an ASGI
middleware that answers a *well-formed* recommendation itself:

* the body is read under the same size limit (``BodyLimit`` stays outside it, and so does the
  access log, which records the route template, status and time — nothing of the request);
* it must be ``application/json`` and exactly what :class:`~privrec.serve.schemas.RecommendRequest`
  accepts without coercion: ``model`` matching the model-id pattern, ``history`` a list of at
  most 10,000 strings (1–256 characters) or integers, ``k`` an integer in 1–1000, no other field;
* the key is taken as the route's security dependencies take it (``Authorization: Bearer`` or
  ``X-API-Key``; the bearer credentials stripped of surrounding whitespace as HTTPBearer does,
  so they are the same key and bucket), refused (401) if malformed — an ``X-API-Key`` padded
  with whitespace included — before it could take a rate-limit bucket, rate limited per key, and verified with the same
  :class:`~privrec.serve.guard.KeyCache` (a verified key is reused for ``key_ttl`` seconds, as
  for every read);
* errors after that point (429, 401, 404, 403) are rendered by the app's own error handlers.

Anything else — a malformed body, another content type, an unusual header, a missing key — is
handed to the full FastAPI route with the body replayed, *before* a rate-limit token is taken, so
every error keeps exactly the framework's answer (422 details, 401 …). The fast path holds no
state of its own: the history lives in local variables of one call, as on the full route.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from privrec.errors import PrivrecError
from privrec.serve.app import ApiError, ServeContext, api_error_response, library_error_response
from privrec.serve.guard import ASGIApp, Message, Receive, Scope, Send, key_ident

__all__ = ["RecommendFastPath", "parse_recommend", "recommendation"]

PATH = "/v1/recommend"
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FIELDS = frozenset(("model", "history", "k"))
_JSON_TYPE = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class _Template:
    path: str


_ROUTE = _Template(PATH)


def recommendation(ctx: ServeContext, model_id: str, history: list[Any], k: int) -> dict[str, Any]:
    """The answer to one recommendation (both routes): top-k items, unknown ids, guarantee."""
    sm = ctx.models.get(model_id)
    if not ctx.models.servable(sm):
        raise ApiError(
            403,
            "not_private",
            f"model {sm.id!r} is no private release (no guarantee, seeded noise, or its "
            "training users stored in the file) and this service does not serve such models",
        )
    items, unknown = sm.recommend(history, k)
    g = sm.guarantee
    return {
        "model": sm.id,
        "items": items,
        "unknown_history_items": unknown,
        "guarantee": None
        if g is None
        else {
            "epsilon": float(g.epsilon),
            "delta": float(g.delta),
            "unit": getattr(g.unit, "value", str(g.unit)),
        },
    }


def parse_recommend(body: bytes) -> tuple[str, list[Any], int] | None:
    """``(model, history, k)`` of a body the schema accepts as it is, else ``None``."""
    try:
        req = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if type(req) is not dict or not _FIELDS.issuperset(req):
        return None
    model = req.get("model")
    history = req.get("history")
    k = req.get("k", 10)
    if type(model) is not str or _MODEL_ID.fullmatch(model) is None:
        return None
    if type(history) is not list or len(history) > 10_000:
        return None
    if type(k) is not int or not 1 <= k <= 1000:
        return None
    for v in history:
        t = type(v)
        if t is int:
            continue
        if t is not str or not 0 < len(v) <= 256:
            return None
        if not v.isascii():  # a lone surrogate ("\\ud800") parses here but not in the schema's
            try:  # JSON parser: let the full route refuse it, byte for byte as documented
                v.encode("utf-8")
            except UnicodeEncodeError:
                return None
    return model, history, k


def _key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The API key as the route's HTTPBearer / APIKeyHeader would take it, or ``None`` (fall back)."""
    authorization = api_key = None
    for name, value in headers:
        if name == b"authorization" and authorization is None:
            authorization = value
        elif name == b"x-api-key" and api_key is None:
            api_key = value
    if authorization is not None:
        scheme, _, param = authorization.decode("latin-1").partition(" ")
        cred = param.strip()
        return cred if scheme.lower() == "bearer" and cred else None
    return api_key.decode("latin-1") if api_key else None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


class RecommendFastPath:
    """ASGI middleware: answers well-formed ``POST /v1/recommend`` requests (module docstring)."""

    def __init__(self, app: ASGIApp, ctx: ServeContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers = scope["headers"]
        parsed = parse_recommend(body) if _is_json(headers) else None
        key = _key(headers) if parsed is not None else None
        if parsed is None or key is None:
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = _ROUTE  # the access log names the route template
        ctx = self.ctx
        try:
            wait = ctx.limiter.allow(key_ident(key))
            if wait > 0:
                raise ApiError(
                    429,
                    "rate_limited",
                    "too many requests for this key; slow down",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                    retry_after_seconds=wait,
                )
            if ctx.keys.cached(key) is None:  # verifying may hash the secret: not on the loop
                client = scope.get("client")
                await run_in_threadpool(ctx.keys.principal, key, client[0] if client else None)
            answer = recommendation(ctx, *parsed)
        except ApiError as exc:
            await api_error_response(exc)(scope, receive, send)
            return
        except PrivrecError as exc:
            await library_error_response(exc)(scope, receive, send)
            return
        raw = json.dumps(
            answer, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        ).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(raw)).encode()), *_JSON_TYPE],
            }
        )
        await send({"type": "http.response.body", "body": raw})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body over once, then the real one."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
