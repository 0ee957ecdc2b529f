"""Numba kernels and explicit sufficient statistics for implicit-feedback ALS.

One half-step of ALS solves, for every row ``u`` of a sparse matrix (users when
the item factors are fixed, items on the transposed matrix), the ``k × k``
linear system of the weighted least-squares problem::

    A_u x_u = b_u
    A_u = alpha0 * G + sum_{i in I_u} w_ui y_i y_iᵀ + reg_u * I       (G = YᵀY)
    b_u = sum_{i in I_u} (alpha0 + w_ui) y_i

which is what minimising::

    sum_{(u,i) observed} (alpha0 + w_ui) (1 - <x_u, y_i>)²
      + alpha0 * sum_{(u,i) unobserved} <x_u, y_i>²  +  reg_u ||x_u||²

over ``x_u`` gives. ``G`` carries the "every cell is a zero" part, so the cost
of a row only grows with its number of observed entries (Hu, Koren & Volinsky
2008; Rendle et al. 2022).

Two row solvers are provided, both ``prange`` loops over blocks of rows that
allocate their scratch space once per block (never once per row):

* :func:`cg_half_step` — a few conjugate-gradient steps warm-started from the
  previous factors (Takács et al. 2011); the matrix ``A_u`` is never formed,
  only products ``A_u v`` at ``O(k² + |I_u| k)``. This is the fast default.
* :func:`cholesky_half_step` — forms ``A_u`` and solves it exactly
  (``O(|I_u| k² + k³)``), also used to fold in new users. The ``|I_u| k²``
  part is a BLAS ``syrk`` on cache-sized blocks of gathered rows and the
  factorisation is LAPACK's, both called from inside the numba workers.

The same system can also be written as plain arrays — :func:`gramian`,
:func:`item_statistics` and :func:`solve_from_statistics` — so that a privacy
mechanism can perturb the statistics (e.g. add Gaussian noise) before solving.
:func:`item_statistics` is the hot path of DPALS (one call per private step);
it uses the same gathered-``syrk`` kernel, grouped by item.

The kernels are compiled on first use and cached on disk (``cache=True``). In
a fresh environment the first ``fit`` costs about 3 s of compilation (CG) and
the first Cholesky solve or ``fold_in`` about 5 s more, on a 2-core Xeon;
later processes load the machine code from the cache in well under a second.
The model passes every CSR array read-only (as :class:`Interactions` stores
them), so each kernel is compiled once per dtype rather than once per
combination of writeable and read-only inputs.
"""

from __future__ import annotations

import weakref
from typing import Any

import llvmlite.binding as _llvm
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic, overload

__all__ = [
    "cg_half_step",
    "cholesky_half_step",
    "gramian",
    "item_statistics",
    "regularization_weights",
    "row_loss",
    "solve_from_statistics",
]

# Rows per parallel task: big enough that allocating the scratch vectors once
# per block is free, small enough that 2..64 threads stay balanced when row
# lengths follow a power law.
_BLOCK = 64


@njit(cache=True, fastmath=True, inline="always")
def _reg(lam: float, nu: float, count: int, alpha0: float, n_other: int) -> float:
    """Frequency-scaled regularisation ``lam * (|I_u| + alpha0 * n_other) ** nu``."""
    if nu == 0.0:
        return float(lam)
    return float(lam * (count + alpha0 * n_other) ** nu)


# --------------------------------------------------------------------------
# BLAS/LAPACK from numba kernels (scipy's Fortran-ABI entry points)
# --------------------------------------------------------------------------
# The per-row k × k work — Σ w y yᵀ (a symmetric rank-n update) and its
# Cholesky factorisation — runs at BLAS speed when handed to ?syrk / ?potrf /
# ?potrs, and a numba kernel can call them directly (no Python, no GIL, inside
# prange). They are bound by symbol name rather than by embedded address so the
# kernels stay cacheable (the address is registered anew at every import).
# Fortran BLAS is column-major: a row-major (n, k) block is a (k, n) matrix
# with leading dimension k, and the row-major upper triangle of a k × k result
# is the column-major lower one ('L').
_VP = types.voidptr
_ROUTINES = {
    "ssyrk": "scipy.linalg.cython_blas",
    "dsyrk": "scipy.linalg.cython_blas",
    "dpotrf": "scipy.linalg.cython_lapack",
    "dpotrs": "scipy.linalg.cython_lapack",
}
for _name, _module in _ROUTINES.items():
    _llvm.add_symbol(f"privrec_{_name}", get_cython_function_address(_module, _name))
