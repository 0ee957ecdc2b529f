"""Implicit-feedback alternating least squares (iALS) with an unobserved weight.

The model
---------
Users and items get ``k``-dimensional factors ``x_u`` and ``y_i``; the score is
``s_ui = <x_u, y_i>``. With ``w_ui = alpha * value_ui`` (Hu et al. 2008's
confidence: a play count or rating above the baseline raises trust in the
positive), ALS minimises::

    L = sum_{(u,i) observed}   (alpha0 + w_ui) (1 - s_ui)²
      + alpha0 * sum_{(u,i) unobserved} s_ui²
      + regularization * ( sum_u r_u ||x_u||² + sum_i r_i ||y_i||² )

    r_u = (|I_u| + alpha0 * n_items) ** reg_exponent
    r_i = (|U_i| + alpha0 * n_users) ** reg_exponent

``alpha0`` may be given as ``"auto"`` (the default): ``AUTO_ALPHA0 ×
density``, so that the zeros' total weight is a fixed multiple of the observed
entries' whatever the sparsity of the data.

Every cell of the matrix is a (weak, ``alpha0``) zero and every observed cell
a (strong, ``alpha0 + w``) one. ``alpha0 = 1`` and ``reg_exponent = 0`` is
the classic model that ``implicit``'s ``AlternatingLeastSquares`` fits (its
confidence ``c = alpha' * value`` is our ``1 + w``, so on binary data
``implicit(alpha')`` matches ``alpha = alpha' - 1`` here); lowering
``alpha0`` and scaling the penalty with a row's total weight (Rendle et al.
2022, "Revisiting the performance of iALS on item recommendation benchmarks")
is what makes iALS competitive with modern baselines. ``r_u`` is the paper's
frequency scaling: ``|I_u| + alpha0 * n_items`` is the total weight in the
row, so heavy users and popular items are penalised in proportion to how much
data they carry, and ``regularization`` stays comparable across datasets.

Each half-step solves one ``k × k`` system per row (see
:mod:`privrec.models.als_kernels`): by a few warm-started conjugate-gradient
steps (``solver="cg"``, default) or exactly (``solver="cholesky"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, Self

import numba
import numpy as np
import numpy.typing as npt
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ModelFileError
from privrec.models.als_kernels import (
    cg_half_step,
    cholesky_half_step,
    gramian,
    row_loss,
)
from privrec.models.base import ModelConfig, Recommender, as_user_items, check_array, register
from privrec.models.file_layout import ArraySpec, FileLayout

__all__ = ["AUTO_ALPHA0", "ImplicitALS", "ImplicitALSConfig", "resolve_alpha0"]

#: ``alpha0="auto"`` sets ``alpha0 = AUTO_ALPHA0 * nnz / (n_users * n_items)``: the
#: unobserved cells together weigh ``AUTO_ALPHA0`` times as much as the observed
#: entries. Chosen on ml-1m-implicit-r3 validation (flat optimum between 5 and 7)
#: and confirmed on gowalla, whose best absolute ``alpha0`` is ~40× smaller
#: because it is ~45× sparser — a fixed absolute default cannot fit both.
AUTO_ALPHA0 = 6.0

Progress = Callable[[int, int], None]


class ImplicitALSConfig(ModelConfig):
    """Hyper-parameters of :class:`ImplicitALS` (bounds are enforced)."""

    factors: int = pydantic.Field(64, ge=1, le=4096, description="latent dimension k")
    iterations: int = pydantic.Field(
        15, ge=0, le=10_000, description="ALS epochs (user + item step)"
    )
    regularization: float = pydantic.Field(
        0.01,
        gt=0.0,
        le=1e6,
        description="L2 penalty, scaled per row by r_u (> 0: every solve well-posed)",
    )
    alpha: float = pydantic.Field(
        1.0, ge=0.0, le=1e6, description="confidence per unit of value: w_ui = alpha * value_ui"
    )
    alpha0: Annotated[float, pydantic.Field(ge=0.0, le=1e6)] | Literal["auto"] = pydantic.Field(
        "auto",
        description="weight of every cell being zero; 'auto' = AUTO_ALPHA0 × density",
    )
    reg_exponent: float = pydantic.Field(
        1.0, ge=0.0, le=2.0, description="frequency scaling nu of the penalty; 0 turns it off"
    )
    solver: Literal["cg", "cholesky"] = pydantic.Field("cg", description="row solver")
    cg_steps: int = pydantic.Field(3, ge=1, le=256, description="CG steps per row and half-step")
    init_scale: float = pydantic.Field(
        0.1, gt=0.0, le=10.0, description="std of the initial factors is init_scale / sqrt(factors)"
    )
    seed: int = pydantic.Field(0, ge=0, description="seed of the initial factors")
    num_threads: int = pydantic.Field(0, ge=0, le=1024, description="numba threads; 0 = all cores")
    dtype: Literal["float32", "float64"] = pydantic.Field("float32", description="factor dtype")


@register
class ImplicitALS(Recommender):
    """Weighted matrix factorisation for implicit feedback, trained by ALS.

    Parameters
    ----------
    factors
        Latent dimension ``k``.
    iterations
        Epochs; each one solves all users, then all items.
    regularization
        ``lambda`` of the L2 penalty, multiplied per row by ``r_u`` (module
        docstring). With the default ``reg_exponent=1`` the penalty of a row is
        proportional to its total weight, so one value works across datasets
        (0.01 was best on both benchmark validation sets with ``alpha0="auto"``).
    alpha
        Confidence slope: an observed entry of value ``v`` has weight
        ``alpha0 + alpha * v``. With binary data and the default ``alpha=1``
        an observed cell weighs ``alpha0 + 1``.
    alpha0
        Weight of every cell being zero, or ``"auto"`` (default):
        ``AUTO_ALPHA0 * nnz / (n_users * n_items)``, i.e. all zeros together
        weigh 6× the observed entries. The best absolute value depends on the
        density (0.2 on ml-1m, ~0.005 on gowalla), the relative one does not.
        The value used is stored in ``alpha0_``.
    reg_exponent
        ``nu`` of the frequency scaling; 0 gives the classic constant penalty.
    solver
        ``"cg"`` (a few warm-started conjugate-gradient steps per row; fast) or
        ``"cholesky"`` (exact per-row solve; ``O(k³)`` per row).
    cg_steps
        CG steps per row and half-step (3 is enough because of the warm start).
    init_scale
        Factors start as ``N(0, (init_scale / sqrt(factors))²)``.
    seed
        Seed of the initialisation. Every row is solved independently, so the
        result is the same for any ``num_threads`` (up to float rounding in the Gramian's BLAS
        call, which is not bit-reproducible between runs).
    num_threads
        Numba threads during ``fit``/``fold_in``; 0 uses all cores.
    dtype
        ``"float32"`` (default, fastest) or ``"float64"``.

    Attributes
    ----------
    user_factors_, item_factors_
        Learned ``(n_users, k)`` and ``(n_items, k)`` arrays.
    loss_history_
        Training loss after each epoch when ``fit(..., record_loss=True)``.
    alpha0_
        The numeric unobserved weight used in training (resolves ``"auto"``).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> m = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    >>> model = ImplicitALS(factors=4, iterations=3).fit(m)
    >>> model.item_factors_.shape, model.item_factors_.dtype
    ((20, 4), dtype('float32'))
    """

    name: ClassVar[str] = "als"
    Config: ClassVar[type[ModelConfig]] = ImplicitALSConfig

    user_factors_: npt.NDArray[np.floating]
    item_factors_: npt.NDArray[np.floating]
    loss_history_: list[float]
    alpha0_: float

    def __init__(
        self,
        factors: int = 64,
        iterations: int = 15,
        regularization: float = 0.01,
        alpha: float = 1.0,
        alpha0: float | Literal["auto"] = "auto",
        reg_exponent: float = 1.0,
        solver: Literal["cg", "cholesky"] = "cg",
        cg_steps: int = 3,
        init_scale: float = 0.1,
        seed: int = 0,
        num_threads: int = 0,
        dtype: Literal["float32", "float64"] = "float32",
    ) -> None:
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.alpha = alpha
        self.alpha0 = alpha0
        self.reg_exponent = reg_exponent
        self.solver = solver
        self.cg_steps = cg_steps
        self.init_scale = init_scale
        self.seed = seed
        self.num_threads = num_threads
        self.dtype = dtype

    # -------------------------------------------------------------------- fit
    def fit(
        self,
        interactions: Interactions | sp.spmatrix | sp.sparray,
        *,
        progress: Progress | None = None,
        record_loss: bool = False,
    ) -> Self:
        """Learn factors from a users × items matrix; returns ``self``.

        Parameters
        ----------
        interactions
            Observed interactions; stored values are the ``value`` in
            ``w = alpha * value`` (1.0 for plain implicit feedback).
        progress
            Called as ``progress(epoch, iterations)`` after each epoch
            (``epoch`` counts from 1), e.g. to advance a progress bar.
        record_loss
            Compute the training loss after each epoch into ``loss_history_``
            (costs about one extra half-step per epoch).
        """
        self._progress = progress
        self._record_loss = record_loss
        try:
            return super().fit(interactions)
        finally:
            self._progress = None
            self._record_loss = False

    def _fit(self, data: Interactions, config: Any) -> None:
        ui = data.matrix
        n_users, n_items = ui.shape
        self.alpha0_ = resolve_alpha0(config.alpha0, ui.nnz, n_users, n_items)
        cfg: ImplicitALSConfig = config.model_copy(update={"alpha0": self.alpha0_})
        dt = np.dtype(cfg.dtype)
        k = cfg.factors
        ui_ptr, ui_idx, ui_w = _csr_parts(ui, cfg.alpha, dt)
        # the item side solves the same kernel on the transposed matrix; its
        # arrays are fresh, so the weights are scaled in place (no extra copy)
        iu = ui.T.tocsr()
        iu.sort_indices()
        iu_ptr, iu_idx = _csr_parts(iu, 1.0, dt)[:2]
        iu_w = np.asarray(iu.data, dtype=dt)
        if cfg.alpha != 1.0:
            iu_w *= dt.type(cfg.alpha)
        iu_w = _readonly(iu_w)
        del iu

        rng = np.random.default_rng(cfg.seed)
        scale = cfg.init_scale / np.sqrt(k)
        x = (rng.standard_normal((n_users, k), dtype=np.float32) * scale).astype(dt)
        y = (rng.standard_normal((n_items, k), dtype=np.float32) * scale).astype(dt)
        self.loss_history_ = []
        progress = getattr(self, "_progress", None)
        with _Threads(cfg.num_threads):
            for epoch in range(1, cfg.iterations + 1):
                self._half_step(ui_ptr, ui_idx, ui_w, y, x, cfg)
                self._half_step(iu_ptr, iu_idx, iu_w, x, y, cfg)
                if getattr(self, "_record_loss", False):
                    self.loss_history_.append(_loss(ui_ptr, ui_idx, ui_w, iu_ptr, x, y, cfg))
                if progress is not None:
                    progress(epoch, cfg.iterations)
        self.user_factors_ = x
        self.item_factors_ = y

    @staticmethod
    def _half_step(
        indptr: npt.NDArray[np.int64],
        indices: npt.NDArray[np.int32],
        weights: npt.NDArray[np.floating],
        other: npt.NDArray[np.floating],
        x: npt.NDArray[np.floating],
        cfg: ImplicitALSConfig,
    ) -> None:
        gram = gramian(other).astype(x.dtype, copy=False)
        args = (
            indptr, indices, weights, other, gram, x,
            float(cfg.alpha0), float(cfg.regularization), float(cfg.reg_exponent),
        )  # fmt: skip
        if cfg.solver == "cg":
            cg_half_step(*args, int(cfg.cg_steps))
        else:
            cholesky_half_step(*args)

    # ---------------------------------------------------------------- scoring
    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.user_factors_[users] @ self.item_factors_.T)

    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray(self.fold_in(user_items) @ self.item_factors_.T)

    def fold_in(
        self, user_items: Interactions | sp.spmatrix | sp.sparray | npt.ArrayLike
    ) -> np.ndarray:
        """Factors of new users, solved exactly from their histories and the fixed item factors.

        This is the user half-step of training (Cholesky, with the same
        weights and penalty) applied to rows the model has not seen; nothing
        learned is modified. Returns ``(n, factors)`` in the model's dtype.
        """
        self._check_fitted()
        cfg = self._resolved_config()
        hist = as_user_items(user_items, self.n_items_)
        y = np.ascontiguousarray(self.item_factors_)
        ptr, idx, w = _csr_parts(hist, cfg.alpha, y.dtype)
        x = np.zeros((hist.shape[0], y.shape[1]), dtype=y.dtype)
        gram = gramian(y).astype(y.dtype, copy=False)
        with _Threads(cfg.num_threads):
            cholesky_half_step(
                ptr, idx, w, y, gram, x,
                float(cfg.alpha0), float(cfg.regularization), float(cfg.reg_exponent),
            )  # fmt: skip
        return x

    def loss(self) -> float:
        """Training objective ``L`` (module docstring) at the learned factors."""
        self._check_fitted()
        cfg = self._resolved_config()
        dt = self.user_factors_.dtype
        ptr, idx, w = _csr_parts(self.user_items_, cfg.alpha, dt)
        iu_ptr = np.zeros(self.n_items_ + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.user_items_.indices, minlength=self.n_items_), out=iu_ptr[1:])
        with _Threads(cfg.num_threads):
            return _loss(ptr, idx, w, iu_ptr, self.user_factors_, self.item_factors_, cfg)

    def _resolved_config(self) -> ImplicitALSConfig:
        """Validated hyper-parameters with ``alpha0`` replaced by the value used in training."""
        cfg: ImplicitALSConfig = self.config()  # type: ignore[assignment]
        return cfg.model_copy(update={"alpha0": self.alpha0_})

    # ------------------------------------------------------------ persistence
    @classmethod
    def _file_layout(cls, config: Any, n_items: int) -> FileLayout:
        k = int(config.factors)
        # item rows of items nobody used are zeros; user rows are one per stored user
        return FileLayout(
            {
                "item_factors": ArraySpec((n_items, k), sparse=True),
                "user_factors": ArraySpec((None, k)),
                "alpha0": ArraySpec(()),
            }
        )

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "user_factors": self.user_factors_,
            "item_factors": self.item_factors_,
            "alpha0": np.asarray(self.alpha0_, dtype=np.float64),
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        k = self.factors
        self.item_factors_ = np.ascontiguousarray(
            check_array(arrays, "item_factors", kind="f", shape=(self._known_n_items(), k))
        )
        # known users' factors; a file saved without user data holds none to serve
        self.user_factors_ = np.ascontiguousarray(
            check_array(arrays, "user_factors", kind="f", shape=(None, k))
        )
        if self.user_factors_.shape[0] != self.user_items_.shape[0]:
            if self.user_items_.shape[0] == 0:
                self.user_factors_ = self.user_factors_[:0]
            else:
                raise ModelFileError(
                    "ALS user factors do not match the stored users",
                    field="state_user_factors",
                    expected=f"{self.user_items_.shape[0]} rows",
                    found=self.user_factors_.shape[0],
                )
        self.alpha0_ = float(check_array(arrays, "alpha0", kind="f", shape=(), low=0))


def resolve_alpha0(alpha0: float | str, nnz: int, n_users: int, n_items: int) -> float:
    """The numeric unobserved weight: ``alpha0`` itself, or ``AUTO_ALPHA0 × density`` for "auto"."""
    if alpha0 == "auto":
        cells = max(n_users * n_items, 1)
        return AUTO_ALPHA0 * max(nnz, 1) / cells
    return float(alpha0)


def _csr_parts(
    m: sp.csr_matrix, alpha: float, dtype: np.dtype[Any]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.floating]]:
    """CSR arrays in the kernels' fixed types (one compiled signature) and ``alpha * value``.

    Nothing is copied when the arrays already have those types and ``alpha``
    is 1 (the default): the matrix is the largest object in memory.
    """
    w = np.asarray(m.data, dtype=dtype)
    if alpha != 1.0:
        w = w * dtype.type(alpha)
    return (
        _readonly(np.asarray(m.indptr, dtype=np.int64)),
        _readonly(np.asarray(m.indices, dtype=np.int32)),
        _readonly(w),
    )


def _readonly(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A read-only view. Interactions' arrays are read-only, and numba compiles one
    specialisation per writeability, so passing every CSR array read-only keeps it
    to a single compile per kernel and dtype."""
    v = a.view()
    v.flags.writeable = False
    return v


