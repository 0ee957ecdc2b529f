"""The server's side of FederatedMF: item factors, optimiser, clip norm, noise and accountant.

See :mod:`privrec.federated.mf` for the mechanism and its privacy argument.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np

from privrec.errors import ConfigError, DataError, InvalidInputError, PrivacyWarning
from privrec.federated import server_checkpoint, server_counting, server_rounds
from privrec.federated.aborts import cohort_bound, warn_if_aborts_matter
from privrec.federated.accounting import (
    calibrate_multiplier,
    count_epsilon_fraction,
    fast_epsilon,
    head_count_event,
)
from privrec.federated.client import RoundSpec, count_dim, split_noise
from privrec.federated.config import FederatedMFConfig
from privrec.federated.server_counting import HEAD_LABEL
from privrec.models.dp_rules import LengthProfile
from privrec.privacy.accounting import AccountantKind
from privrec.privacy.budget import Budget
from privrec.privacy.distributed import (
    DistributedDPConfig,
    DistributedDPEncoder,
    padding_generator,
)
from privrec.privacy.events import SpentEvent, total_event, unsampled
from privrec.privacy.guarantee import PrivacyGuarantee

__all__ = ["HEAD_LABEL", "FederatedMFServer"]


class FederatedMFServer:
    """Server state of federated MF: item factors, optimiser, clip norm, round, accountant.

    Parameters
    ----------
    config
        Training configuration.
    n_items
        Catalogue size.
    population
        Number of users (devices) that may be sampled; fixes ``q`` with ``clients_per_round``.
    head_items
        Catalogue indices the model trains (``None``: the whole catalogue if
        ``config.head_items`` is ``None``, else chosen later by :meth:`select_head` from
        private counts). A given head must come from **public** data: choosing it is not
        charged (the counting round still runs and is, for the ranking's popularity prior).
    rng
        Noise source for the central variant (default: seeded ChaCha20 if ``config.seed`` is set
        — with a warning — else the CSPRNG).

    Attributes
    ----------
    ledger_hook
        Optional callable given every :class:`~privrec.privacy.events.SpentEvent` (the head
        selection, then one per round) **before** the release changes any state — before the
        head is set or the item factors move (a privacy ledger checks it against its
        reservation, tops the charge up or refuses; an exception stops training with nothing
        of that release applied). :meth:`planned_events` gives, before round 1, exactly the
        events a complete run records, for a ledger to reserve.

    Distributed DP and corrupt devices
        At most ``corrupt_fraction`` of the devices sampled in a round collude with the
        server; their noise shares are known to it and protect nobody. Only **honest**
        survivors count, ``survivors − ⌈corrupt_fraction · sampled⌉``
        (:meth:`honest_survivors`). Each device's noise share is sized so that
        :attr:`noise_shares` honest shares carry the planned noise — the fewest honest
        survivors a completed round can have (:attr:`min_survivors` survivors out of at most
        :attr:`max_clients` sampled); the secure sum aborts below
        :meth:`round_min_survivors`, and :meth:`apply` refuses a sum with fewer honest
        survivors. Every completed round is therefore charged this worst case, the event of
        the sum over :attr:`noise_shares` honest shares: a provable upper bound on the round's
        true loss that does not depend on how many devices took part. (Charging each round's
        actual survivors would store a function of the cohort size — hence of the number of
        users — in every released event, which no guarantee covers, and would make the charge
        data-dependent.)
    """

    def __init__(
        self,
        config: FederatedMFConfig,
        n_items: int,
        population: int,
        head_items: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        *,
        _calibrate: bool = True,
    ) -> None:
        from privrec.privacy.randomness import resolve_generator

        if n_items < 1:
            raise ConfigError(f"n_items must be >= 1, found {n_items}")
        self.config = config
        self.n_items = int(n_items)
        self.population = int(population)
        self.q = config.sampling_probability(self.population)
        self.expected_clients = max(1.0, self.q * self.population)
        self.rng = resolve_generator(config.seed) if rng is None else rng
        self.round = 0
        self.clip_norm = float(config.clip_norm)
        self.spent: list[SpentEvent] = []
        self._runs: list[int] = []  # rounds summarised by each spent record
        self.history: list[dict[str, Any]] = []
        self.ledger_hook: Callable[[SpentEvent], None] | None = None
        self.head_items: np.ndarray | None = None
        #: Rows of item factors the training payload carries (``None`` before the head): the
        #: head's size, except under distributed DP with the learnable-head rule, where it
        #: stays the planned ``head_items`` and the rows past the learnable head are zeros.
        self.payload_rows: int | None = None
        #: ``T`` the learnable-head rule used when the counts chose the head (a resumed run
        #: may change the target; its checkpoint check re-applies the rule with this one).
        self.head_rounds: int | None = None
        #: Released by the counting round (None before it): noisy item counts (rescaled to
        #: item units, noise ``z_h·√(B + 1)``) and the noisy history-length histogram.
        self.noisy_counts: np.ndarray | None = None
        self.noisy_lengths: np.ndarray | None = None
        self.item_factors = np.zeros((0, config.factors))
        self.adam_m = np.zeros(0)
        self.adam_v = np.zeros(0)
        self.rotation_seed = int(self.rng.integers(0, 2**31 - 1))
        sb = config.clip_count_stddev
        self.clip_count_stddev = self.expected_clients / 20.0 if sb is None else float(sb)
        self.noise_multiplier = 0.0
        self.head_noise_multiplier = 0.0
        self.public_head = head_items is not None
        self._encoder: DistributedDPEncoder | None = None
        self._count_encoder: DistributedDPEncoder | None = None
        self._eps_cache: tuple[object, float] = (None, 0.0)
        self._worst: dict[tuple[str, float, int], dp_accounting.DpEvent] = {}
        if _calibrate:
            # the head first: a public head's size sets the payload the noise is checked for
            if head_items is not None:
                self._set_head(np.asarray(head_items, dtype=np.int64))
            elif config.head_items is None or config.head_items >= self.n_items:
                self._set_head(np.arange(self.n_items, dtype=np.int64))
            self._calibrate()

    # ------------------------------------------------------------------ noise & accounting
    @property
    def needs_head(self) -> bool:
        """Whether the counting round (:meth:`select_head`) must run before round 1.

        It always runs once: its noisy counts are the ranking's popularity prior and, unless
        the head is public or the whole catalogue, choose the head.
        """
        return self.noisy_counts is None

    @property
    def count_dim(self) -> int:
        """Length of the counting round's payload (catalogue + history-length bins)."""
        return count_dim(self.n_items)

    @property
    def count_scale(self) -> float:
        """√(B + 1): what the counting round's sum is multiplied by to give counts."""
        return math.sqrt(self.config.counted_items + 1.0)

    def count_share(self) -> float:
        """Share of ε spent on the counting round (the config's, else the default rule)."""
        c = self.config
        if c.head_epsilon_fraction is not None:
            return float(c.head_epsilon_fraction)
        assert c.epsilon is not None
        return count_epsilon_fraction(
            c.epsilon, c.delta, self.population, c.counted_items, self.q_head
        )

    def length_profile(self) -> LengthProfile | None:
        """The released history-length histogram as a profile (``None`` before the count)."""
        if self.noisy_lengths is None:
            return None
        std = self.head_noise_multiplier * self.count_scale
        return LengthProfile(self.noisy_lengths, std, self.n_items)

    def _round_event(self, z: float) -> dp_accounting.DpEvent:
        if z == 0:
            return dp_accounting.NonPrivateDpEvent()
        inner = dp_accounting.GaussianDpEvent(z)
        return inner if self.q >= 1.0 else dp_accounting.PoissonSampledDpEvent(self.q, inner)

    @property
    def q_head(self) -> float:
        """Poisson rate of the counting round (default 1: every device, once).

        One round over everyone: the counts' signal grows with the rate while sampling's
        amplification buys back less than that at the ε shares the counts get (validation:
        movietweetings-like synthetic data, ε = 1, Recall@20 0.154 at the training rate
        against 0.173 at rate 1).
        """
        r = self.config.head_sampling_rate
        return 1.0 if r is None else float(r)

    def _head_event(
        self, z: float, inner: dp_accounting.DpEvent | None = None
    ) -> dp_accounting.DpEvent:
        base = head_count_event(z) if inner is None else inner
        if z == 0 or self.q_head >= 1.0:
            return base
        return dp_accounting.PoissonSampledDpEvent(self.q_head, base)

    def _planned_event(self, z: float, z_head: float) -> dp_accounting.DpEvent:
        """The whole run as calibrated: Gaussian rounds of multiplier ``z`` (and the head)."""
        rounds = dp_accounting.SelfComposedDpEvent(self._round_event(z), self.config.rounds)
        if not self._charges_head:
            return rounds
        return dp_accounting.ComposedDpEvent([self._head_event(z_head), rounds])

    # -- the events a completed round is charged (distributed: its worst case)
    @property
    def _planned_head_size(self) -> int:
        if self.payload_rows is not None:
            return self.payload_rows
        n = self.n_items if self.config.head_items is None else self.config.head_items
        return min(n, self.n_items)

    def _worst_inner(self, kind: str, z: float) -> dp_accounting.DpEvent:
        """Distributed DP: the RDP-dominating event of a sum over the fewest honest noise
        shares a completed round can have, with the devices' noise sized for multiplier ``z``
        (``kind`` ``"train"`` or ``"count"``). One function for the plan and the charge, so
        the two are the same event."""
        dim = self._planned_head_size * self.config.factors + 1 if kind == "train" else 0
        key = (kind, float(z), dim)
        if key not in self._worst:
            if kind == "train":
                plan = DistributedDPEncoder(self.ddp_config(dim, z)).plan
                self._worst[key] = plan.dp_event(self.noise_shares)
            else:
                _, shares, _ = self._count_sizes()
                self._worst[key] = self._count_encoder_for(z).plan.dp_event(shares)
        return self._worst[key]

    def _charged_round_event(self, z: float) -> dp_accounting.DpEvent:
        """What a completed training round is charged (central: the Gaussian release)."""
        if z == 0 or self.config.aggregation == "central":
            return self._round_event(z)
        inner = self._worst_inner("train", z)
        return inner if self.q >= 1.0 else dp_accounting.PoissonSampledDpEvent(self.q, inner)

    def _charged_head_event(self, z_head: float) -> dp_accounting.DpEvent:
        if z_head == 0 or self.config.aggregation == "central":
            return self._head_event(z_head)
        return self._head_event(z_head, self._worst_inner("count", z_head))

    def planned_events(self, *, remaining: bool = False) -> list[SpentEvent]:
        """The events a complete run records, labelled as :attr:`spent` will label them.

        A ledger reserves these before round 1 (:func:`privrec.governance.training.federated_events`):
        every completed round is charged exactly its planned event (distributed DP: the worst
        case, see the class docstring), so a run never spends more, and aborted or missing
        rounds only less. ``remaining=True``: only what is still to come (a resumed run).
        """
        out: list[SpentEvent] = []
        if self._charges_head and (not remaining or self.head_items is None):
            out.append(SpentEvent(HEAD_LABEL, self._charged_head_event(self.head_noise_multiplier)))
        first = self.round + 1 if remaining else 1
        last = self.config.rounds
        if last >= first:
            label = f"round {first}" if first == last else f"rounds {first}-{last}"
            event = self._charged_round_event(self.noise_multiplier)
            out.append(
                SpentEvent(label, dp_accounting.SelfComposedDpEvent(event, last - first + 1))
            )
        return out

    @property
    def _charges_head(self) -> bool:
        """The counting round always runs (and is charged), whatever the head."""
        return True

    def _calibrate(self) -> None:
        c = self.config
        if c.epsilon is None:
            assert c.noise_multiplier is not None
            self.noise_multiplier = float(c.noise_multiplier)
            self.head_noise_multiplier = float(c.noise_multiplier)
            if self.noise_multiplier == 0:
                warnings.warn(
                    "noise_multiplier=0: federated training without noise is NOT differentially "
                    "private (use only to test the protocol)",
                    PrivacyWarning,
                    stacklevel=3,
                )
        else:
            budget = Budget(c.epsilon, c.delta)
            budget.check_delta(self.population)
            kind = c.accountant
            z_head = 0.0
            if self._charges_head:
                head_budget = Budget(c.epsilon * self.count_share(), c.delta)
                z_head = calibrate_multiplier(head_budget, self._head_event, kind)
            self.head_noise_multiplier = z_head
            self.noise_multiplier = calibrate_multiplier(
                budget, lambda z: self._planned_event(z, z_head), kind
            )
            if c.aggregation == "distributed":
                self._meet_budget_at_worst_case(budget)
                warn_if_aborts_matter(self)
        if c.adaptive_clipping and self.noise_multiplier > 0:
            split_noise(self.noise_multiplier, self.clip_count_stddev)  # validates 2σ_b > z
        self._encoder = None

    def _meet_budget_at_worst_case(self, budget: Budget) -> None:
        """Distributed DP: the charged worst-case events (discrete sums over the fewest honest
        shares) stay within the budget. Their multiplier equals ``z`` up to KLS21's τ terms
        (below 1e-8 at the grid scales used); when those terms matter, both multipliers grow
        by 0.1 % steps until the charged run fits."""
        c = self.config
        for _ in range(200):
            event = total_event(self.planned_events())
            if fast_epsilon(event, c.delta, c.accountant) <= budget.epsilon:
                return
            self.noise_multiplier *= 1.001
            self.head_noise_multiplier *= 1.001
        raise ConfigError(
            f"the distributed noise cannot meet epsilon={budget.epsilon:g} for the worst "
            "completed round; raise min_survivor_fraction or lower the rounds"
        )

    def _announce(self, label: str, event: dp_accounting.DpEvent) -> None:
        """Tell the ledger hook about a release before anything of it is applied."""
        if self.ledger_hook is not None:
            self.ledger_hook(SpentEvent(label, event))

    def _spend(self, label: str, event: dp_accounting.DpEvent) -> None:
        """Record a release; identical consecutive round events are kept as one run."""
        if (
            label.startswith("round")
            and self.spent
            and self.spent[-1].label.startswith("round")
            and isinstance(self.spent[-1].event, dp_accounting.SelfComposedDpEvent)
            and bool(self.spent[-1].event.event == event)
        ):
            n = self._runs[-1] + 1
            first = self.round - n + 1
            self.spent[-1] = SpentEvent(
                f"rounds {first}-{self.round}", dp_accounting.SelfComposedDpEvent(event, n)
            )
            self._runs[-1] = n
            return
        if label.startswith("round"):
            event = dp_accounting.SelfComposedDpEvent(event, 1)
        self.spent.append(SpentEvent(label, event))
        self._runs.append(1)

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far (at the config's δ), computed by dp-accounting from the records."""
        if not self.spent:
            return 0.0
        key = (len(self.spent), self._runs[-1], delta)
        if self._eps_cache[0] != key:
            d = self.config.delta if delta is None else delta
            self._eps_cache = (
                key,
                fast_epsilon(total_event(self.spent), d, self.config.accountant),
            )
        return self._eps_cache[1]

    def epsilon_against_server(self) -> float | None:
        """Distributed DP: ε against the aggregation server itself, which sees who took part.

        Amplification by sampling needs the sample to be secret; the SecAgg server knows which
        clients sent inputs, so against it each round is the unsampled event. ``None`` for the
        central variant (the trusted server sees the raw updates).
        """
        if self.config.aggregation != "distributed" or not self.spent:
            return None
        event = unsampled(total_event(self.spent))
        return fast_epsilon(event, self.config.delta, AccountantKind.RDP)

    # ------------------------------------------------------------------ distributed encoding
    def released_sum(
        self, enc: DistributedDPEncoder, sum_mod: np.ndarray, survivors: int, round_: int,
        attempt: int, kind: str,
    ) -> np.ndarray:  # fmt: skip
        """A round's decoded sum as released: padded to ``max_clients`` noise shares, drawn per
        (round, attempt, kind) so a simulation and a Flower run agree when seeded — unless the
        noise is off (multiplier 0, no privacy claimed: no shares to pad with)."""
        z = self.head_noise_multiplier if kind == "count" else self.noise_multiplier
        rng = padding_generator(self.config.seed, "fedmf", round_, attempt, kind)
        return enc.decode(sum_mod, survivors, pad=z > 0, rng=rng)

    def corrupt_bound(self, sampled: int) -> int:
        """Most devices of a round of ``sampled`` that may collude with the server (rounded up)."""
        return math.ceil(self.config.corrupt_fraction * int(sampled) - 1e-9)

    def honest_survivors(self, survivors: int, sampled: int | None = None) -> int:
        """Survivors whose noise the server does not know: ``survivors − corrupt_bound(sampled)``.

        ``sampled`` defaults to :attr:`max_clients` (the largest cohort a round accepts), the
        conservative choice when the cohort size is not known.
        """
        n = self.max_clients if sampled is None else int(sampled)
        return int(survivors) - self.corrupt_bound(n)

    @property
    def min_survivors(self) -> int:
        """Fewest survivors a training round accepts: ``min_survivor_fraction`` of the cohort."""
        return max(2, math.floor(self.config.min_survivor_fraction * self.expected_clients))

    def round_min_survivors(self, sampled: int, kind: str = "train") -> int:
        """The secure sum's floor for a cohort of ``sampled``: the planned minimum, and enough
        survivors beyond the corrupt bound that the honest ones carry the planned noise
        (:attr:`noise_shares`, at least one) — the worst case every completed round is
        charged for."""
        if kind == "train":
            floor, shares = self.min_survivors, self.noise_shares
        else:
            floor, shares, _ = self._count_sizes()
        return max(floor, self.corrupt_bound(sampled) + shares)

    @property
    def max_clients(self) -> int:
        """Largest cohort a round accepts: expected cohort + :data:`COHORT_MARGIN` standard
        deviations (+ 8); the overflow bound and the padding target of every released sum."""
        return cohort_bound(self.expected_clients, self.min_survivors)

    @property
    def noise_shares(self) -> int:
        """Honest noise shares the per-device noise is sized for (training rounds)."""
        return max(1, self.min_survivors - self.corrupt_bound(self.max_clients))

    @property
    def count_min_survivors(self) -> int:
        """Fewest survivors the head-counting round accepts."""
        return self._count_sizes()[0]

    def _count_sizes(self) -> tuple[int, int, int]:
        """``(min survivors, noise shares, max clients)`` of the head-counting round."""
        e = max(1.0, self.q_head * self.population)
        m = max(2, math.floor(self.config.min_survivor_fraction * e))
        top = cohort_bound(e, m)
        return m, max(1, m - self.corrupt_bound(top)), top

    def expected_epsilon(self) -> float:
        """The privacy loss of a run whose every sampled device survives (information only).

        Distributed DP charges every completed round its worst case (:attr:`noise_shares`
        honest survivors), so the charged ε is what was asked; a run whose rounds keep most
        devices loses less than that, and this is that expectation (dp-accounting on the
        Gaussian the honest noise shares of an expected cohort add up to). It is never
        charged: it depends on the cohort sizes. Central DP: the calibrated ε itself.
        """
        c = self.config
        z, zh = self.noise_multiplier, self.head_noise_multiplier
        if z == 0:
            return math.inf
        if c.aggregation == "distributed":
            e = max(1, round(self.expected_clients))
            z *= math.sqrt(max(1, e - self.corrupt_bound(e)) / self.noise_shares)
            if zh > 0:
                eh = max(1, round(self.q_head * self.population))
                shares = self._count_sizes()[1]
                zh *= math.sqrt(max(1, eh - self.corrupt_bound(eh)) / shares)
        return fast_epsilon(self._planned_event(z, zh), c.delta, c.accountant)

    def planned_round_event(self) -> dp_accounting.DpEvent:
        """The event every completed training round is charged (a ledger can check it first)."""
        return self._charged_round_event(self.noise_multiplier)

    def ddp_config(self, dim: int, noise_multiplier: float | None = None) -> DistributedDPConfig:
        """Public distributed-DP settings for a payload of ``dim`` coordinates (norm ≤ 1).

        The per-client noise makes the sum over :attr:`noise_shares` honest clients carry
        noise of standard deviation ``z·Δ2`` on the grid (``Δ2`` the rounded sensitivity), i.e.
        a Gaussian multiplier ``z`` relative to the payload norm bound 1 (``z`` defaults to
        :attr:`noise_multiplier`).
        """
        z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        z = z if z > 0 else 1.0
        return DistributedDPConfig(
            clip=1.0,
            dim=dim,
            min_survivors=self.noise_shares,
            rotation_seed=self.rotation_seed,
            noise_multiplier=z,
            bits=self.config.secagg_bits,
            mechanism=self.config.ddp_mechanism,
            max_clients=self.max_clients,
        )

    def encoder(self) -> DistributedDPEncoder:
        """The (cached) distributed-DP encoder of the training payload."""
        if self._encoder is None:
            self._encoder = DistributedDPEncoder(self.ddp_config(self.payload_dim))
        return self._encoder

    @property
    def payload_dim(self) -> int:
        """``payload_rows·k + 1``: the planned head's factors (zeros past the learnable head)
        and the clip bit."""
        if self.head_items is None or self.payload_rows is None:
            raise ConfigError("the head items are not chosen yet: call select_head first")
        return self.payload_rows * self.config.factors + 1

    def scales(self) -> tuple[float, float, float]:
        """``(value_scale a, bit_scale β, z_Δ)`` for the current clip norm (payload norm ≤ 1)."""
        z, c = self.noise_multiplier, self.clip_norm
        if not self.config.adaptive_clipping:
            return 1.0 / c, 0.0, z
        if z == 0:  # no noise: any split with a²C² + β²/4 ≤ 1
            return 1.0 / (math.sqrt(2.0) * c), 1.0 / math.sqrt(2.0), 0.0
        z_delta = split_noise(z, self.clip_count_stddev)
        return z / (z_delta * c), z / self.clip_count_stddev, z_delta

    def round_spec(self) -> RoundSpec:
        """Everything public a client needs this round (with the item factors)."""
        a, b, _ = self.scales()
        dim = self.payload_dim
        ddp = self.encoder().config if self.config.aggregation == "distributed" else None
        return RoundSpec(
            round=self.round + 1,
            clip_norm=self.clip_norm,
            value_scale=a,
            bit_scale=b,
            dim=dim,
            aggregation=self.config.aggregation,
            ddp=ddp,
        )

    def validate_payload(self, payload: np.ndarray) -> np.ndarray:
        """Central variant: check one device's payload before it enters the sum.

        Raises :class:`~privrec.errors.InvalidInputError` for a wrong length, non-finite values
        or a norm above 1 (which would break the sensitivity bound); the caller drops that
        device from the round.
        """
        v = np.asarray(payload, dtype=np.float64)
        if v.shape != (self.payload_dim,):
            raise InvalidInputError(f"payload has shape {v.shape}, expected ({self.payload_dim},)")
        if not np.all(np.isfinite(v)):
            raise InvalidInputError("payload contains NaN or infinite values")
        norm = float(np.linalg.norm(v))
        if norm > 1.0 + 1e-9:
            raise InvalidInputError(f"payload norm {norm:.6g} exceeds the bound 1")
        return v

    def central_noise(self, payload_sum: np.ndarray) -> np.ndarray:
        """Central variant: the trusted server adds ``N(0, z²)`` to each summed coordinate.

        Mechanism: Gaussian, L2 sensitivity 1 (payload norm bound), multiplier ``z``;
        event ``PoissonSampled(q, Gaussian(z))`` recorded by :meth:`apply`.
        """
        s = np.asarray(payload_sum, dtype=np.float64)
        if self.noise_multiplier == 0:
            return s.copy()
        return s + self.noise_multiplier * self.rng.standard_normal(s.shape)

    def unpack(self, noisy_payload_sum: np.ndarray, n_clients: float) -> tuple[np.ndarray, float]:
        """Noised payload sum → (noised sum of clipped updates, noised count of unclipped).

        ``n_clients`` is the denominator used for the mean (the expected cohort in
        simulation): the centred bits' sum plus ``n_clients/2``. Coordinates past the learnable
        head's ``len(head_items)·k`` (distributed DP's padding, zeros on every device) hold
        only noise and are dropped.
        """
        s = np.asarray(noisy_payload_sum, dtype=np.float64)
        if s.shape != (self.payload_dim,):
            raise DataError(
                "payload sum has the wrong length",
                field="payload_sum",
                expected=str(self.payload_dim),
                found=s.shape,
            )
        a, b, _ = self.scales()
        assert self.head_items is not None
        update_sum = s[: self.head_items.size * self.config.factors] / a
        unclipped = float(s[-1] / b + n_clients / 2.0) if b > 0 else float("nan")
        return update_sum, unclipped

    # ------------------------------------------------------------------ head selection
    def count_encoder(self) -> DistributedDPEncoder:
        """Distributed-DP encoder of the counting round (dimension :attr:`count_dim`, norm ≤ 1)."""
        if self._count_encoder is None:
            self._count_encoder = self._count_encoder_for(self.head_noise_multiplier)
        return self._count_encoder

    def _count_encoder_for(self, z: float) -> DistributedDPEncoder:
        return server_counting.count_encoder(self, z)

    def select_head(
        self,
        noisy_counts: np.ndarray,
        *,
        survivors: int | None = None,
        sampled: int | None = None,
    ) -> np.ndarray:
        """Release the counting round; choose the head from its noisy counts if none is set.

        ``noisy_counts`` is the noised sum of :func:`client_count_vector` over the clients of
        the counting round (Poisson rate :attr:`q_head`), length :attr:`count_dim`. See
        :func:`privrec.federated.server_counting.release_counts` for the checks, the charge
        and the head rule.
        """
        return server_counting.release_counts(
            self, noisy_counts, survivors=survivors, sampled=sampled
        )

    def count_noise(self, count_sum: np.ndarray) -> np.ndarray:
        """Central variant of the count release: ``N(0, z_h²)`` per entry of the sum of scaled
        count vectors (sensitivity 1; ``z_h·√(B + 1)`` on the rescaled counts)."""
        s = np.asarray(count_sum, dtype=np.float64)
        if self.head_noise_multiplier == 0:
            return s.copy()
        return s + self.head_noise_multiplier * self.rng.standard_normal(s.shape)

    def _set_head(self, head: np.ndarray, payload_rows: int | None = None) -> None:
        if head.ndim != 1 or head.size == 0 or head.min() < 0 or head.max() >= self.n_items:
            raise DataError("invalid head items", field="head_items", found=head)
        if np.unique(head).size != head.size:
            raise DataError("head items must be distinct", field="head_items")
        rows = head.size if payload_rows is None else int(payload_rows)
        if not head.size <= rows <= self.n_items:
            raise DataError(
                "the payload must carry at least the head's rows",
                field="payload_rows",
                expected=f"{head.size} <= rows <= {self.n_items}",
                found=rows,
            )
        self.payload_rows = rows
        self.head_items = np.sort(head.astype(np.int64))
        k = self.config.factors
        init = np.random.default_rng(None if self.config.seed is None else self.config.seed + 1)
        self.item_factors = init.standard_normal((head.size, k)) * (
            self.config.init_scale / math.sqrt(k)
        )
        self.adam_m = np.zeros(self.item_factors.size)
        self.adam_v = np.zeros(self.item_factors.size)
        self._encoder = None

    def to_head(self, items: np.ndarray) -> np.ndarray:
        """Catalogue item indices → positions in the head (items outside it are dropped)."""
        assert self.head_items is not None
        items = np.asarray(items, dtype=np.int64)
        pos = np.searchsorted(self.head_items, items)
        pos = np.minimum(pos, self.head_items.size - 1)
        out: np.ndarray = pos[self.head_items[pos] == items]
        return out

    # ------------------------------------------------------------------ one round
    def apply(
        self,
        update_sum: np.ndarray,
        n_clients: float,
        unclipped_sum: float,
        *,
        survivors: int | None = None,
        sampled: int | None = None,
    ) -> None:
        """Apply the decoded, already-noised sum of clipped updates as a mean step.

        Parameters
        ----------
        update_sum
            Noised sum of the clipped updates (length ``n_head·k``).
        n_clients
            Denominator of the mean: the expected cohort ``q·N`` (public; dividing by the
            actual count would leak it) — or the fixed cohort size.
        unclipped_sum
            Noised count of the clients whose update was within the clip norm.
        survivors
            Clients whose inputs (and, with distributed DP, noise) are in the sum. Default:
            ``round(n_clients)``.
        sampled
            The round's cohort. With distributed DP the round is charged for the honest
            survivors only, ``survivors − ⌈corrupt_fraction · sampled⌉`` (default: the largest
            cohort a round accepts, :attr:`max_clients`).

        The clip norm moves geometrically, ``C ← C·exp(−η(b̄ − γ))`` with
        ``b̄ = unclipped_sum / n_clients`` clamped to [0, 1]: too many unclipped updates
        (``b̄ > γ``) shrink ``C``, too few grow it. Validation happens before any state changes.
        """
        server_rounds.apply_update(
            self, update_sum, n_clients, unclipped_sum, survivors=survivors, sampled=sampled
        )

    def discard_round(self, reason: str) -> None:
        """Charge a training round whose update is never applied (an attempt aborted after its
        unmask request: :func:`privrec.federated.server_rounds.discard_round`)."""
        server_rounds.discard_round(self, reason)

    def record_abort(self, phase: str, reason: str) -> None:
        """A round that aborted released nothing about the data: logged, no privacy spend."""
        self.history.append(
            {"round": self.round + 1, "aborted": True, "phase": phase, "reason": reason}
        )

    # ------------------------------------------------------------------ guarantee
    def guarantee(self) -> PrivacyGuarantee:
        """The (ε, δ) guarantee of what has been released so far, with its threat model."""
        from privrec.federated.server_guarantee import server_guarantee

        return server_guarantee(self)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: numpy arrays and JSON-able metadata (no pickle anywhere)."""
        return server_checkpoint.state_dict(self)

    @classmethod
    def from_state(
        cls,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        rng: np.random.Generator | None = None,
        *,
        public_head: np.ndarray | None = None,
        population: int | None = None,
    ) -> FederatedMFServer:
        """Rebuild a server from :meth:`state_dict` output (no re-calibration), after checking
        its head and accountant records (:func:`~privrec.federated.server_checkpoint.from_state`;
        ``public_head`` confirms a public head; ``population`` is not stored)."""
        return server_checkpoint.from_state(
            cls, arrays, meta, rng, public_head=public_head, population=population
        )

    def save(self, path: str | Path) -> Path:
        """Checkpoint to ``path`` (``.npz`` with the metadata as a JSON byte array)."""
        return server_checkpoint.save(self, path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        rng: np.random.Generator | None = None,
        *,
        public_head: np.ndarray | None = None,
        population: int | None = None,
    ) -> FederatedMFServer:
        """Read a checkpoint written by :meth:`save`, checked as :meth:`from_state` does."""
        return server_checkpoint.load(
            cls, path, rng, public_head=public_head, population=population
        )