_ssyrk: Any = types.ExternalFunction("privrec_ssyrk", types.void(*([_VP] * 10)))
_dsyrk: Any = types.ExternalFunction("privrec_dsyrk", types.void(*([_VP] * 10)))
_dpotrf: Any = types.ExternalFunction("privrec_dpotrf", types.void(*([_VP] * 5)))
_dpotrs: Any = types.ExternalFunction("privrec_dpotrs", types.void(*([_VP] * 8)))
_CH_L = 76  # ord("L")
_CH_N = 78  # ord("N")


def syrk_upper(
    x: npt.NDArray[np.floating], n: int, out: npt.NDArray[np.floating], alpha: float, beta: float
) -> None:
    """``out ← alpha · x[:n]ᵀ x[:n] + beta · out`` on the upper triangle of ``out`` (numba only).

    ``x`` is a C-contiguous ``(m, k)`` block with ``m ≥ n``, ``out`` a
    C-contiguous ``(k, k)`` array of the same dtype (float32 or float64); the
    strict lower triangle of ``out`` is left untouched. Callable from numba
    kernels only (it is bound to BLAS ``?syrk`` there).
    """
    raise NotImplementedError("syrk_upper is only callable from numba kernels")


@overload(syrk_upper)
def _syrk_upper_impl(x, n, out, alpha, beta):  # type: ignore[no-untyped-def]
    fn = _ssyrk if x.dtype == types.float32 else _dsyrk
    dt = np.float32 if x.dtype == types.float32 else np.float64

    def impl(x, n, out, alpha, beta):  # type: ignore[no-untyped-def]
        k = x.shape[1]
        uplo = np.full(1, _CH_L, dtype=np.uint8)
        trans = np.full(1, _CH_N, dtype=np.uint8)
        dims = np.empty(2, dtype=np.int32)
        dims[0] = k
        dims[1] = n
        kk = dims[:1]
        nn = dims[1:]
        al = np.full(1, alpha, dtype=dt)
        be = np.full(1, beta, dtype=dt)
        fn(uplo.ctypes, trans.ctypes, kk.ctypes, nn.ctypes, al.ctypes, x.ctypes, kk.ctypes,
           be.ctypes, out.ctypes, kk.ctypes)  # fmt: skip

    return impl


def cholesky_solve(m: npt.NDArray[np.float64], v: npt.NDArray[np.float64]) -> bool:
    """Factorise the upper triangle of ``m`` (row-major, in place) and solve ``m z = v`` into ``v``.

    LAPACK ``dpotrf`` + ``dpotrs``; returns False (``v`` untouched) when ``m``
    is not positive definite. Callable from numba kernels only.
    """
    raise NotImplementedError("cholesky_solve is only callable from numba kernels")


@overload(cholesky_solve)
def _cholesky_solve_impl(m, v):  # type: ignore[no-untyped-def]
    def impl(m, v):  # type: ignore[no-untyped-def]
        uplo = np.full(1, _CH_L, dtype=np.uint8)
        ints = np.empty(3, dtype=np.int32)
        ints[0] = m.shape[0]
        ints[1] = 1
        ints[2] = 0
        kk = ints[:1]
        one = ints[1:2]
        info = ints[2:]
        _dpotrf(uplo.ctypes, kk.ctypes, m.ctypes, kk.ctypes, info.ctypes)
        if info[0] != 0:
            return False
        _dpotrs(uplo.ctypes, kk.ctypes, one.ctypes, m.ctypes, kk.ctypes, v.ctypes, kk.ctypes,
                info.ctypes)  # fmt: skip
        return bool(info[0] == 0)

    return impl


