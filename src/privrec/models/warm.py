"""Compile every cached numba kernel of privrec into the on-disk cache ahead of first use.

``python -m privrec.models.warm`` (run by ``make`` right after installing) compiles each
``@njit(cache=True)`` kernel for the argument types privrec's own code passes it, so that the
first ``privrec train`` — or the first test that fits a model — loads machine code in well under
a second instead of spending about a minute in LLVM. Nothing is run: each signature is handed
to the dispatcher's ``compile``, which writes it to the cache folder numba reads,
:func:`privrec.numba_cache_dir` (``$NUMBA_CACHE_DIR`` when set, as the Makefile does).

Why signatures and not calls on tiny inputs: numba caches one machine-code entry per exact
argument type, and privrec passes the same kernel float32 and float64 arrays, writable and
read-only ones (an :class:`~privrec.data.Interactions` hands out read-only CSR arrays). Listing
the types is the one way to be sure each variant the library uses is compiled; a call on made-up
inputs would compile only the variant those inputs happen to have. The table below was read
off the cache index after a full test run; ``tests/models/test_warm.py`` checks that every cached
kernel in the package is listed and each signature fits its kernel.

A missing entry costs only speed (numba compiles it on first use, as before).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from numba import types as nt

from privrec import numba_cache_dir

__all__ = ["KERNELS", "Warmed", "kernel_signatures", "main", "warm"]


def _a(dtype: nt.Type, ndim: int, readonly: bool = False) -> nt.Array:
    """A C-contiguous array type (``readonly``: what numba sees for a non-writeable array)."""
    return nt.Array(dtype, ndim, "C", readonly=readonly)


_I8, _I4, _U8, _F4, _F8, _B = nt.int64, nt.int32, nt.uint64, nt.float32, nt.float64, nt.boolean


def _csr(value: nt.Type, readonly: bool = False) -> tuple[nt.Array, nt.Array, nt.Array]:
    """``indptr`` (int64), ``indices`` (int32) and values of a CSR matrix."""
    return _a(_I8, 1, readonly), _a(_I4, 1, readonly), _a(value, 1, readonly)


def _half_step(f: nt.Type, *, csr_ro: bool = False, other_ro: bool = False) -> tuple[nt.Type, ...]:
    """Arguments of an ALS half-step up to ``nu``: CSR, ``other``, ``gram``, ``x``, 3 floats."""
    return (*_csr(f, csr_ro), _a(f, 2, other_ro), _a(f, 2), _a(f, 2), _F8, _F8, _F8)


#: ``module:function`` -> the argument types privrec calls it with.
KERNELS: dict[str, tuple[tuple[nt.Type, ...], ...]] = {
    "privrec.models.als_kernels:cg_half_step": (
        (*_half_step(_F4), _I8),
        (*_half_step(_F4, csr_ro=True), _I8),
        (*_half_step(_F4, other_ro=True), _I8),
    ),
    "privrec.models.als_kernels:cholesky_half_step": (
        _half_step(_F4),
        _half_step(_F4, csr_ro=True),
        _half_step(_F8),
        _half_step(_F8, csr_ro=True),
        _half_step(_F8, other_ro=True),
    ),
    "privrec.models.als_kernels:row_loss": (
        (*_csr(_F4, True), _a(_F4, 2), _a(_F4, 2), _a(_F4, 2), _F8),
    ),
    "privrec.models.als_kernels:_by_column": tuple((*_csr(v), _I8, _a(_I8, 1)) for v in (_I8, _F8)),
    "privrec.models.als_kernels:_item_statistics_kernel": tuple(
        (*_csr(f), _a(_I8, 1), _a(f, 2), _F8, _a(_I8, 1), _a(f, 3), _a(f, 2)) for f in (_F4, _F8)
    ),
    "privrec.models.als_kernels:_structure_checksum": ((_a(_I4, 1), _a(_I4, 1)),),
    "privrec.models.item_sums:_item_sums_kernel": (
        (*_csr(_F4), _a(_F4, 2), _a(_I8, 1), _B, _a(_F4, 3), _a(_F4, 3)),
    ),
    "privrec.models.dp_noise:_add_mirrored": tuple(
        (_a(f, 3, ro), _a(_F4, 2), f, _a(f, 3)) for f in (_F4, _F8) for ro in (False, True)
    ),
    "privrec.privacy.postprocessing:_project_psd_kernel": ((_a(_F8, 3), _F8),),
    "privrec.privacy.postprocessing:_psd_solve_kernel": tuple(
        (_a(_F8, 2), _a(f, 3), _a(f, 2), _a(_F8, 1), _a(_F8, 2), _a(_B, 1), _B) for f in (_F4, _F8)
    ),
    "privrec.privacy.postprocessing:_diagonal_solve_kernel": tuple(
        (_a(_F8, 2), _a(f, 2), _a(f, 2), _a(_F8, 1), _a(_F8, 2)) for f in (_F4, _F8)
    ),
    "privrec.privacy.contribution:_select_rows": tuple(
        (_a(_I8, 1), _a(_I4, 1, idx_ro), _a(_U8, 1), _a(_F8, 1, counts_ro), _U8, _I8, _B, _a(_B, 1))
        for idx_ro, counts_ro in ((False, False), (True, False), (False, True))
    ),
}


@dataclass(frozen=True)
class Warmed:
    """One kernel: how many signatures it has, how many were already cached, seconds spent."""

    kernel: str
    signatures: int
    cached: int
    seconds: float


def kernel_signatures(name: str) -> tuple[object, tuple[tuple[nt.Type, ...], ...]]:
    """The numba dispatcher named ``module:function`` in :data:`KERNELS`, and its signatures."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function), KERNELS[name]


def warm(names: Sequence[str] | None = None) -> list[Warmed]:
    """Compile (or load from the cache) every listed signature of the named kernels (all of
    :data:`KERNELS` by default); compiled ones are written to the cache as they are made.

    Returns per kernel how many signatures were already in the cache, so a second call shows
    the cache is being read (``cached == signatures``).
    """
    out = []
    for name in names if names is not None else KERNELS:
        dispatcher, sigs = kernel_signatures(name)
        start = time.perf_counter()
        before = sum(dispatcher.stats.cache_hits.values())  # type: ignore[attr-defined]
        for sig in sigs:
            dispatcher.compile(sig)  # type: ignore[attr-defined]
        cached = sum(dispatcher.stats.cache_hits.values()) - before  # type: ignore[attr-defined]
        out.append(Warmed(name, len(sigs), cached, time.perf_counter() - start))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m privrec.models.warm``: warm every kernel, one line each."""
    parser = argparse.ArgumentParser(
        prog="python -m privrec.models.warm",
        description="Compile privrec's numba kernels into the on-disk cache.",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    parser.add_argument(
        "--kernel",
        action="append",
        choices=sorted(KERNELS),
        metavar="MODULE:FUNCTION",
        help="warm only this kernel (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    done = []
    for name in args.kernel or KERNELS:
        (w,) = warm([name])
        done.append(w)
        if not args.quiet:
            print(f"{w.kernel}: {w.signatures} signatures, {w.cached} cached, {w.seconds:.1f} s")
    total = sum(w.signatures for w in done)
    cached = sum(w.cached for w in done)
    print(
        f"privrec kernels warm in {numba_cache_dir()}: {total} signatures "
        f"({total - cached} compiled, {cached} already cached) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
