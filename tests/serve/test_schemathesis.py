"""Property-based requests generated from the OpenAPI spec (schemathesis, bounded): never a 500.

Every operation gets up to 25 generated requests (valid and, by schemathesis' negative testing,
invalid ones), sent with a valid key — an analyst's for writes, an auditor's for reads — so the
generated bodies reach the ledger and the models. (The strategies are driven directly: the
schemathesis pytest plugin does not run under pytest 9 yet.)
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from privrec.serve.app import create_app  # noqa: E402
from privrec.serve.demo import DemoWorld  # noqa: E402

from .conftest import auth, settings_for  # noqa: E402


def _runner(strategy: Any, n: int, headers: dict[str, str], seen: set[int]) -> Any:
    @given(case=strategy)
    @settings(
        max_examples=n, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def run(case: Any) -> None:
        response = case.call(headers={**dict(case.headers or {}), **headers})
        seen.add(response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.text[:300])

    return run


@pytest.mark.slow
def test_no_server_errors(world: DemoWorld, model_id: str) -> None:
    from schemathesis.generation.modes import GenerationMode

    app = create_app(settings_for(world, rate_limit=0))
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15
    seen: set[int] = set()
    real = {"dataset": "ratings", "model_id": model_id}
    for op in operations:
        who = "dora" if op.method.upper() == "GET" else "ann"
        fixed = {k: v for k, v in real.items() if "{" + k + "}" in op.path}
        for mode, params, n in (
            (GenerationMode.POSITIVE, fixed, 20),  # real dataset / model: reaches the ledger
            (GenerationMode.NEGATIVE, fixed, 15),  # bodies and parameters outside the schema
            (GenerationMode.POSITIVE, None, 8),  # random names
        ):
            if mode is GenerationMode.NEGATIVE and op.method.upper() == "GET" and not fixed:
                continue

            run = _runner(
                op.as_strategy(mode, path_parameters=params or None), n, auth(world, who), seen
            )
            run()
    assert {200, 403, 404, 422} <= seen