@intrinsic
def _prefetch(typingctx: Any, arr: Any, row: Any, col: Any) -> Any:
    """Hint the CPU to fetch ``arr[row, col]``'s cache line (``llvm.prefetch``, read, keep)."""
    sig = types.void(arr, row, col)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [
            context.cast(builder, args[1], signature.args[1], types.intp),
            context.cast(builder, args[2], signature.args[2], types.intp),
        ]
        ptr = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]
            context, builder, aryty, ary, idx, wraparound=False
        )
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]
            builder.module, fnty, "llvm.prefetch.p0i8"
        )
        builder.call(fn, [i8p, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# Entries ahead whose factor rows are prefetched while gathering: the rows are
# random (one per user of an item), so without it every row is a cache miss.
_PREFETCH = 16


@njit(fastmath=True, cache=True, inline="always")
def _gather_signed(
    indices: npt.NDArray[np.int32],
    weights: npt.NDArray[np.floating],
    perm: npt.NDArray[np.int64],
    other: npt.NDArray[np.floating],
    c0: int,
    n: int,
    limit: int,
    alpha0: float,
    pos: npt.NDArray[np.floating],
    neg: npt.NDArray[np.floating],
    bvec: npt.NDArray[np.floating],
) -> tuple[int, int]:
    """Gather ``√|w| · y`` of entries ``c0..c0+n-1`` into ``pos`` (w ≥ 0) or ``neg`` (w < 0).

    Then ``Σ w y yᵀ = posᵀ pos − negᵀ neg`` (two ``syrk``); ``bvec`` accumulates
    ``Σ (alpha0 + w) y`` on the way. The weight of entry ``e`` is
    ``weights[perm[e]]`` (``weights[e]`` when ``perm`` is empty). Rows of
    entries up to ``limit`` (the end of the current row of the CSR) are
    prefetched ahead. Returns the numbers of rows filled.
    """
    k = other.shape[1]
    line = max(1, 64 // other.itemsize)
    a0 = bvec.dtype.type(alpha0)
    direct = perm.shape[0] == 0
    n_pos = 0
    n_neg = 0
    for e in range(c0, c0 + n):
        if e + _PREFETCH < limit:
            ahead = indices[e + _PREFETCH]
            for a in range(0, k, line):
                _prefetch(other, ahead, a)  # type: ignore[call-arg]
        i = indices[e]
        w = weights[e] if direct else weights[perm[e]]
        c = a0 + w
        if w >= 0:
            s = np.sqrt(w)
            for a in range(k):
                f = other[i, a]
                pos[n_pos, a] = s * f
                bvec[a] += c * f
            n_pos += 1
        else:
            s = np.sqrt(-w)
            for a in range(k):
                f = other[i, a]
                neg[n_neg, a] = s * f
                bvec[a] += c * f
            n_neg += 1
    return n_pos, n_neg


@njit(fastmath=True, cache=True, inline="always")
def _weighted_outer(
    indices: npt.NDArray[np.int32],
    weights: npt.NDArray[np.floating],
    perm: npt.NDArray[np.int64],
    other: npt.NDArray[np.floating],
    start: int,
    end: int,
    alpha0: float,
    pos: npt.NDArray[np.floating],
    neg: npt.NDArray[np.floating],
    acc: npt.NDArray[np.floating],
    bvec: npt.NDArray[np.floating],
) -> None:
    """Upper triangle of ``acc = Σ_{e} w_e y_e y_eᵀ`` and ``bvec = Σ_e (alpha0 + w_e) y_e``.

    (``w_e = weights[perm[e]]``, or ``weights[e]`` when ``perm`` is empty.)

    Entries ``start..end-1`` are gathered in blocks of ``pos.shape[0]`` rows
    (sized to stay in cache) and each block is one or two BLAS ``syrk`` calls.
    """
    k = other.shape[1]
    for a in range(k):
        bvec[a] = 0.0
    first = True
    c0 = start
    while c0 < end:
        n = min(pos.shape[0], end - c0)
        n_pos, n_neg = _gather_signed(
            indices, weights, perm, other, c0, n, end, alpha0, pos, neg, bvec
        )
        if n_pos > 0:
            syrk_upper(pos, n_pos, acc, 1.0, 0.0 if first else 1.0)
            first = False
        if n_neg > 0:
            syrk_upper(neg, n_neg, acc, -1.0, 0.0 if first else 1.0)
            first = False
        c0 += n
    if first:
        for a in range(k):
            for b in range(a, k):
                acc[a, b] = 0.0


# Rows gathered per syrk call: (_GATHER, k) blocks stay in L2 for k ≤ 256.
_GATHER = 1024
_NO_PERM = np.zeros(0, dtype=np.int64)


@njit(parallel=True, fastmath=True, cache=True)
def cg_half_step(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32],
    weights: npt.NDArray[np.floating],
    other: npt.NDArray[np.floating],
    gram: npt.NDArray[np.floating],
    x: npt.NDArray[np.floating],
    alpha0: float,
    lam: float,
    nu: float,
    cg_steps: int,
) -> None:
    """Update every row of ``x`` in place with ``cg_steps`` conjugate-gradient steps.

    Parameters
    ----------
    indptr, indices, weights
        CSR structure of the rows being solved; ``weights`` are the ``w_ui``
        (confidence above the unobserved weight), aligned with ``indices``.
    other
        Fixed factors of the other side, ``(n_cols, k)``, C-contiguous.
    gram
        ``otherᵀ other`` (``(k, k)``), computed once per half-step.
    x
        Factors being solved, ``(n_rows, k)``; the current values are the warm
        start, which is why a handful of steps per epoch suffice.
    alpha0, lam, nu
        Unobserved weight, regularisation and its frequency exponent.
    cg_steps
        Number of CG iterations per row.
    """
    n_rows, k = x.shape
    n_other = other.shape[0]
    dt = x.dtype
    zero = dt.type(0.0)
    a0 = dt.type(alpha0)
    n_blocks = (n_rows + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        r = np.empty(k, dtype=dt)
        p = np.empty(k, dtype=dt)
        ap = np.empty(k, dtype=dt)
        xu = np.empty(k, dtype=dt)
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, n_rows)
        for u in range(lo, hi):
            start = indptr[u]
            end = indptr[u + 1]
            reg = dt.type(_reg(lam, nu, end - start, alpha0, n_other))
            for a in range(k):
                xu[a] = x[u, a]
            # r = b - A x
            for a in range(k):
                s = zero
                for b in range(k):
                    s += gram[a, b] * xu[b]
                r[a] = -a0 * s - reg * xu[a]
            for j in range(start, end):
                i = indices[j]
                w = weights[j]
                d = zero
                for a in range(k):
                    d += other[i, a] * xu[a]
                c = (a0 + w) - w * d
                for a in range(k):
                    r[a] += c * other[i, a]
            rs = zero
            for a in range(k):
                p[a] = r[a]
                rs += r[a] * r[a]
            for _ in range(cg_steps):
                if rs < 1e-20:
                    break
                # ap = A p
                for a in range(k):
                    s = zero
                    for b in range(k):
                        s += gram[a, b] * p[b]
                    ap[a] = a0 * s + reg * p[a]
                for j in range(start, end):
                    i = indices[j]
                    d = zero
                    for a in range(k):
                        d += other[i, a] * p[a]
                    d *= weights[j]
                    for a in range(k):
                        ap[a] += d * other[i, a]
                pap = zero
                for a in range(k):
                    pap += p[a] * ap[a]
                if pap <= 0.0:
                    break
                step = rs / pap
                rs_new = zero
                for a in range(k):
                    xu[a] += step * p[a]
                    r[a] -= step * ap[a]
                    rs_new += r[a] * r[a]
                beta = rs_new / rs
                for a in range(k):
                    p[a] = r[a] + beta * p[a]
                rs = rs_new
            for a in range(k):
                x[u, a] = xu[a]


@njit(parallel=True, fastmath=True, cache=True)
def cholesky_half_step(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32],
    weights: npt.NDArray[np.floating],
    other: npt.NDArray[np.floating],
    gram: npt.NDArray[np.floating],
    x: npt.NDArray[np.floating],
    alpha0: float,
    lam: float,
    nu: float,
) -> None:
    """Solve every row's system exactly and write the solutions into ``x``.

    Same arguments as :func:`cg_half_step` (without ``cg_steps``); the values
    of ``x`` on entry are ignored. The upper triangle of ``Σ w y yᵀ`` is
    accumulated in the working dtype by BLAS ``syrk`` on cache-sized blocks of
    gathered ``√|w|·y`` (half the flops of a GEMM, at BLAS speed), and the
    system is factorised and solved in float64 by LAPACK (``dpotrf``/``dpotrs``),
    so the exact solver stays exact when ``A`` is ill-conditioned. A row whose
    system is not positive definite keeps its value of ``x``.
    """
    n_rows, k = x.shape
    n_other = other.shape[0]
    dt = x.dtype
    n_blocks = (n_rows + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        pos = np.empty((_GATHER, k), dtype=dt)
        neg = np.empty((_GATHER, k), dtype=dt)
        acc = np.empty((k, k), dtype=dt)
        bvec = np.empty(k, dtype=dt)
        m = np.empty((k, k), dtype=np.float64)
        v = np.empty(k, dtype=np.float64)
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, n_rows)
        for u in range(lo, hi):
            start = indptr[u]
            end = indptr[u + 1]
            reg = _reg(lam, nu, end - start, alpha0, n_other)
            _weighted_outer(
                indices, weights, _NO_PERM, other, start, end, alpha0, pos, neg, acc, bvec
            )
            for a in range(k):
                for b in range(a, k):
                    m[a, b] = alpha0 * gram[a, b] + acc[a, b]
                m[a, a] += reg
                v[a] = bvec[a]
            if cholesky_solve(m, v):
                for a in range(k):
                    x[u, a] = v[a]


@njit(parallel=True, fastmath=True, cache=True)
def row_loss(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32],
    weights: npt.NDArray[np.floating],
    other: npt.NDArray[np.floating],
    gram: npt.NDArray[np.floating],
    x: npt.NDArray[np.floating],
    alpha0: float,
) -> float:
    """Data part of the loss, ``sum_obs (alpha0 + w)(1 - s)² + alpha0 sum_unobs s²``.

    Uses ``sum_all s² = sum_u x_uᵀ G x_u`` so it costs one half-step, not
    ``n_rows × n_cols``.
    """
    n_rows, k = x.shape
    total = 0.0
    for u in prange(n_rows):
        q = 0.0
        for a in range(k):
            s = 0.0
            for b in range(k):
                s += gram[a, b] * x[u, b]
            q += s * x[u, a]
        part = alpha0 * q
        for j in range(indptr[u], indptr[u + 1]):
            i = indices[j]
            d = 0.0
            for a in range(k):
                d += other[i, a] * x[u, a]
            w = weights[j]
            part += (alpha0 + w) * (1.0 - d) ** 2 - alpha0 * d * d
        total += part
    return total


