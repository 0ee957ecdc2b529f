"""The CLI's architecture rule: command modules import only ``cli.common`` (and ``cli.main``
assembles them), never each other — not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import privrec.cli

CLI = Path(privrec.cli.__file__).parent
SHARED = {"privrec.cli.common"}


def _cli_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("privrec.cli."):
                found.add(node.module)
            elif node.module == "privrec.cli":
                found.update(f"privrec.cli.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("privrec.cli."))
    return found


def test_command_modules_do_not_import_each_other() -> None:
    offenders = {
        path.name: sorted(_cli_imports(path) - SHARED)
        for path in sorted(CLI.glob("*.py"))
        if path.stem not in ("main", "common", "__init__")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_user_history_is_a_shared_helper() -> None:
    from privrec.cli import common

    assert callable(common.user_history) and callable(common.load_history)