def _loss(
    ptr: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int32],
    w: npt.NDArray[np.floating],
    item_ptr: npt.NDArray[np.int64],
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.floating],
    cfg: ImplicitALSConfig,
) -> float:
    """Full objective: data term from the user side plus both penalties."""
    gram = gramian(y).astype(y.dtype, copy=False)
    data = float(row_loss(ptr, idx, w, y, gram, x, float(cfg.alpha0)))
    n_users, n_items = x.shape[0], y.shape[0]
    nu = cfg.reg_exponent
    ru = (np.diff(ptr) + cfg.alpha0 * n_items) ** nu
    ri = (np.diff(item_ptr) + cfg.alpha0 * n_users) ** nu
    xx = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    yy = np.einsum("ij,ij->i", y, y, dtype=np.float64)
    return data + cfg.regularization * float(ru @ xx + ri @ yy)


class _Threads:
    """Run numba kernels on ``n`` threads (0 = all); restores the previous count on exit.

    BLAS is held to one thread meanwhile: the exact solver calls BLAS/LAPACK
    from inside every numba worker, and threaded BLAS under threaded numba
    would oversubscribe the cores.
    """

    def __init__(self, n: int) -> None:
        top = int(vars(numba.config)["NUMBA_NUM_THREADS"])  # size of numba's thread pool
        self.n = min(int(n), top) if n > 0 else top
        self.previous = 0
        self._blas: Any = None

    def __enter__(self) -> None:
        from threadpoolctl import threadpool_limits

        self.previous = numba.get_num_threads()
        numba.set_num_threads(self.n)
        self._blas = threadpool_limits(1, "blas")

    def __exit__(self, *exc: object) -> None:
        numba.set_num_threads(self.previous)
        if self._blas is not None:
            self._blas.restore_original_limits()
