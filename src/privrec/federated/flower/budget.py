"""A SuperNode's own privacy budget: each hosted user refuses rounds that would take it past its cap.

Why: the server chooses every round's noise level, how many rounds there are and who is sampled.
SecAgg+ and the node's round checks stop it from reading one update or switching the noise off,
but an honest-but-curious *plan* is still trusted — a malicious server could ask for a thousand
rounds, or for noise a hundred times too small, and the model's guarantee (which the server
computes) would be the only place that says so. With a **device budget** the device decides:
``node_config`` ``max-epsilon`` (and ``max-delta``, default 1e-5) caps what each hosted user
releases over every round it ever takes part in, whatever the server says.

Mechanism and accounting, per user and round: the round's distributed-DP plan (rebuilt by the
node from the round's public settings) gives the RDP bound of the noisy secure sum for the
honest noise shares the round is sized for, as a dominating ``GaussianDpEvent``
(:meth:`~privrec.privacy.distributed.plan.DistributedDPPlan.dp_event`, sensitivity: the
payload's clip norm, which the node enforces itself; unit: one user's whole history;
relation: add/remove). The user admits the round only if :class:`~privrec.privacy.filter.
GaussianFilter` — the fully adaptive RDP filter of Feldman & Zrnic — keeps everything it has
admitted, this round included, within the cap; otherwise the user sits the round out (it drops
out, as a device that went offline). No credit is taken for sampling (the server samples) —
so for FederatedMF the cap must cover the *unamplified* ε the model's guarantee also states;
federated DPALS samples every user in every round and its devices reach exactly the model's ε.

The honest shares are the node's own assumption, not the server's: the round's noise must be
sized for at most ``min_survivors − ⌈corrupt-fraction · invited⌉`` shares, with the node's own
``corrupt-fraction`` (default 0.05, as the servers'); a round claiming more is refused before
anything is computed.

Every admission is written to ``budget-file`` (JSON, mode 0600, locked and replaced atomically:
:class:`~privrec.statefile.StateFile`) *before* the masked input leaves — a crash or an aborted
round can only over-count, and the budget survives restarts and new runs. The file holds, per
hosted user, the noise multipliers and round ids it took part in: the device's own record,
which never leaves the node.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privrec.errors import ConfigError, MessageRejected
from privrec.privacy.budget import Budget
from privrec.privacy.filter import GaussianFilter
from privrec.statefile import StateFile

if TYPE_CHECKING:
    import dp_accounting

    from privrec.privacy.distributed import DistributedDPConfig, DistributedDPPlan
    from privrec.secure.secagg import RoundConfig

__all__ = ["DEFAULT_CORRUPT_FRACTION", "DeviceBudget", "device_budget", "round_event"]

FORMAT = "privrec-device-budget"
_VERSION = 1
#: one entry per round per hosted user: far below this for any real device
_MAX_BYTES = 1 << 26
#: the node's own assumption of devices colluding with the server, as the servers' default
DEFAULT_CORRUPT_FRACTION = 0.05


def _number(settings: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = settings.get(key, default)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"node_config {key} must be a number, found {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"node_config {key} must be finite, found {value!r}")
    return out


@dataclass(frozen=True)
class DeviceBudget:
    """The node's cap for each hosted user, where it is kept, and its corrupt-device assumption."""

    budget: Budget
    file: StateFile
    corrupt_fraction: float

    def admit(
        self, users: Iterable[int], event: dp_accounting.DpEvent, round_id: bytes
    ) -> list[int]:
        """The users whose filter admits ``event``; their admissions are written before return.

        Users the round would take past the cap are left out (nothing is recorded for them).
        Raises :class:`~privrec.errors.ConfigError` for a budget file that is not one (it is
        left as it is, and no user takes part).
        """
        users = list(users)
        with self.file.locked():
            spent = self._read()
            admitted = []
            for u in users:
                entry = spent.get(str(u), {"multipliers": [], "rounds": []})
                filt = GaussianFilter(self.budget, list(entry["multipliers"]))
                if filt.admit(event):
                    entry = {
                        "multipliers": filt.multipliers,
                        "rounds": [*entry["rounds"], round_id.hex()],
                    }
                    spent[str(u)] = entry
                    admitted.append(u)
            if admitted:
                self.file.write({"users": spent})
        return admitted

    def epsilon(self, user: int) -> float:
        """ε (at the cap's δ) the user has spent over every round it took part in."""
        with self.file.locked():
            entry = self._read().get(str(user))
        if entry is None:
            return 0.0
        return GaussianFilter(self.budget, list(entry["multipliers"])).epsilon()

    def _read(self) -> dict[str, dict[str, list[Any]]]:
        doc = self.file.read()
        if doc is None:
            return {}
        users = doc.get("users")
        ok = isinstance(users, dict) and all(
            isinstance(k, str)
            and k.isdigit()
            and isinstance(v, dict)
            and set(v) == {"multipliers", "rounds"}
            and isinstance(v["multipliers"], list)
            and isinstance(v["rounds"], list)
            and len(v["multipliers"]) == len(v["rounds"])
            and all(
                isinstance(z, float | int)
                and not isinstance(z, bool)
                and math.isfinite(z)
                and z > 0
                for z in v["multipliers"]
            )
            and all(isinstance(r, str) for r in v["rounds"])
            for k, v in users.items()
        )
        if not ok:
            raise self.file.foreign()
        assert isinstance(users, dict)
        return users


