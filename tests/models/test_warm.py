"""``python -m privrec.models.warm``: every cached kernel listed, signatures that fit, and the
compiled code lands where privrec's later runs look for it."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

from numba.core.registry import CPUDispatcher

import privrec.models
import privrec.privacy
from privrec.models.warm import KERNELS, kernel_signatures

# The fastest kernel to compile (about 2 s): enough to show where the cache is written.
SMALL = "privrec.models.als_kernels:_structure_checksum"


def _cached_kernels() -> set[str]:
    """``module:function`` of every ``@njit(cache=True)`` kernel privrec defines (kernels
    inlined into their callers, ``inline="always"``, are compiled with them)."""
    found = set()
    for package in (privrec.models, privrec.privacy):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (
                    isinstance(obj, CPUDispatcher)
                    and obj.py_func.__module__ == info.name
                    and type(obj._cache).__name__ != "NullCache"
                    and obj.targetoptions.get("inline") != "always"
                ):
                    found.add(f"{info.name}:{name}")
    return found


def test_every_cached_kernel_is_warmed() -> None:
    """A new ``@njit(cache=True)`` kernel must be added to KERNELS (or users compile it cold)."""
    assert set(KERNELS) == _cached_kernels()


def test_every_signature_fits_its_kernel() -> None:
    for name in KERNELS:
        dispatcher, sigs = kernel_signatures(name)
        n = len(inspect.signature(dispatcher.py_func).parameters)  # type: ignore[attr-defined]
        assert sigs and all(len(sig) == n for sig in sigs), name
        assert len(set(sigs)) == len(sigs), f"{name}: a signature listed twice"


def test_warm_writes_the_cache_that_later_runs_read(tmp_path: Path) -> None:
    """Run as a module with ``$NUMBA_CACHE_DIR`` set, the warm-up compiles into that folder, and
    what it wrote loads back from disk (numba's own cache lookup, as a later process does it).
    One subprocess: numba fixes its cache folder when first imported."""
    cache = tmp_path / "numba"
    code = (
        "from privrec.models.warm import kernel_signatures, main\n"
        f"main(['--kernel', {SMALL!r}])\n"
        f"d, sigs = kernel_signatures({SMALL!r})\n"
        "print('cache in', d.stats.cache_path)\n"
        "print('loads', all(d._cache.load_overload(s, d.targetctx) is not None for s in sigs))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, NUMBA_CACHE_DIR=str(cache)),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert f"warm in {cache}: 1 signatures (1 compiled, 0 already cached)" in res.stdout
    assert f"cache in {cache}" in res.stdout and "loads True" in res.stdout
    assert list(cache.glob("models_*/als_kernels._structure_checksum-*.nbi"))
