"""A SuperNode's own privacy budget: each hosted user refuses rounds that would take it past its cap.

Why: the server chooses every round's noise level, how many rounds there are, who is invited
and the SecAgg+ graph. SecAgg+ and the node's round checks stop it from reading one update or
switching the noise off, but the *plan* is still trusted — a malicious server could ask for a
thousand rounds, or for noise a hundred times too small, and the model's guarantee (which the
server computes) would be the only place that says so. With a **device budget** the device
decides: ``node_config`` ``max-epsilon`` (and ``max-delta``, default 1e-5) caps what each hosted
user releases over every round it ever takes part in, whatever the server says.

Trust the node keeps, and checks (a round failing any is refused before anything is computed):

- **Malicious-server rounds only**, with the node's own PKI (``pki``, ``identity-keys``,
  ``threat-model = "malicious"`` are required): every invited id then has an enrolled identity
  key the node checks, so the server cannot pad a round with devices of its own.
- **Colluders are counted absolutely**: at most ``C = ⌈corrupt-fraction · enrolled⌉`` devices
  (``enrolled``: the users in the node's PKI; ``corrupt-fraction`` the node's own assumption,
  default 0.05) collude with the server — all of them may be invited to the same round.
- **The complete graph** (classic SecAgg, ``k = n − 1``; the server's run config
  ``complete-graph = true``) **with** ``2t > k + min(k, C)``: colluders alone never reach the
  threshold, a server lying about dropouts cannot collect ``t`` shares of both of a device's
  secrets, and no client's unmask check passes for two different survivor sets (a client
  counts only *other* clients' signatures, and two sets each signed by ``t`` of them would need
  honest signers in common) — so every client unmasks for one set.
- **The noise is bound into the round**: the round's distributed-DP settings and noise flag are
  hashed into the SecAgg round's ``context`` (:func:`~privrec.federated.flower.codec.round_context`),
  which every advertisement and survivor-set signature covers; a node refuses a task whose
  settings differ. So the honest survivors a device's unmask depends on were all told the same
  noise — a review had the server tell the other nodes a multiplier of 1e-4 (no colluder
  needed) while the budget node was charged for 9 full noise shares (ε 4.75 charged, 18.3
  spent). Nodes in ``test-mode`` honour the server's seed (predictable noise): count them among
  the colluders. On a sparse SecAgg+ graph the
  consistency check holds per neighbourhood only: a review showed a server splitting the ring
  into two views and unmasking the sum of two honest inputs while the nodes charged the round
  for 35 noise shares (ε 4.75 charged, 27.6 spent). The server also picks the round id that
  seeds a sparse graph, and can grind it.
- **Honest noise shares**: the round's noise must be sized for at most ``min_survivors − C``
  shares (with one survivor set signed by all, the server cannot claim survivors that never
  sent, and at most C of them collude).
- round ids of at most 64 bytes; no seeded noise (``test-mode`` with a budget is refused: the
  server could predict the noise).

Mechanism and accounting, per user and round: the round's distributed-DP plan (rebuilt by the
node from the round's public settings) gives the RDP bound of the noisy secure sum for its
honest noise shares, as a dominating ``GaussianDpEvent``
(:meth:`~privrec.privacy.distributed.plan.DistributedDPPlan.dp_event`; sensitivity: the clip
norm, which the node's encoder enforces itself; unit: one user's whole history; relation:
add/remove). The user admits the round only if :class:`~privrec.privacy.filter.GaussianFilter`
— the fully adaptive RDP filter of Feldman & Zrnic — keeps everything it has admitted, this
round included, within the cap; otherwise the user sits the round out (as a device that went
offline). No credit is taken for sampling (the server samples), so for FederatedMF the cap must
cover the *unamplified* ε; federated DPALS has every user in every round and its devices reach
the model's ε.

Every admission is written to ``budget-file`` (an absolute path; JSON, mode 0600, locked and
replaced atomically: :class:`~privrec.statefile.StateFile`) *before* the masked input leaves —
a crash or an aborted round can only over-count. Per hosted user, keyed by a fingerprint of its
identity key (so a re-ordered dataset cannot hand one person's record to another), the file
holds the composed rate ``Σ 1/z²``, the number of rounds and the hashes of the last
:data:`RECENT` round ids (a masked-input message delivered twice is not charged twice): its size
does not grow with the rounds. The file is the device's memory: deleting it resets the budget,
so it is to be kept like the identity keys.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privrec.errors import ConfigError, MessageRejected
from privrec.privacy.budget import Budget, warn_weak_budget
from privrec.privacy.filter import GaussianFilter
from privrec.statefile import StateFile

if TYPE_CHECKING:
    import dp_accounting

    from privrec.privacy.distributed import DistributedDPConfig, DistributedDPPlan
    from privrec.secure.secagg import RoundConfig

__all__ = [
    "DEFAULT_CORRUPT_FRACTION",
    "RECENT",
    "DeviceBudget",
    "device_budget",
    "round_event",
    "within_budget",
]

log = logging.getLogger(__name__)

FORMAT = "privrec-device-budget"
_VERSION = 1
#: per user a rate, a count and RECENT short hashes: a few KB per hosted user at most
_MAX_BYTES = 1 << 26
#: the node's own assumption of devices colluding with the server, as the servers' default
DEFAULT_CORRUPT_FRACTION = 0.05
#: round ids remembered per user (a replayed message of one of them is not charged again)
RECENT = 32
#: longest round id a node with a budget accepts (fresh randomness needs 16 bytes)
MAX_ROUND_ID = 64
_KEYS = ("max-epsilon", "max-delta", "budget-file", "corrupt-fraction")


def _number(settings: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = settings.get(key, default)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ConfigError(f"node_config {key} must be a number, found {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"node_config {key} must be a number, found {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"node_config {key} must be finite, found {value!r}")
    return out


def _round_hash(round_id: bytes) -> str:
    return hashlib.sha256(b"privrec-device-budget/round/" + round_id).hexdigest()[:32]


def fingerprint(identity_key: bytes) -> str:
    """The stable name of a user's record: a hash of its public identity key."""
    return hashlib.sha256(b"privrec-device-budget/user/" + identity_key).hexdigest()[:32]


