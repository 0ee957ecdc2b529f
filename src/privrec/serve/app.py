"""The FastAPI application: settings, shared state, JSON errors, limits and the dashboard files.

:func:`create_app` builds one app from :class:`ServeSettings`; ``privrec serve`` runs it on
uvicorn bound to 127.0.0.1 unless told otherwise. Routes live in :mod:`privrec.serve.routes`
(``/v1/…``); the dashboard (``/dashboard/``) is static HTML and JavaScript reading those routes,
with plotly.js's basic bundle shipped beside it (MIT licence) — no CDN, it works offline.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from privrec.errors import (
    AuthenticationError,
    BudgetExceededError,
    ConfigError,
    DataError,
    GovernanceError,
    LedgerSchemaError,
    MessageRejected,
    PermissionDeniedError,
    PolicyViolation,
    PrivrecError,
    ServeConfigError,
    UnknownDatasetError,
    UnknownItemError,
    UnknownModelError,
)
from privrec.governance.db import resolve_url
from privrec.serve.dashboard import ViewCache
from privrec.serve.datasets import (
    UNAVAILABLE,
    DatasetSpec,
    DatasetUnavailableError,
    ServedDataset,
    log_detail,
    names_server_files,
    public_text,
)
from privrec.serve.guard import (
    AccessLog,
    AuthThrottledError,
    BodyLimit,
    KeyCache,
    RateLimiter,
    error_body,
)
from privrec.serve.models import ModelStore

__all__ = [
    "ApiError",
    "ServeContext",
    "ServeSettings",
    "api_error_response",
    "app_from_environment",
    "configure_log",
    "create_app",
    "library_error_response",
]

log = logging.getLogger("privrec.serve")
API_VERSION = "1"
#: where ``privrec serve --workers N`` hands its settings to the worker processes
SETTINGS_ENV = "PRIVREC_SERVE_SETTINGS"


@dataclass
class ServeSettings:
    """Everything ``privrec serve`` is told. Limits are per API key and per request."""

    db_url: str
    models_dir: Path
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    #: requests per second per key (token bucket; 0 disables) and the burst allowed
    rate_limit: float = 50.0
    burst: int = 100
    #: seconds a verified key is reused for reads (revocation takes effect within this time)
    key_ttl: float = 5.0
    max_body_bytes: int = 64 * 1024
    max_he_body_bytes: int = 64 * 1024 * 1024
    allow_non_private: bool = False
    #: seeded query noise: reproducible and NOT private (tests only; warns)
    seed: int | None = None
    #: an Ed25519 public key file (``signing.pub``): serve only model files it signed — a file
    #: that fails refuses the start, or is refused on reload while the old model stays served
    verify_key: Path | None = None

    def to_json(self, log_level: str = "info") -> str:
        """The settings as JSON (what worker processes rebuild them from)."""
        return json.dumps(
            {
                "db_url": self.db_url,
                "models_dir": str(self.models_dir),
                "datasets": {n: d.model_dump(mode="json") for n, d in self.datasets.items()},
                "rate_limit": self.rate_limit,
                "burst": self.burst,
                "key_ttl": self.key_ttl,
                "max_body_bytes": self.max_body_bytes,
                "max_he_body_bytes": self.max_he_body_bytes,
                "allow_non_private": self.allow_non_private,
                "seed": self.seed,
                "verify_key": None if self.verify_key is None else str(self.verify_key),
                "log_level": log_level,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> tuple[ServeSettings, str]:
        """Settings and log level from :meth:`to_json`'s text."""
        raw = json.loads(text)
        level = str(raw.pop("log_level", "info"))
        raw["models_dir"] = Path(raw["models_dir"])
        if raw.get("verify_key") is not None:
            raw["verify_key"] = Path(raw["verify_key"])
        raw["datasets"] = {n: DatasetSpec.model_validate(d) for n, d in raw["datasets"].items()}
        return cls(**raw), level


