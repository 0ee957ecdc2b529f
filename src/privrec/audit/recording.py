"""Watching what the cross-silo DPALS driver releases, step by step, while it trains.

Central DPALS shows its releases through ``fit(on_release=…)``
(:mod:`privrec.models.releases`), which the audit uses; this wrapper remains for the
cross-silo driver, which has no such hook yet (it also still works on central DPALS, which
the tests use to check that the hook shows exactly what it records).

DPALS and cross-silo DPALS release, at every private step, noisy per-item
right-hand sides ``r̃_j = Σ_u c_uj x_u + noise`` — their guarantee lists "the per-step
noisy statistics" among the released outputs — but keep only the final item factors.
An auditor who may look at everything released needs them: the strongest canary score
matches each canary's would-be contribution ``c_ij x_i(t)`` against ``r̃_j(t)``, and
``x_i(t)`` is a function of the item factors released at step ``t − 1`` (the initial
factors for step 1 are data-independent).

:func:`record_item_steps` collects exactly those two things by wrapping, for the
duration of one ``fit``, the module-level functions the model calls at each step: the
post-processing solve that receives the noisy statistics (``psd_solve``: its right-hand
sides in, the step's item factors out) and the user step that receives the previous
item factors. Nothing else is read, and every value recorded is either released or
data-independent. Single-threaded use only (module attributes are swapped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from privrec.errors import ConfigError

__all__ = ["ItemStepRecord", "record_item_steps"]


@dataclass
class ItemStepRecord:
    """Item factors entering each step and the noisy right-hand sides it released.

    ``y_prev[t]`` and ``rhs[t]`` are the head-item factors the users of step ``t + 1``
    were solved from and that step's released right-hand sides (head rows, in the
    model's head order).
    """

    y_prev: list[np.ndarray] = field(default_factory=list)
    rhs: list[np.ndarray] = field(default_factory=list)
    _pending: np.ndarray | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def steps(self) -> int:
        return len(self.rhs)


@contextmanager
def record_item_steps(
    module: ModuleType, user_step: str, user_module: ModuleType | None = None
) -> Iterator[ItemStepRecord]:
    """Record ``(y_prev, rhs)`` per step of a model implemented in ``module``.

    ``module.psd_solve`` (or ``diagonal_solve`` / ``shared_solve``, DPALS's cheaper left-hand
    sides) must be the solve that receives each step's noisy statistics;
    ``user_step`` names the per-step user solve (in ``user_module``, default ``module``),
    whose second argument is the item-factor matrix the users are solved from
    (``"_user_cg"`` for DPALS; ``"user_solve"`` of :mod:`privrec.secure.silo_stats` for the
    cross-silo silos, whose driver's solve is in :mod:`privrec.secure.silo_driver`).
    """
    umod = module if user_module is None else user_module
    solves = [name for name in _SOLVES if hasattr(module, name)]
    if not solves or not hasattr(umod, user_step):
        raise ConfigError(
            f"{module.__name__}.psd_solve / {umod.__name__}.{user_step} not found: the released "
            "per-step statistics cannot be observed (the model changed; the audit needs a release hook)"
        )
    rec = ItemStepRecord()
    originals: dict[str, Callable[..., Any]] = {name: getattr(module, name) for name in solves}
    orig_user: Callable[..., Any] = getattr(umod, user_step)

    def user(*args: Any, **kwargs: Any) -> Any:
        with rec._lock:  # the last user solve before a step's release saw the step's input
            rec._pending = np.array(args[1], dtype=np.float64, copy=True)
        return orig_user(*args, **kwargs)

    def wrap(name: str) -> Callable[..., Any]:
        orig, at = originals[name], _SOLVES[name]

        def solve(*args: Any, **kwargs: Any) -> Any:
            out = orig(*args, **kwargs)
            with rec._lock:
                # the latest user solve's input stays pending: a model that reuses one user
                # solve for several steps (DPALS's one round) solved every step's users from it
                if rec._pending is not None:
                    rec.y_prev.append(rec._pending)
                    rec.rhs.append(np.array(args[at], dtype=np.float64, copy=True))
            return out

        return solve

    for name in solves:
        setattr(module, name, wrap(name))
    setattr(umod, user_step, user)
    try:
        yield rec
    finally:
        for name, orig in originals.items():
            setattr(module, name, orig)
        setattr(umod, user_step, orig_user)


# The item solves that receive a step's noisy right-hand sides, and where: DPALS calls one of
# them per step depending on its ``lhs`` (full: psd_solve; diagonal: diagonal_solve; none:
# shared_solve).
_SOLVES: dict[str, int] = {"psd_solve": 2, "diagonal_solve": 2, "shared_solve": 1}
