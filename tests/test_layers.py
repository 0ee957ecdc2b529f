"""Imports only point down: the bottom floors never import the floors built on them.

``data/``, ``evaluation/``, ``models/`` and ``privacy/`` are what everything else stands on; if
one of them imported, say, ``federated/`` or ``governance/``, a cycle would be one edit away and
importing a model would drag in a database driver. ``privacy/`` is stricter still: it is the
part a privacy proof reads, so it depends only on itself, :mod:`privrec.errors`, the package
version and third-party packages. The check reads the source (every import, also inside
functions and ``TYPE_CHECKING`` blocks) and then imports every bottom-floor module in a fresh
interpreter to catch imports made at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import privrec

PACKAGE = Path(privrec.__file__).parent
BOTTOM = ("data", "evaluation", "models", "privacy")
ABOVE = (
    "audit",
    "cli",
    "engine",
    "experiments",
    "federated",
    "governance",
    "monitor",
    "report",
    "risk",
    "secure",
    "serve",
    "tuning",
)
PRIVACY_MAY_IMPORT = ("privrec.privacy", "privrec.errors", "privrec.__version__")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``privrec`` module the file at ``path`` imports, with its line."""
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    return _imports_in(path.read_text(encoding="utf-8"), package)


def _imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """Every ``privrec`` module ``source`` (a module of ``package``) imports; relative ones resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from privrec import federated`` names a module too.
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
            found.append((node.lineno, base))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "privrec"]


def _floor_files(floor: str) -> list[Path]:
    return sorted((PACKAGE / floor).rglob("*.py"))


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("floor", BOTTOM)
def test_bottom_floor_imports_nothing_above_it(floor: str) -> None:
    above = tuple(f"privrec.{a}" for a in ABOVE)
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        for path in _floor_files(floor)
        for line, name in _imports(path)
        if _is_under(name, above)
    ]
    assert offenders == []


def test_privacy_imports_only_privacy_and_errors() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        for path in _floor_files("privacy")
        for line, name in _imports(path)
        if name != "privrec" and not _is_under(name, PRIVACY_MAY_IMPORT)
    ]
    assert offenders == []


def test_the_check_sees_violations() -> None:
    """The reader must catch every spelling of an upward import, or the tests above prove nothing."""
    source = (
        "from privrec.federated import server\n"
        "from privrec import governance\n"
        "def f():\n"
        "    import privrec.serve.app\n"
        "    from ..risk import check\n"
    )
    names = {name for _, name in _imports_in(source, "privrec.privacy")}
    above = tuple(f"privrec.{a}" for a in ABOVE)
    assert {n for n in names if _is_under(n, above)} == {
        "privrec.federated",
        "privrec.federated.server",
        "privrec.governance",
        "privrec.serve.app",
        "privrec.risk",
        "privrec.risk.check",
    }


def test_importing_the_bottom_floors_loads_nothing_above_them() -> None:
    modules = [_module_name(p) for floor in BOTTOM for p in _floor_files(floor)]
    above = tuple(f"privrec.{a}" for a in ABOVE)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({above!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.split() == []


@pytest.mark.parametrize("module", ["errors", "keyfiles", "statefile"])
def test_root_modules_below_the_floors_import_only_errors(module: str) -> None:
    """:mod:`privrec.keyfiles` and :mod:`privrec.statefile` sit beside :mod:`privrec.errors`,
    under every floor (models/ signs files with keyfiles, secure/ writes channel keys with it;
    secure/ and federated/ keep release counts and device budgets in state files): they may
    import nothing else."""
    offenders = [
        f"{module}.py:{line} imports {name}"
        for line, name in _imports(PACKAGE / f"{module}.py")
        if name != "privrec" and not _is_under(name, ("privrec.errors",))
    ]
    assert offenders == []
