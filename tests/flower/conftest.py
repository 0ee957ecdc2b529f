"""Without flwr (the ``[federated]`` extra) the Flower tests skip; the helper module is not collected."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator

import pytest

collect_ignore = [] if importlib.util.find_spec("flwr") else ["local.py"]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Seeded and noise-free test rounds warn by design (PrivacyWarning): silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