@dataclass(frozen=True)
class DeviceBudget:
    """The node's cap for each hosted user, where it is kept, and its corrupt-device assumption."""

    budget: Budget
    file: StateFile
    corrupt_fraction: float

    def admit(
        self, users: Iterable[tuple[int, str]], event: dp_accounting.DpEvent, round_id: bytes
    ) -> list[int]:
        """The users (``(id, fingerprint)`` pairs) whose filter admits ``event``; written first.

        Users the round would take past the cap, or that already took part in this round, are
        left out (nothing is recorded for them). Raises :class:`~privrec.errors.ConfigError`
        for a budget file that is not one (it is left as it is, and no user takes part).
        """
        tag = _round_hash(round_id)
        with self.file.locked():
            spent = self._read()
            admitted = []
            for user, fp in users:
                entry = spent.get(fp, {"rate": 0.0, "rounds": 0, "recent": []})
                if tag in entry["recent"]:
                    continue  # a replayed message: its masked input was sent (and charged) once
                filt = GaussianFilter(self.budget, entry["rate"], entry["rounds"])
                if filt.admit(event):
                    recent = [*entry["recent"], tag][-RECENT:]
                    spent[fp] = {"rate": filt.rate, "rounds": filt.count, "recent": recent}
                    admitted.append(user)
            if admitted:
                self.file.write({"users": spent})
        return admitted

    def epsilon(self, identity_key: bytes) -> float:
        """ε (at the cap's δ) the user with this identity key has spent over all its rounds."""
        with self.file.locked():
            entry = self._read().get(fingerprint(identity_key))
        if entry is None:
            return 0.0
        return GaussianFilter(self.budget, entry["rate"], entry["rounds"]).epsilon()

    def _read(self) -> dict[str, dict[str, Any]]:
        doc = self.file.read()
        if doc is None:
            return {}
        users = doc.get("users")
        ok = isinstance(users, dict) and all(
            isinstance(k, str)
            and len(k) == 32
            and isinstance(v, dict)
            and set(v) == {"rate", "rounds", "recent"}
            and isinstance(v["recent"], list)
            and len(v["recent"]) <= RECENT
            and all(isinstance(r, str) and len(r) == 32 for r in v["recent"])
            for k, v in users.items()
        )
        if not ok:
            raise self.file.foreign()
        assert isinstance(users, dict)
        try:
            for v in users.values():
                GaussianFilter.check_state(v["rate"], v["rounds"])
        except ConfigError:
            raise self.file.foreign() from None
        return users


def device_budget(settings: Mapping[str, Any]) -> DeviceBudget | None:
    """The node's device budget from its own ``node_config``, or ``None`` if it sets none.

    Keys: ``max-epsilon`` (enables it), ``max-delta`` (default 1e-5), ``budget-file`` (an
    absolute path; required with a cap: a budget kept in memory would reset with every run),
    ``corrupt-fraction`` (default :data:`DEFAULT_CORRUPT_FRACTION`). A budget also requires
    ``threat-model = "malicious"`` with the node's ``pki`` and ``identity-keys``, and refuses
    ``test-mode``. Look-alike keys (``max_epsilon``) are refused rather than ignored.
    """
    for key in settings:
        norm = str(key).strip().lower().replace("_", "-")
        if norm in _KEYS and key != norm:
            raise ConfigError(f"node_config key {key!r}: did you mean {norm!r}?")
    cap = _number(settings, "max-epsilon", None)
    if cap is None:
        for key in ("max-delta", "budget-file", "corrupt-fraction"):
            if settings.get(key) not in (None, ""):
                raise ConfigError(f"node_config {key} needs max-epsilon (the device's own cap)")
        return None
    delta = _number(settings, "max-delta", 1e-5)
    assert delta is not None
    budget = Budget(epsilon=cap, delta=delta)
    warn_weak_budget(cap, delta, what="device budget: ")
    path = settings.get("budget-file")
    if not isinstance(path, str) or not path:
        raise ConfigError(
            "node_config max-epsilon needs budget-file: where the device keeps what it spent "
            "(in memory it would reset with every run)"
        )
    if not os.path.isabs(path):
        raise ConfigError(
            f"node_config budget-file must be an absolute path, found {path!r} (a relative one "
            "would follow the process's working directory, and a budget kept elsewhere is reset)"
        )
    cf = _number(settings, "corrupt-fraction", DEFAULT_CORRUPT_FRACTION)
    assert cf is not None
    if not 0.0 <= cf < 1.0:
        raise ConfigError(f"node_config corrupt-fraction must be in [0, 1), found {cf!r}")
    if str(settings.get("threat-model", "")) != "malicious" or not settings.get("pki"):
        raise ConfigError(
            "a device budget needs malicious-server rounds checked against this node's own PKI "
            "(node_config threat-model = malicious, pki, identity-keys): in honest-but-curious "
            "rounds the server could invite devices of its own and isolate a user's input"
        )
    test = settings.get("test-mode", False)
    if test is True or str(test).lower() == "true":
        raise ConfigError(
            "a device budget cannot be kept in test-mode: the server's seed would make the "
            "device's noise predictable"
        )
    file = StateFile(
        Path(path), format=FORMAT, version=_VERSION, what="device budget", max_bytes=_MAX_BYTES
    )
    out = DeviceBudget(budget, file, cf)
    with file.locked():
        out._read()  # a damaged or foreign file is refused now, before any round
    return out


