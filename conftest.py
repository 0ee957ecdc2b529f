"""Run from the checkout, the tests use the numba cache ``make`` warms (``.cache/numba``).

The Makefile exports ``NUMBA_CACHE_DIR`` and compiles every kernel there after installing
(``python -m privrec.models.warm``); a bare ``pytest`` would otherwise fall back to the per-user
folder and compile every kernel again. An explicit ``NUMBA_CACHE_DIR`` still wins. Set here,
before any test module imports privrec (which reads the variable once, at import).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent / ".cache" / "numba"))
