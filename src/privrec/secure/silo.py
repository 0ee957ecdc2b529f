"""Cross-silo DPALS and DPEASE: K data holders, two non-colluding aggregation servers, one DP model.

Roles (one process each, or threads for tests — :func:`run_local`)
    * **silos** (:class:`Silo`) hold disjoint sets of users over one shared item catalogue.
      Per step they solve their own users exactly from the released item factors, clip them
      to Γ and compute the DPALS item-step statistics with the per-user bounds of central
      DPALS (:func:`silo_statistics`); once, the sampled item counts (:func:`silo_counts`).
      For DPEASE (:class:`SiloEASEConfig`) they compute central DPEASE's bounded item Gram
      matrix instead (:func:`silo_gram`). The vector is encoded in fixed point and split into
      two additive shares mod 2^64: server 0 gets the first as its 32-byte PRG seed (sent
      before the silo computes), server 1 the second as an array (:func:`seed_share`); both
      sends run at once.
    * **aggregation servers** (:class:`AggregationServer`) sum the shares they receive, add
      their own discrete-Gaussian noise share (in fixed point, drawn in the background while
      the shares arrive, or ahead of a repeated plan) and send the partial sum to the driver.
      Each sees only uniformly random shares or their seeds.
    * the **driver** (:class:`Driver`, :class:`EASEDriver`) holds no data: it sends each
      step's public inputs (released item factors, head items, noisy counts), waits for both
      partials at once, adds them, decodes, and solves as DPALS (PSD projection, item solve)
      or DPEASE (EASE on the noisy Gram matrix) does, checkpointing after each completed
      release. It may run inside a silo's organisation. Head rules, ridges and the popularity
      blend are central DPALS's and DPEASE's own functions, fed with the noise the driver
      actually sees (both servers' shares: :func:`revealed_std`).

All traffic goes over :mod:`privrec.secure.channel` (X25519 + HKDF-SHA256 + AES-GCM with
static keys from the set-up roster).

Fixed point
    A statistic ``v`` is sent as ``round(v · 2^f)`` (``f = frac_bits``, default 32) in two's
    complement mod 2^64. Each silo refuses values with ``|round(v·2^f)| > 2^62 / K`` and each
    server's noise is required to satisfy ``40·σ_int < 2^60`` (a discrete Gaussian exceeds
    40σ with probability < 1e-340), so the noisy sum stays inside ``(-2^63, 2^63)`` and is
    decoded exactly. Rounding error: at most ``K · 2^-(f+1)`` per coordinate of the sum
    (1.2e-10·K for f = 32), and the largest statistic is ``2^(62-f)/K`` (2^30/K for f = 32,
    far above the ``n_users·√B·Γ`` bound of DPALS statistics on any realistic data).

Privacy (user level, over the union of the silos; users must be disjoint across silos)
    Release ``i`` (counts, Gramian, item left- and right-hand sides of each step) has L2
    sensitivity ``Δ_i`` (:meth:`DPALSSensitivity.of`, same bounds as central DPALS). In fixed
    point a silo's encoded vector changes by at most ``Δ_i·2^f + √d_i`` when one of its users
    is removed (rounding moves each of the ``d_i`` coordinates by < 1 more). Each server adds
    ``N_Z(0, σ_i²)`` per coordinate with ``σ_i = z_i·(Δ_i·2^f + √d_i)``, ``z_i`` the DPALS
    multiplier of that release. *Against either server alone* (and a fortiori against the
    silos, the driver and anyone who sees the model): that server knows its own noise, so
    what it learns is at most the sum plus the *other* server's noise — one discrete
    Gaussian of multiplier ``z_i`` — while its shares are uniformly random and independent of
    the data. One discrete Gaussian has the Rényi-DP curve ``α/(2 z²)`` of the continuous
    Gaussian (Canonne, Kamath & Steinke 2020; :func:`privrec.privacy.distributed.ddg_rdp`
    with n = 1), so each release is recorded as ``GaussianDpEvent(z_i)`` and composed with
    dp-accounting's **RDP** accountant (not PLD, which would be exact only for continuous
    noise). The second server's noise is ignored by the accounting (conservative): the
    revealed sum carries variance ``2σ_i²``, the price of not trusting either server. Budget
    is calibrated with the same event structure as DPALS (:func:`dpals_event`).
    Non-collusion is an assumption: the two servers together can remove all noise and
    recover every silo's statistics.

Faults
    A silo or server that disconnects, times out, or sends a message that fails
    authentication makes the step abort with :class:`~privrec.errors.ProtocolAbort`;
    the driver tells everyone to drop the step. Nothing is revealed: a single partial is the
    sum of one server's uniformly random shares plus noise, independent of the data, and
    every retry uses fresh shares and noise. The driver journals a release's events to the
    checkpoint *before* it combines the two partials, so a crash can only over-count the
    budget; ``resume`` restarts from the last completed step.

Modules: :mod:`~privrec.secure.silo_config` (public configuration and noise plans),
:mod:`~privrec.secure.silo_wire` (payloads, fixed point, shares), :mod:`~privrec.secure.silo_stats`
(what a silo computes), :mod:`~privrec.secure.silo_roles` (server, silo),
:mod:`~privrec.secure.silo_driver` (driver), :mod:`~privrec.secure.silo_results` (what is
released); this module gathers them and adds the set-up and the in-process runner.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, overload

from privrec.errors import (
    ConfigError,
)
from privrec.secure.channel import (
    Identity,
    Roster,
    check_port,
    free_ports,
    generate_keys,
)
from privrec.secure.silo_config import (
    AnyConfig,
    SiloConfig,
    SiloEASEConfig,
    ease_noise,
    ease_noise_plan,
    head_by_counts,
    load_config,
    noise_plan,
    noise_scale,
    revealed_sigma,
    silo_head,
)
from privrec.secure.silo_driver import Driver, EASEDriver
from privrec.secure.silo_results import SiloEASEResult, SiloResult
from privrec.secure.silo_roles import AggregationServer, Silo
from privrec.secure.silo_stats import (
    binary,
    silo_counts,
    silo_gram,
    silo_statistics,
    unpack_gram,
    unpack_statistics,
    user_solve,
)
from privrec.secure.silo_wire import (
    DEFAULT_FRAC_BITS,
    Segment,
    decode_fixed,
    encode_fixed,
    fixed_sigma,
    revealed_std,
    seed_share,
    split_shares,
)

__all__ = [
    "DEFAULT_FRAC_BITS",
    "AggregationServer",
    "AnyConfig",
    "Driver",
    "EASEDriver",
    "Segment",
    "Silo",
    "SiloConfig",
    "SiloEASEConfig",
    "SiloEASEResult",
    "SiloResult",
    "binary",
    "decode_fixed",
    "ease_noise",
    "ease_noise_plan",
    "encode_fixed",
    "fixed_sigma",
    "head_by_counts",
    "load_config",
    "make_driver",
    "noise_plan",
    "noise_scale",
    "revealed_sigma",
    "revealed_std",
    "run_local",
    "seed_share",
    "setup_keys",
    "silo_counts",
    "silo_gram",
    "silo_head",
    "silo_statistics",
    "split_shares",
    "unpack_gram",
    "unpack_statistics",
    "user_solve",
]


# ------------------------------------------------------------------------------- helpers
def setup_keys(
    directory: str | Path, n_silos: int, *, host: str = "127.0.0.1", ports: Sequence[int] = ()
) -> tuple[Roster, dict[str, Identity]]:
    """Set-up files for ``driver``, ``server0``, ``server1`` and ``silo1..K``.

    ``ports`` gives the listening ports of driver, server0 and server1 (free loopback ports
    are picked when empty).
    """
    if n_silos < 1:
        raise ConfigError("at least one silo is needed")
    p = list(ports) or free_ports(3, host)  # distinct: held open together while picked
    if len(p) != 3:
        raise ConfigError(f"ports: three listening ports (driver, server0, server1), found {p}")
    for port in p:
        check_port(port, "listening port of driver/server0/server1")
    parties = {
        "driver": ("driver", host, p[0]),
        "server0": ("server", host, p[1]),
        "server1": ("server", host, p[2]),
    }
    for i in range(1, n_silos + 1):
        parties[f"silo{i}"] = ("silo", host, 0)
    return generate_keys(directory, parties)


def make_driver(
    identity: Identity,
    roster: Roster,
    config: AnyConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    timeout: float = 60.0,
) -> Driver | EASEDriver:
    """The driver for ``config``'s model (:class:`Driver` or :class:`EASEDriver`)."""
    if isinstance(config, SiloEASEConfig):
        return EASEDriver(
            identity, roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout
        )
    return Driver(identity, roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout)