def round_event(
    ddp: DistributedDPConfig,
    plan: DistributedDPPlan,
    config: RoundConfig,
    corrupt_fraction: float,
    enrolled: int,
) -> dp_accounting.DpEvent:
    """The round's event for one device, after the checks of the module docstring.

    ``enrolled`` is the number of users in the node's PKI. Raises
    :class:`~privrec.errors.MessageRejected` for a round those checks refuse.
    """
    if not config.malicious:
        raise MessageRejected(
            "a node with a device budget takes part in malicious-server rounds only"
        )
    if len(config.round_id) > MAX_ROUND_ID:
        raise MessageRejected(f"round id of {len(config.round_id)} bytes (at most {MAX_ROUND_ID})")
    colluders = math.ceil(corrupt_fraction * enrolled - 1e-9)
    k, t, n = config.neighbours, config.threshold, len(config.client_ids)
    if k != n - 1:
        raise MessageRejected(
            f"a sparse SecAgg+ graph (k = {k} of {n - 1} other clients): its consistency check "
            "holds per neighbourhood, and a server showing different survivor sets to different "
            "parts of the graph can unmask the sum of a few honest inputs — a node with a "
            "device budget needs the complete graph (run config complete-graph = true)"
        )
    if 2 * t <= k + min(k, colluders):
        raise MessageRejected(
            f"SecAgg with threshold t = {t} of {k} neighbours does not protect a device "
            f"against {colluders} colluding devices (this node's corrupt-fraction "
            f"{corrupt_fraction:g} of {enrolled} enrolled): it needs 2t > k + min(k, {colluders})"
        )
    honest = config.min_survivors - colluders
    if ddp.min_survivors > honest:
        raise MessageRejected(
            f"the noise is sized for {ddp.min_survivors} honest noise shares, but with "
            f"{colluders} colluding devices (this node's corrupt-fraction {corrupt_fraction:g} "
            f"of {enrolled} enrolled) the sum of {config.min_survivors} survivors guarantees "
            f"only {honest}: refusing the round"
        )
    return plan.dp_event(int(ddp.min_survivors))


def within_budget(
    users: list[int],
    node_config: Mapping[str, Any],
    ddp: DistributedDPConfig,
    plan: DistributedDPPlan,
    config: RoundConfig,
    *,
    noise: bool,
) -> list[int]:
    """The users whose own budget admits the round (all of them on a node without one).

    ``node_config`` is the node's *own* config (never the run config's ``node.*`` defaults).
    The admissions are on disk before any masked input leaves; a user left out sits the round
    out, as one that went offline.
    """
    import dp_accounting

    from privrec.federated.flower.codec import round_context
    from privrec.federated.flower.identity import load_pki

    budget = device_budget(node_config)
    if budget is None:
        return users
    if config.context != round_context(ddp, noise):
        raise MessageRejected(
            "a node with a device budget needs the round's distributed-DP settings bound into "
            "the SecAgg round (its context), so that every node is told the same noise"
        )
    enrolled = len(load_pki(str(node_config["pki"])))
    event = round_event(ddp, plan, config, budget.corrupt_fraction, enrolled)
    if not noise:
        event = dp_accounting.NonPrivateDpEvent()
    keys = dict(zip(config.client_ids, config.identity_keys, strict=True))
    admitted = budget.admit([(u, fingerprint(keys[u])) for u in users], event, config.round_id)
    if len(admitted) < len(users):
        log.warning(
            "%d of %d users sit this round out: it would take them past this node's "
            "max-epsilon %g (delta %g), or they already sent their input in it",
            len(users) - len(admitted), len(users), budget.budget.epsilon, budget.budget.delta,
        )  # fmt: skip
    return admitted