# --------------------------------------------------------------------------
# Explicit sufficient statistics (for mechanisms that perturb them)
# --------------------------------------------------------------------------


def gramian(factors: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """``factorsᵀ factors`` (``(k, k)``): the unobserved-cell part shared by every row."""
    f = np.ascontiguousarray(factors)
    return np.asarray(f.T @ f)


def regularization_weights(
    counts: npt.ArrayLike, regularization: float, alpha0: float, n_other: int, reg_exponent: float
) -> npt.NDArray[np.float64]:
    """Per-row penalty ``regularization * (count + alpha0 * n_other) ** reg_exponent``.

    ``counts`` are the rows' numbers of observed entries; ``n_other`` is the
    size of the other side (items when solving users). Exponent 0 gives a
    constant ``regularization``.
    """
    c = np.asarray(counts, dtype=np.float64)
    if reg_exponent == 0.0:
        return np.full(c.shape, float(regularization))
    return np.asarray(regularization * (c + alpha0 * n_other) ** reg_exponent)


@njit(parallel=True, cache=True)
def _by_column(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32],
    values: npt.NDArray[Any],
    n_cols: int,
    row_bounds: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[Any]]:
    """CSR → CSC by a parallel counting sort: column pointers, row ids (ascending), values.

    ``row_bounds`` cuts the rows into chunks; each chunk counts its entries
    per column, a prefix over (column, chunk) gives every chunk its own write
    offsets, and the chunks scatter in parallel — in row order, so each
    column's rows come out sorted.
    """
    n_chunks = row_bounds.shape[0] - 1
    nnz = indices.shape[0]
    counts = np.zeros((n_chunks, n_cols), dtype=np.int64)
    for c in prange(n_chunks):
        for e in range(indptr[row_bounds[c]], indptr[row_bounds[c + 1]]):
            counts[c, indices[e]] += 1
    cptr = np.zeros(n_cols + 1, dtype=np.int64)
    total = 0
    for j in range(n_cols):
        cptr[j] = total
        for c in range(n_chunks):
            here = counts[c, j]
            counts[c, j] = total  # becomes chunk c's write offset in column j
            total += here
    cptr[n_cols] = total
    rows = np.empty(nnz, dtype=np.int32)
    vals = np.empty(nnz, dtype=values.dtype)
    for c in prange(n_chunks):
        fill = counts[c]
        for r in range(row_bounds[c], row_bounds[c + 1]):
            for e in range(indptr[r], indptr[r + 1]):
                j = indices[e]
                t = fill[j]
                rows[t] = r
                vals[t] = values[e]
                fill[j] = t + 1
    return cptr, rows, vals


