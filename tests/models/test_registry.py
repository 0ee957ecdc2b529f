"""The models floor imports nothing above it; models from higher floors come via entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import privrec.models

MODELS = Path(privrec.models.__file__).parent
ABOVE = (
    "privrec.federated",
    "privrec.secure",
    "privrec.report",
    "privrec.cli",
    "privrec.evaluation",
)


def test_models_import_nothing_above_them() -> None:
    for path in sorted(MODELS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                assert not name.startswith(ABOVE), f"{path.name} imports {name}"


def test_loading_every_builtin_does_not_import_federated() -> None:
    code = (
        "import sys, privrec.models.all\n"
        "from privrec.models.registry import model_class\n"
        "assert model_class('dpals') is not None\n"
        "assert 'privrec.federated' not in sys.modules, 'models imported federated'\n"
        "assert model_class('federated_mf').__module__ == 'privrec.federated.model'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_available_models_lists_entry_points() -> None:
    from privrec.models.registry import available_models, model_class

    assert "federated_mf" in available_models() and "dpals" in available_models()
    assert model_class("no-such-model") is None