def device_budget(settings: Mapping[str, Any]) -> DeviceBudget | None:
    """The node's device budget from its ``node_config``, or ``None`` if it sets none.

    Keys: ``max-epsilon`` (enables it), ``max-delta`` (default 1e-5), ``budget-file``
    (required with a cap: a budget kept in memory would reset with every run), and
    ``corrupt-fraction`` (default :data:`DEFAULT_CORRUPT_FRACTION`).
    """
    cap = _number(settings, "max-epsilon", None)
    if cap is None:
        for key in ("max-delta", "budget-file"):
            if settings.get(key) not in (None, ""):
                raise ConfigError(f"node_config {key} needs max-epsilon (the device's own cap)")
        return None
    delta = _number(settings, "max-delta", 1e-5)
    assert delta is not None
    budget = Budget(epsilon=cap, delta=delta)
    path = settings.get("budget-file")
    if not isinstance(path, str) or not path:
        raise ConfigError(
            "node_config max-epsilon needs budget-file: where the device keeps what it spent "
            "(in memory it would reset with every run)"
        )
    cf = _number(settings, "corrupt-fraction", DEFAULT_CORRUPT_FRACTION)
    assert cf is not None
    if not 0.0 <= cf < 1.0:
        raise ConfigError(f"node_config corrupt-fraction must be in [0, 1), found {cf!r}")
    file = StateFile(
        Path(path), format=FORMAT, version=_VERSION, what="device budget", max_bytes=_MAX_BYTES
    )
    out = DeviceBudget(budget, file, cf)
    with file.locked():
        out._read()  # a damaged or foreign file is refused now, before any round
    return out


def round_event(
    ddp: DistributedDPConfig, plan: DistributedDPPlan, config: RoundConfig, corrupt_fraction: float
) -> dp_accounting.DpEvent:
    """The round's event for one device: the plan's bound at its honest noise shares.

    Refuses (:class:`~privrec.errors.MessageRejected`) a round whose noise is sized for more
    honest shares than the secure sum guarantees under the node's own ``corrupt_fraction``:
    ``min_survivors − ⌈corrupt_fraction · invited⌉``.
    """
    invited = len(config.client_ids)
    honest = config.min_survivors - math.ceil(corrupt_fraction * invited - 1e-9)
    if ddp.min_survivors > honest:
        raise MessageRejected(
            f"the noise is sized for {ddp.min_survivors} honest noise shares, but with "
            f"{corrupt_fraction:g} of the {invited} invited devices colluding (this node's "
            f"corrupt-fraction) the sum of {config.min_survivors} survivors guarantees only "
            f"{honest}: refusing the round"
        )
    return plan.dp_event(int(ddp.min_survivors))