@overload
def run_local(
    matrices: Sequence[Any],
    config: SiloConfig,
    *,
    checkpoint: str | Path | None = ...,
    resume: bool = ...,
    timeout: float = ...,
    allow_no_noise: bool = ...,
    crash_server_at_round: int | None = ...,
    server_config: AnyConfig | None = ...,
    release_logs: str | Path | None = ...,
) -> SiloResult: ...
@overload
def run_local(
    matrices: Sequence[Any],
    config: SiloEASEConfig,
    *,
    checkpoint: str | Path | None = ...,
    resume: bool = ...,
    timeout: float = ...,
    allow_no_noise: bool = ...,
    crash_server_at_round: int | None = ...,
    server_config: AnyConfig | None = ...,
    release_logs: str | Path | None = ...,
) -> SiloEASEResult: ...
def run_local(
    matrices: Sequence[Any],
    config: AnyConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    timeout: float = 30.0,
    allow_no_noise: bool = False,
    crash_server_at_round: int | None = None,
    server_config: AnyConfig | None = None,
    release_logs: str | Path | None = None,
) -> SiloResult | SiloEASEResult:
    """Whole protocol in one process: servers and silos in threads, real loopback TCP.

    For tests and benchmarks; ``allow_no_noise`` and ``crash_server_at_round`` are test hooks
    (see :class:`AggregationServer`). The servers check every noise plan against
    ``server_config`` (default: ``config``). ``release_logs`` is a folder where every server
    and silo keeps its release log (``<party>.json``) across calls. A :class:`SiloConfig`
    trains DPALS and returns a :class:`SiloResult`; a :class:`SiloEASEConfig` trains DPEASE
    (:class:`SiloEASEResult`).
    """

    def log(party: str) -> Path | None:
        return None if release_logs is None else Path(release_logs) / f"{party}.json"

    with tempfile.TemporaryDirectory() as keys:
        roster, ids = setup_keys(keys, len(matrices))
        servers = [
            AggregationServer(
                ids[s],
                roster,
                timeout=timeout,
                allow_no_noise=allow_no_noise,
                crash_at_round=crash_server_at_round if s == "server1" else None,
                config=config if server_config is None else server_config,
                release_log=log(s),
            )
            for s in ("server0", "server1")
        ]
        silos = [
            Silo(
                ids[f"silo{i + 1}"],
                roster,
                m,
                timeout=timeout,
                config=config,
                release_log=log(f"silo{i + 1}"),
            )
            for i, m in enumerate(matrices)
        ]
        driver = make_driver(
            ids["driver"], roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout
        )
        driver.prepare()
        errors: list[BaseException] = []

        def guard(fn: Callable[[], None]) -> None:
            try:
                fn()
            except BaseException as exc:  # reported through the driver
                errors.append(exc)

        threads = [
            threading.Thread(target=guard, args=(run,), daemon=True)
            for run in [*(s.run for s in servers), *(s.run for s in silos)]
        ]
        for th in threads:
            th.start()
        try:
            result = driver.train()
        except BaseException as exc:
            for th in threads:
                th.join(timeout=timeout)
            for err in errors:  # what the other roles saw, for the reader of the traceback
                exc.add_note(f"a role failed with {type(err).__name__}: {err}")
            raise
        finally:
            for th in threads:
                th.join(timeout=timeout)
        result.timings = {
            "driver": list(driver.timings),
            "servers": [list(s.timings) for s in servers],
            "silos": [list(s.timings) for s in silos],
        }
        if isinstance(result, SiloResult):
            result.silo_seconds = [list(s.compute_seconds) for s in silos]
        return result
