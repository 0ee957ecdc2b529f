"""The privacy guarantee of a FederatedMF server: what was released, under which threat model.

Split from :mod:`privrec.federated.server` (:meth:`~privrec.federated.server.FederatedMFServer.guarantee`
calls :func:`server_guarantee`); the events and ε are the server's own accountant's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privrec import __version__
from privrec.privacy.accounting import AccountantKind
from privrec.privacy.distributed import NEIGHBOURING_NOTE
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.units import PrivacyUnit

if TYPE_CHECKING:
    from privrec.federated.server import FederatedMFServer

__all__ = ["server_guarantee"]


def server_guarantee(self: FederatedMFServer) -> PrivacyGuarantee:
    """The (ε, δ) guarantee of what a FederatedMF server has released so far, with its threat
    model (:meth:`FederatedMFServer.guarantee`)."""
    c = self.config
    if c.aggregation == "distributed":
        eps_server = self.epsilon_against_server()
        server_kind = (
            "a malicious server (it may deviate from the protocol: SecAgg+ with Bell et al.'s "
            "threshold, signed device keys and the signed consistency check; device identity "
            "keys come from a PKI the server does not control)"
            if c.threat_model == "malicious"
            else "an honest-but-curious server (it follows the protocol)"
        )
        threat = (
            "distributed DP with secure aggregation (SecAgg+): each sampled device clips its "
            "update and adds its share of discrete Gaussian noise before masking; the server "
            f"learns only the noised sum modulo 2^b of the surviving devices. Assumes {server_kind} "
            f"and at most a {c.corrupt_fraction:g} fraction of each round's devices colluding "
            "with it, whose noise it knows. Only honest survivors' noise counts (survivors "
            "minus that fraction of the sampled devices, rounded up): each device's noise is "
            "sized so that the honest survivors of the worst round allowed to complete "
            f"({c.min_survivor_fraction:g} of the expected cohort surviving out of the "
            "largest cohort accepted) carry the planned noise, a round with fewer aborts "
            "and releases nothing, and every completed round is charged that worst case — "
            "an upper bound that does not depend on how many devices took part. "
            "The stated ε uses "
            "amplification by Poisson sampling, which holds for everyone who sees only the "
            "released item factors; the aggregation server knows which devices took part, "
            f"and against it the guarantee is ε = {eps_server:.4g} (no amplification)."
            + NEIGHBOURING_NOTE
            if eps_server is not None
            else "distributed DP with secure aggregation (nothing released yet)"
        )
    else:
        threat = (
            "central DP: a TRUSTED server receives the clipped updates in the clear and adds "
            "Gaussian noise to their sum; the released item factors are DP with respect to any "
            "one user (with amplification by Poisson sampling, the sample being kept secret). "
            "Nothing protects a user against the server itself."
        )
    threat += (
        " User vectors and recommendations are computed on the device from the released "
        "item factors (joint DP / billboard model)."
    )
    released = [
        "item factors of the head items after every round",
        "the head item set (from noisy counts unless public)",
        "the clip norm of every round (from noised clip-bit counts)",
    ]
    not_released = [
        "user vectors (solved and kept on each device)",
        "each user's recommendations (computed on the device)",
    ]
    mechanism = f"FederatedMF ({c.aggregation} DP)"
    if c.accountant is AccountantKind.PLD:
        return PrivacyGuarantee.from_events(
            self.spent,
            delta=c.delta,
            unit=PrivacyUnit.USER,
            accountant=c.accountant,
            mechanism=mechanism,
            released=released,
            not_released=not_released,
            threat_model=threat,
            seeded_noise=c.seed is not None,
        )
    # RDP: ε at the integer orders of RDP_ACCOUNTING_ORDERS, an upper bound of what
    # recompute_epsilon() finds at dp-accounting's default (denser) orders.
    return PrivacyGuarantee(
        epsilon=self.epsilon(),
        delta=c.delta,
        unit=PrivacyUnit.USER,
        accountant=c.accountant,
        mechanism=mechanism,
        events=tuple(e.to_dict() for e in self.spent),
        released=tuple(released),
        not_released=tuple(not_released),
        threat_model=threat,
        seeded_noise=c.seed is not None,
        privrec_version=__version__,
    )