def _row_chunks(indptr: npt.NDArray[np.int64], n_chunks: int) -> npt.NDArray[np.int64]:
    """Row cut points giving ``n_chunks`` ranges of about equal numbers of entries."""
    nnz = int(indptr[-1])
    cuts = np.searchsorted(indptr, np.linspace(0, nnz, n_chunks + 1)[1:-1], side="left")
    return np.unique(np.concatenate([[0], cuts, [len(indptr) - 1]])).astype(np.int64)


@njit(parallel=True, fastmath=True, cache=True)
def _item_statistics_kernel(
    indptr: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int32],
    weights: npt.NDArray[np.floating],
    perm: npt.NDArray[np.int64],
    factors: npt.NDArray[np.floating],
    alpha0: float,
    bounds: npt.NDArray[np.int64],
    lhs: npt.NDArray[np.floating],
    rhs: npt.NDArray[np.floating],
) -> None:
    """``lhs[j]`` (full, symmetric) and ``rhs[j]`` for the items of each range in ``bounds``.

    ``indptr``/``rows`` group the entries by item; the weight of grouped entry
    ``e`` is ``weights[perm[e]]`` (``weights`` in the user-major order).
    """
    k = factors.shape[1]
    dt = factors.dtype
    for c in prange(bounds.shape[0] - 1):
        pos = np.empty((_GATHER, k), dtype=dt)
        neg = np.empty((_GATHER, k), dtype=dt)
        bvec = np.empty(k, dtype=dt)
        for j in range(bounds[c], bounds[c + 1]):
            out = lhs[j]
            _weighted_outer(
                rows, weights, perm, factors, indptr[j], indptr[j + 1], alpha0, pos, neg, out, bvec
            )
            for a in range(k):
                rhs[j, a] = bvec[a]
                for b in range(a + 1, k):
                    out[b, a] = out[a, b]


