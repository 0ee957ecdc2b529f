"""The lazily loaded package namespaces export exactly what they list, and every name resolves."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["privrec.federated", "privrec.secure", "privrec.privacy"])
def test_lazy_exports_resolve(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(module, name) is not None, name
    assert set(names) <= set(dir(module))
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
