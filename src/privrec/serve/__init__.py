"""A privacy-aware recommendation service with DP analytics queries and a dashboard (``[serve]``).

``privrec serve --db URL --models DIR`` runs :func:`create_app` on uvicorn (127.0.0.1 by default):

* ``POST /v1/recommend`` — top-k items from a user's own history (fold-in; nothing is kept);
* ``GET /v1/models`` — each served model's guarantee in numbers and words, lineage, evaluation;
* ``POST /v1/datasets/{name}/queries/…`` — DP counts charged write-ahead to the analyst's budget
  in the privacy ledger (:mod:`privrec.governance`), refused with 403 when it would pass a cap;
* ``/dashboard/`` — budgets, the privacy/personalisation trade-off, lineage, the audit log.

See ``docs/serve.md``. Imports are lazy: ``import privrec.serve`` does not import FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privrec.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from privrec.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'privrec.serve' has no attribute {name!r}")