@njit(parallel=True, cache=True)
def _structure_checksum(
    indptr: npt.NDArray[np.integer], indices: npt.NDArray[np.integer]
) -> np.uint64:
    """Position-weighted wrapping sum of a CSR structure: detects in-place edits of a cached matrix."""
    total = np.uint64(0)
    for e in prange(indices.shape[0]):
        total += (np.uint64(indices[e]) + np.uint64(1)) * (np.uint64(e) * _ODD + np.uint64(1))
    for r in prange(indptr.shape[0]):
        total += np.uint64(indptr[r]) * (np.uint64(r) * _ODD + np.uint64(3))
    return total


_ODD = np.uint64(0x9E3779B97F4A7C15)


class _Grouping:
    """The item grouping of one CSR matrix, held while that matrix is alive."""

    def __init__(self, owner: object, checksum: int, shape: tuple[int, int], arrays: Any) -> None:
        self.ref = weakref.ref(owner, lambda _: _GROUPING.clear())
        self.checksum = checksum
        self.shape = shape
        self.arrays = arrays


_GROUPING: list[_Grouping] = []


def _group_by_item(
    owner: object, m: sp.csr_matrix, n_chunks: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """Entries of ``m`` grouped by column: column pointers, row ids, and their CSR positions.

    The result for the most recent ``owner`` (the matrix object the caller
    passed) is memoised while that object lives, and reused only if the
    object, its shape and a checksum of its index arrays are unchanged — so
    an in-place edit of the structure is detected and regrouped. Only the
    structure is cached; weights and factors are read afresh on every call.
    """
    indptr = m.indptr.astype(np.int64, copy=False)
    checksum = int(_structure_checksum(m.indptr, m.indices))
    shape = (int(m.shape[0]), int(m.shape[1]))
    for g in _GROUPING:
        if g.ref() is owner and g.checksum == checksum and g.shape == shape:
            return g.arrays  # type: ignore[no-any-return]
    arrays = _by_column(
        indptr, m.indices.astype(np.int32, copy=False), np.arange(m.nnz, dtype=np.int64),
        shape[1], _row_chunks(indptr, n_chunks),
    )  # fmt: skip
    try:
        grouping = _Grouping(owner, checksum, shape, arrays)
    except TypeError:  # not weak-referenceable: do not cache
        return arrays
    _GROUPING[:] = [grouping]
    return arrays


def item_statistics(
    user_items: sp.csr_matrix | sp.csr_array,
    user_factors: npt.NDArray[np.floating],
    weights: npt.ArrayLike,
    *,
    alpha0: float,
    num_threads: int | None = None,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
    """Per-item sufficient statistics of the item half-step, as plain arrays.

    Parameters
    ----------
    user_items
        ``(n_users, n_items)`` CSR matrix of observed interactions.
    user_factors
        Fixed user factors ``(n_users, k)``.
    weights
        ``w_uj`` per stored entry, aligned with ``user_items.data`` (for the
        model, ``alpha * value``).
    alpha0
        Unobserved weight (keyword-only: it changes ``rhs``).
    num_threads
        Worker threads (default: numba's thread count).

    Returns
    -------
    lhs
        ``(n_items, k, k)``: ``sum_{u in U_j} w_uj x_u x_uᵀ``.
    rhs
        ``(n_items, k)``: ``sum_{u in U_j} (alpha0 + w_uj) x_u``.

    Notes
    -----
    Together with :func:`gramian` of the user factors these are everything the
    item step needs (:func:`solve_from_statistics`). A user's contribution to
    them is bounded by its factors' norm and its weights, which is what a
    Gaussian mechanism calibrates to. Memory is ``n_items × k²`` floats.

    Implementation: the entries are regrouped by item (a parallel
    counting sort; the grouping of the last matrix seen is kept, see
    :func:`_group_by_item`, because DPALS calls this every step with the same
    weight matrix and new factors), items are split into ranges of about
    equal numbers of entries, and a numba ``prange`` over the ranges gathers
    cache-sized blocks of each
    item's ``√|w|·x_u`` and hands them to BLAS ``syrk`` (the symmetric rank-n
    update: half the flops of a GEMM, at BLAS speed; negative weights go
    through a second block with ``alpha = -1``). Only the upper triangle is
    computed and then mirrored. Computed in the dtype of ``user_factors``
    (float32 halves memory traffic and doubles the rate).
    """
    import numba
    from threadpoolctl import threadpool_limits

    m = sp.csr_matrix(user_items)
    f = np.ascontiguousarray(user_factors)
    if f.dtype not in (np.float32, np.float64):
        f = f.astype(np.float64)
    w = np.asarray(weights, dtype=f.dtype).ravel()
    if w.shape[0] != m.nnz:
        raise ValueError(f"weights must align with the {m.nnz} stored entries, got {w.shape[0]}")
    if f.shape[0] != m.shape[0]:
        raise ValueError(f"user_factors must have {m.shape[0]} rows, got {f.shape[0]}")
    n_items, k = m.shape[1], f.shape[1]
    lhs = np.empty((n_items, k, k), dtype=f.dtype)
    rhs = np.empty((n_items, k), dtype=f.dtype)
    threads = max(1, num_threads or numba.get_num_threads())
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, int(vars(numba.config)["NUMBA_NUM_THREADS"])))
    try:
        indptr, rows, perm = _group_by_item(user_items, m, 2 * threads)
        # contiguous item ranges of about equal numbers of entries (power-law item sizes)
        bounds = _row_chunks(indptr, 16 * threads)
        with threadpool_limits(1, "blas"):
            _item_statistics_kernel(indptr, rows, w, perm, f, float(alpha0), bounds, lhs, rhs)
    finally:
        numba.set_num_threads(previous)
    return lhs, rhs