class ApiError(Exception):
    """An error the API reports as JSON: status, code, message (and extra fields)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


@dataclass
class ServeContext:
    settings: ServeSettings
    url: str
    keys: KeyCache
    limiter: RateLimiter
    models: ModelStore
    datasets: dict[str, ServedDataset]
    he_servers: dict[str, Any] = field(default_factory=dict)
    audit_cache: dict[str, Any] = field(default_factory=dict)
    views: ViewCache = field(default_factory=ViewCache)


def _status_of(exc: PrivrecError) -> tuple[int, str]:
    """The HTTP status and code of a library error (most specific class first)."""
    table: list[tuple[type[Exception], int, str]] = [
        (AuthThrottledError, 429, "rate_limited"),
        (AuthenticationError, 401, "unauthenticated"),
        (BudgetExceededError, 403, "budget_exceeded"),
        (PermissionDeniedError, 403, "forbidden"),
        (UnknownModelError, 404, "unknown_model"),
        (UnknownDatasetError, 404, "unknown_dataset"),
        (UnknownItemError, 422, "unknown_item"),
        (LedgerSchemaError, 503, "ledger_unavailable"),
        (PolicyViolation, 409, "policy_violation"),
        (GovernanceError, 409, "conflict"),
        (DataError, 422, "invalid_request"),
        (MessageRejected, 422, "invalid_request"),
        (ConfigError, 422, "invalid_request"),
    ]
    for cls, status, code in table:
        if isinstance(exc, cls):
            return status, code
    return 400, "bad_request"


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    """The JSON answer to an :class:`ApiError` (the app's handler and the fast path share it)."""
    return _json(
        exc.status, error_body(exc.status, exc.code, exc.message, **exc.extra), exc.headers
    )


def library_error_response(exc: PrivrecError) -> JSONResponse:
    """The JSON answer to a library error: its status and code, and budget figures if refused.

    No server path and no value found in a file reaches the caller: errors the server's own
    configuration caused are a fixed 503 (detail in the service log), and every other message
    keeps base names at most (:func:`~privrec.serve.datasets.public_text`).
    """
    unavailable = _server_side_response(exc)
    if unavailable is not None:
        return unavailable
    status, code = _status_of(exc)
    extra: dict[str, Any] = {}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, AuthThrottledError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        extra = {"retry_after_seconds": exc.retry_after}
    if isinstance(exc, BudgetExceededError):
        extra = {
            "scope": exc.scope,
            "remaining_epsilon": max(exc.remaining, 0.0),
            "requested_epsilon": exc.requested,
            "cap_epsilon": exc.cap,
        }
    # names that were not found come from the caller: answered with a fixed text, not echoed
    message = _NOT_FOUND.get(code, public_text(exc))
    return _json(status, error_body(status, code, message, **extra), headers)


def _server_side_response(exc: PrivrecError) -> JSONResponse | None:
    """A fixed 503 for an error the server's configuration caused (the ledger, the dataset's
    files, anything naming a server file), with the detail in the service log only; ``None``
    for an error about the request."""
    if isinstance(exc, DatasetUnavailableError):
        log.warning("dataset %r unavailable: %s", exc.dataset, log_detail(exc.cause))
        return _json(503, error_body(503, "dataset_unavailable", UNAVAILABLE))
    if isinstance(exc, LedgerSchemaError):
        log.warning("ledger unavailable: %s", log_detail(exc))
        return _json(503, error_body(503, "ledger_unavailable", _LEDGER_UNAVAILABLE))
    if names_server_files(exc):
        log.warning("unavailable: %s", log_detail(exc))
        return _json(503, error_body(503, "server_unavailable", _SERVER_UNAVAILABLE))
    return None


def _where(error: Any) -> str:
    """A validation error's location without the caller's own names: an unknown key is the
    caller's text (it may be anything), so it is not echoed."""
    loc = [str(p) for p in error.get("loc", ())]
    if error.get("type") == "extra_forbidden" and loc:
        loc[-1] = "(an unknown field)"
    return ".".join(loc)


_LEDGER_UNAVAILABLE = "the ledger is unavailable: the server's configuration needs attention"
_SERVER_UNAVAILABLE = "unavailable: the server's configuration needs attention"

_NOT_FOUND = {
    "unknown_model": "no model of that name is served here",
    "unknown_dataset": "no dataset, version or artifact of that name here",
}


#: headers of the dashboard's page and files: nothing but the service's own scripts runs (no
#: inline script; plotly.js sets inline styles), the page cannot be framed by another site
#: (clickjacking the query form), files are not sniffed as another type, no referrer leaves
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _static_dir() -> Path:
    return Path(str(resources.files("privrec.serve") / "static"))


def plotly_js() -> Path:
    """plotly.js's *basic* bundle (scatter, bar, pie; v4.1.1, MIT licence), vendored beside the page.

    The dashboard draws bars and lines only. The full bundle (in the ``plotly`` wheel) is 4.8 MB
    of JavaScript that every first visit compiles — about 1.5 s of a 2 s budget on a shared
    2-core machine; the basic bundle is 1.2 MB. Its licence is ``plotly-basic.LICENSE.txt``.
    """
    path = _static_dir() / "plotly-basic.min.js"
    if not path.exists():  # pragma: no cover - a broken install
        raise ServeConfigError(f"plotly.js not found at {path}: reinstall privrec")
    return path


def create_app(settings: ServeSettings) -> FastAPI:
    """The service: ``/v1`` API, OpenAPI at ``/v1/openapi.json``, dashboard at ``/dashboard/``."""
    from privrec.governance import Ledger  # noqa: F401  (fail early if governance is broken)
    from privrec.serve import routes

    if not settings.models_dir.is_dir():
        raise ServeConfigError(f"models directory {str(settings.models_dir)!r} does not exist")
    url = resolve_url(settings.db_url)
    ctx = ServeContext(
        settings=settings,
        url=url,
        keys=KeyCache(url, ttl=settings.key_ttl),
        limiter=RateLimiter(settings.rate_limit, settings.burst),
        models=ModelStore(
            settings.models_dir,
            allow_non_private=settings.allow_non_private,
            verify_key=settings.verify_key,
        ),
        datasets={name: ServedDataset(name, spec) for name, spec in settings.datasets.items()},
    )
    app = FastAPI(
        title="privrec service",
        version=API_VERSION,
        description=(
            "Private recommendations by fold-in, DP analytics queries charged write-ahead to the "
            "privacy ledger, and the ledger's budgets, lineage and audit log. Authenticate with "
            "a ledger API key: `Authorization: Bearer prk_…`."
        ),
        openapi_url="/v1/openapi.json",
        docs_url=None,  # the stock docs pages load scripts from a CDN; the service works offline
        redoc_url=None,
    )
    app.state.ctx = ctx

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(PrivrecError)
    async def _library_error(_: Request, exc: PrivrecError) -> JSONResponse:
        return library_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # the offending input is not echoed back (it may be a user's history)
        problems = [{"where": _where(e), "problem": e.get("msg", "")} for e in exc.errors()[:20]]
        first = problems[0] if problems else {"where": "body", "problem": "invalid"}
        return _json(
            422,
            error_body(
                422,
                "malformed_request",
                f"malformed request: {first['where']}: {first['problem']}",
                problems=problems,
            ),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # the framework could not parse the body (bad UTF-8, nesting)
            return _json(
                422,
                error_body(
                    422,
                    "malformed_request",
                    "malformed request: body: not parseable JSON (UTF-8, nesting)",
                    problems=[{"where": "body", "problem": "not parseable JSON"}],
                ),
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json(
            exc.status_code,
            error_body(exc.status_code, code, str(exc.detail)),
            dict(exc.headers) if exc.headers else None,
        )

    app.include_router(routes.router)

    static = _static_dir()

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard", include_in_schema=False)
    def _dashboard_slash() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard/", include_in_schema=False)
    def _dashboard() -> FileResponse:
        return FileResponse(
            static / "index.html", media_type="text/html", headers=DASHBOARD_HEADERS
        )

    assets = {
        "app.js": (static / "app.js", "text/javascript"),
        "app.css": (static / "app.css", "text/css"),
        "plotly-basic.min.js": (plotly_js(), "text/javascript"),
        "plotly-basic.LICENSE.txt": (static / "plotly-basic.LICENSE.txt", "text/plain"),
    }

    @app.get("/dashboard/static/{name}", include_in_schema=False)
    def _asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise ApiError(404, "not_found", "no such dashboard file")
        return FileResponse(
            found[0],
            media_type=found[1],
            headers={"Cache-Control": "max-age=3600", **DASHBOARD_HEADERS},
        )

    def limit_for(path: str) -> int:
        if path.endswith("/he-score"):
            return settings.max_he_body_bytes
        return settings.max_body_bytes

    from privrec.serve.fastpath import RecommendFastPath

    # innermost: well-formed recommendations skip routing, dependencies and pydantic (same
    # checks, same answers); the body limit and the access log still see every request
    app.add_middleware(RecommendFastPath, ctx=ctx)
    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(AccessLog)
    return app


def configure_log(level: str = "info") -> None:
    """The service's own log on stderr: route templates, statuses, times (never requests)."""
    service_log = logging.getLogger("privrec.serve")
    if not any(getattr(h, "_privrec_serve", False) for h in service_log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s %(message)s"))
        handler._privrec_serve = True  # type: ignore[attr-defined]
        service_log.addHandler(handler)
    service_log.setLevel(level.upper())
    service_log.propagate = False


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``privrec serve --workers N`` (a uvicorn factory).

    Each worker loads the models and datasets itself and keeps its own key cache and rate-limit
    buckets (see docs/serve.md: limits are per process); the ledger database is shared, and its
    transactions are what keep budgets exact across processes.
    """
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ServeConfigError(f"{SETTINGS_ENV} is not set (start workers with privrec serve)")
    settings, level = ServeSettings.from_json(text)
    configure_log(level)
    return create_app(settings)
