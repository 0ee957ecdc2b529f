"""A FederatedMF server's training round: its charge and its update step.

Split from :mod:`privrec.federated.server` (:meth:`~privrec.federated.server.FederatedMFServer.apply`
and :meth:`~privrec.federated.server.FederatedMFServer.discard_round` call these). Each training
round is charged exactly its planned event (``_charged_round_event``: central, the Gaussian of
the calibrated multiplier; distributed, the worst case over the round's fewest honest noise
shares), announced before any state changes — whether its update is applied or discarded.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import dp_accounting
import numpy as np

from privrec.errors import ConfigError, DataError

if TYPE_CHECKING:
    from privrec.federated.server import FederatedMFServer

__all__ = ["applied_steps", "apply_update", "discard_round"]


def apply_update(
    srv: FederatedMFServer,
    update_sum: np.ndarray,
    n_clients: float,
    unclipped_sum: float,
    *,
    survivors: int | None = None,
    sampled: int | None = None,
) -> None:
    """Validate, charge and apply one round's decoded sum (see ``FederatedMFServer.apply``)."""
    if srv.head_items is None:
        raise ConfigError("the head items are not chosen yet: call select_head first")
    g = np.asarray(update_sum, dtype=np.float64)
    if g.shape != (srv.item_factors.size,):
        raise DataError(
            "update sum has the wrong length",
            field="update_sum",
            expected=str(srv.item_factors.size),
            found=g.shape,
        )
    if not np.all(np.isfinite(g)):
        raise DataError("update sum contains NaN or infinite values", field="update_sum")
    if not (n_clients > 0 and math.isfinite(n_clients)):
        raise DataError("n_clients must be > 0", field="n_clients", found=n_clients)
    n_surv = round(n_clients) if survivors is None else int(survivors)
    if n_surv < 1:
        raise DataError("survivors must be >= 1", field="survivors", found=survivors)
    honest = srv.honest_survivors(n_surv, sampled)
    if (
        srv.config.aggregation == "distributed"
        and srv.noise_multiplier > 0
        and honest < srv.noise_shares
    ):
        raise DataError(
            f"only {honest} honest survivors' noise in the sum, planned for at least "
            f"{srv.noise_shares} (the rest may collude with the server); the secure sum "
            "should have aborted",
            field="survivors",
            found=n_surv,
        )
    event = _announced_round_event(srv)

    c = srv.config
    mean_update = g / n_clients  # descent direction
    grad = -mean_update + 2.0 * c.item_regularization * srv.item_factors.ravel()
    if c.server_optimizer == "sgd":
        step = c.server_lr * grad
    else:
        t = applied_steps(srv) + 1  # a discarded round moved no moment: not a step
        srv.adam_m = c.adam_beta1 * srv.adam_m + (1 - c.adam_beta1) * grad
        srv.adam_v = c.adam_beta2 * srv.adam_v + (1 - c.adam_beta2) * grad * grad
        m_hat = srv.adam_m / (1 - c.adam_beta1**t)
        v_hat = srv.adam_v / (1 - c.adam_beta2**t)
        step = c.server_lr * m_hat / (np.sqrt(v_hat) + c.adam_eps)
    srv.item_factors = srv.item_factors - step.reshape(srv.item_factors.shape)
    old_clip = srv.clip_norm
    b_bar = float("nan")
    if c.adaptive_clipping and math.isfinite(unclipped_sum):
        b_bar = min(1.0, max(0.0, unclipped_sum / n_clients))
        srv.clip_norm = old_clip * math.exp(-c.clip_lr * (b_bar - c.target_quantile))
    _record_round(
        srv,
        event,
        {
            "clip_norm": old_clip,
            "unclipped_fraction": b_bar,
            "survivors": n_surv,
            "honest_survivors": honest,
        },
    )


def applied_steps(srv: FederatedMFServer) -> int:
    """Training rounds whose update was applied (Adam's step count): the logged rounds less the
    discarded and aborted ones. From the history, which checkpoints keep, so a resumed run
    counts alike."""
    return sum(
        1 for e in srv.history if "round" in e and not (e.get("discarded") or e.get("aborted"))
    )


def discard_round(srv: FederatedMFServer, reason: str) -> None:
    """Charge a training round whose update is never applied.

    For an attempt that aborted *after* its unmask request went out: the replies the server
    holds may decode that attempt's sum, so it is charged as the round it was (the planned
    event, as :func:`apply_update` charges) and the run moves on to the next round without its
    update — the guarantee never counts fewer releases than were made, and the run stays within
    its planned rounds.
    """
    _record_round(srv, _announced_round_event(srv), {"discarded": True, "reason": reason})


def _announced_round_event(srv: FederatedMFServer) -> dp_accounting.DpEvent:
    """The next round's planned event, shown to the release hooks before any state changes."""
    event = srv._charged_round_event(srv.noise_multiplier)
    srv._announce(f"round {srv.round + 1}", event)
    return event


def _record_round(
    srv: FederatedMFServer, event: dp_accounting.DpEvent, info: dict[str, Any]
) -> None:
    """Count the round, charge its event and log it."""
    srv.round += 1
    srv._spend(f"round {srv.round}", event)
    srv.history.append({"round": srv.round, **info})