def solve_from_statistics(
    gram: npt.NDArray[np.floating],
    lhs: npt.NDArray[np.floating],
    rhs: npt.NDArray[np.floating],
    alpha0: float,
    reg_per_item: npt.ArrayLike,
) -> npt.NDArray[np.floating]:
    """Item factors from (possibly perturbed) statistics, one batched solve.

    Solves ``(alpha0 * gram + lhs_j + reg_j I) y_j = rhs_j`` for every item in
    float64 and returns the result in the dtype of ``rhs``. ``reg_per_item`` is
    a scalar or one penalty per item (see :func:`regularization_weights`).
    Noisy statistics can make a system singular; the batch then falls back to
    a (batched) pseudo-inverse rather than raising or returning NaN.
    """
    n, k = rhs.shape
    reg = np.broadcast_to(np.asarray(reg_per_item, dtype=np.float64), (n,))
    a = alpha0 * np.asarray(gram, dtype=np.float64)[None] + np.asarray(lhs, dtype=np.float64)
    a[:, np.arange(k), np.arange(k)] += reg[:, None]
    b = np.asarray(rhs, dtype=np.float64)
    try:
        out = np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = (np.linalg.pinv(a, hermitian=True) @ b[..., None])[..., 0]
    return out.astype(rhs.dtype, copy=False)
