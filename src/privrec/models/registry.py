"""Finding a model class by name without the models floor importing anything above it.

The built-in models live in :mod:`privrec.models` and register themselves when
:mod:`privrec.models.all` is imported. Models defined higher up the tree — FederatedMF in
:mod:`privrec.federated` — or in other packages are announced as entry points of the
group ``privrec.models`` (see ``pyproject.toml``) and imported only when a name is asked
for, so ``load_model`` finds them while the import arrows keep pointing down.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from privrec.errors import ConfigError
from privrec.models.base import MODEL_REGISTRY, Recommender

__all__ = ["ENTRY_POINT_GROUP", "available_models", "model_class"]

ENTRY_POINT_GROUP = "privrec.models"


def _builtins() -> None:
    import privrec.models.all  # noqa: F401  (registers every built-in model)


def _plugins() -> list[EntryPoint]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _load(ep: EntryPoint) -> None:
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise ConfigError(
            f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP!r} is not a Recommender "
            f"class ({ep.value})"
        )
    MODEL_REGISTRY.setdefault(cls.name, cls)


def model_class(name: str) -> type[Recommender] | None:
    """The class registered as ``name`` (built-in or entry point), or ``None``."""
    _builtins()
    if name not in MODEL_REGISTRY:
        for ep in _plugins():
            if ep.name == name:
                _load(ep)
    return MODEL_REGISTRY.get(name)


def available_models() -> list[str]:
    """Every model name that can be built or loaded, sorted."""
    _builtins()
    for ep in _plugins():
        if ep.name not in MODEL_REGISTRY:
            _load(ep)
    return sorted(MODEL_REGISTRY)
