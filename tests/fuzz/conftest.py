"""One bounded hypothesis budget for every fuzz test (loaders, model files, protocol messages).

Use it in a fuzz module with::

    from hypothesis import given, settings

    FUZZ = settings.get_profile("privrec-fuzz")

    @settings(FUZZ)                       # or settings(FUZZ, max_examples=FUZZ.max_examples * 2)
    @given(...)
    def test_...(...): ...

By default each test runs ``DEFAULT_EXAMPLES`` examples, derandomized (the same
inputs on every run, so the suite cannot flake), which keeps the whole folder
within about a minute on two shared cores. Set ``PRIVREC_FUZZ_EXAMPLES=5000``
to run longer locally: examples then vary from run to run and failures are
kept in hypothesis' example database (``.hypothesis/``) to be replayed.
Every test in this folder carries the ``fuzz`` marker (``-m "not fuzz"`` skips them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ENV = "PRIVREC_FUZZ_EXAMPLES"
DEFAULT_EXAMPLES = 60


def fuzz_examples() -> int:
    """Examples per fuzz test: ``$PRIVREC_FUZZ_EXAMPLES`` or :data:`DEFAULT_EXAMPLES`."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_EXAMPLES
    try:
        n = int(raw)
    except ValueError:
        raise pytest.UsageError(f"{ENV} must be a positive integer, not {raw!r}") from None
    if n < 1:
        raise pytest.UsageError(f"{ENV} must be a positive integer, not {raw!r}")
    return n


_LONG = bool(os.environ.get(ENV, "").strip())
settings.register_profile(
    "privrec-fuzz",
    max_examples=fuzz_examples(),
    deadline=None,
    derandomize=not _LONG,
    database=settings.default.database if _LONG else None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)

_HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: hostile-input fuzz tests (bounded budget)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.fuzz)
