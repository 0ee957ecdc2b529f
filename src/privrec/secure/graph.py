"""The SecAgg+ neighbour graph and the choice of its degree ``k`` and threshold ``t``.

SecAgg+ (Bell et al., CCS 2020) replaces the complete graph of SecAgg (Bonawitz et
al., CCS 2017) with a sparse random graph of degree ``k = O(log n)``: each client
masks with, and secret-shares to, its ``k`` neighbours only, so client cost and
communication grow with ``log n`` instead of ``n``. We use a Harary graph (each
client joined to the ``k/2`` nearest positions on each side of a ring, plus the
opposite position when ``k`` is odd) laid over a random permutation of the
clients. The permutation comes from the public round id, so every party derives
the same graph without an extra message, and no single party chooses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from privrec.errors import ConfigError
from privrec.secure.prg import public_stream

__all__ = [
    "THREAT_MODELS",
    "SecAggParameters",
    "ThreatModel",
    "check_threat_model",
    "choose_parameters",
    "corrupt_neighbour_bound",
    "neighbour_graph",
    "resolve_count",
    "threshold_for",
]

#: The server a round is secured against: one that follows the protocol and only looks
#: (``"honest-but-curious"``), or one that may deviate from it (``"malicious"``: Bell et al.'s
#: threshold rule, signed advertisements and the signed consistency check).
ThreatModel = Literal["honest-but-curious", "malicious"]
THREAT_MODELS: tuple[str, ...] = ("honest-but-curious", "malicious")


def check_threat_model(value: object) -> ThreatModel:
    """``value`` if it names a threat model, else :class:`ConfigError`."""
    if value == "honest-but-curious":
        return "honest-but-curious"
    if value == "malicious":
        return "malicious"
    raise ConfigError(f"threat_model must be one of {THREAT_MODELS}, got {value!r}")


def resolve_count(value: int | float, total: int, name: str) -> int:
    """Turn ``int`` = count / ``float`` = fraction of ``total`` into a count (fractions round up).

    Rounding a fraction up is the conservative direction for dropout and corruption
    budgets, which is where this is used.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an int (count) or a float (fraction), got {value!r}")
    if isinstance(value, (int, np.integer)):
        count = int(value)
    elif isinstance(value, (float, np.floating)):
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"{name} as a fraction must be in [0, 1], got {value!r}")
        count = math.ceil(float(value) * total - 1e-9)
    else:
        raise ConfigError(f"{name} must be an int (count) or a float (fraction), got {value!r}")
    if not 0 <= count <= total:
        raise ConfigError(f"{name} must be in [0, {total}], got {count}")
    return count


def neighbour_graph(
    client_ids: tuple[int, ...] | list[int], k: int, round_seed: bytes
) -> dict[int, tuple[int, ...]]:
    """The neighbours of every client: a ``k``-regular Harary graph over a public random order.

    Parameters
    ----------
    client_ids
        Distinct client ids.
    k
        Degree. ``k >= n - 1`` gives the complete graph (classic SecAgg). Odd ``k`` needs an
        even number of clients (the extra edge joins diametrically opposite positions).
    round_seed
        Public randomness every party knows (the round id); it fixes the permutation.

    Returns
    -------
    dict
        Client id -> sorted tuple of its neighbours' ids. Symmetric, no self-loops.
    """
    ids = sorted(int(i) for i in client_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise ConfigError("client ids must be distinct")
    if k < 1:
        raise ConfigError(f"the neighbour count must be at least 1, got {k}")
    if k >= n - 1:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    if k % 2 and n % 2:
        raise ConfigError(f"an odd degree k={k} needs an even number of clients, got n={n}")
    keys = public_stream(round_seed, b"neighbour-graph", n)
    order = [ids[i] for i in np.argsort(keys, kind="stable")]
    offsets = list(range(1, k // 2 + 1))
    result: dict[int, tuple[int, ...]] = {}
    for pos, u in enumerate(order):
        near = {order[(pos + o) % n] for o in offsets} | {order[(pos - o) % n] for o in offsets}
        if k % 2:
            near.add(order[(pos + n // 2) % n])
        result[u] = tuple(sorted(near))
    return result


@dataclass(frozen=True)
class SecAggParameters:
    """Neighbour count and threshold for a SecAgg+ round, with the reasoning behind them.

    Attributes
    ----------
    n
        Number of clients.
    neighbours
        Degree ``k`` of the neighbour graph (``n - 1`` means the complete graph).
    threshold
        Shamir threshold ``t``: shares needed to rebuild a secret.
    dropout_count, corrupt_count
        The tolerated numbers of dropped and corrupt clients the choice was made for.
    abort_probability
        Upper bound on the probability that some neighbourhood keeps fewer than ``t``
        survivors (the round then aborts; it never returns a wrong sum).
    leak_probability
        Upper bound on the probability that the corrupt clients (with the server) hold ``t``
        shares of an honest client's secret, or that the honest survivors split into
        disconnected groups whose partial sums the server would learn.
    explanation
        The rule and the numbers, in words.
    """

    n: int
    neighbours: int
    threshold: int
    dropout_count: int
    corrupt_count: int
    abort_probability: float
    leak_probability: float
    explanation: str


def _runs_bound(n: int, removed: int, k: int) -> float:
    # The Harary ring minus some vertices splits only if two disjoint runs of k//2
    # consecutive positions are all removed: probability <= (n * P[one run removed])**2.
    half = k // 2
    if half == 0 or removed < half:
        return 0.0
    p_run = 1.0
    for i in range(half):
        p_run *= (removed - i) / (n - i)
    return min(1.0, (n * p_run) ** 2)


def corrupt_neighbour_bound(
    n: int, k: int, corrupt: int, *, security_bits: int = 40
) -> tuple[int, float]:
    """``(c, p)``: the fewest corrupt neighbours ``c`` an honest client exceeds w.p. ``p ≤ 2^-bits / n``.

    Neighbourhoods are uniformly random ``k``-subsets of the other ``n - 1`` clients, so the
    number of corrupt neighbours is hypergeometric; ``p`` is its tail ``P[X > c]`` (the
    union bound over the ``n`` clients is the caller's ``p · n``).
    """
    from scipy import stats

    others = n - 1
    k = min(k, others)
    cs = np.arange(k + 1)
    tail = stats.hypergeom.sf(cs, others, min(corrupt, others), k)  # P[X > c]
    c_max = int(np.argmax(tail * n <= 2.0**-security_bits))
    return c_max, float(tail[c_max])


def threshold_for(k: int, corrupt_neighbours: int, *, malicious_server: bool) -> int:
    """Bell et al.'s threshold for degree ``k`` and at most ``c`` corrupt neighbours.

    ``t > c`` against an honest-but-curious server (the corrupt neighbours alone cannot
    rebuild a secret); ``t > (k + c) / 2`` against a malicious one: every honest neighbour
    reveals only one of a client's two secrets, so two groups of honest neighbours told
    different stories plus the ``c`` corrupt ones (who reveal both) would need
    ``2(t - c) ≤ k - c`` -- impossible. Never below 2.
    """
    c = corrupt_neighbours
    return max(2, (k + c) // 2 + 1) if malicious_server else max(2, c + 1)


def choose_parameters(
    n: int,
    dropout_rate: int | float = 0.05,
    corrupt_fraction: int | float = 0.05,
    *,
    security_bits: int = 40,
    correctness_bits: int = 20,
    malicious_server: bool = False,
) -> SecAggParameters:
    """Pick the neighbour count ``k`` and threshold ``t`` for ``n`` clients (Bell et al. 2020).

    The smallest ``k`` (then the smallest ``t``) such that, with every client's
    neighbourhood a uniformly random ``k``-subset of the other clients (true of a Harary
    graph over a random permutation):

    1. **privacy** -- the corrupt neighbours of an honest client number more than
       ``c`` with probability at most ``2**-security_bits / n`` (union bound over clients),
       and ``t > c`` (honest-but-curious server), or ``t > (k + c) / 2`` with
       ``malicious_server=True`` (a server lying about dropouts to different neighbours can
       then not collect ``t`` shares of both secrets of a client, as every honest neighbour
       reveals only one of them);
    2. **connectivity** -- the honest survivors stay connected (otherwise the server would
       learn partial sums) except with probability ``2**-security_bits``;
    3. **liveness** -- more than ``k - t`` neighbours drop out with probability at most
       ``2**-correctness_bits / n``. Failing this only aborts the round, which is why
       its default margin is smaller than the privacy one.

    The counts are hypergeometric (neighbours are drawn without replacement). ``t`` is at
    least 2, so no single neighbour ever holds a secret. If no ``k < n - 1`` qualifies, the
    complete graph (classic SecAgg) is used; if even that fails, :class:`ConfigError`.

    Parameters
    ----------
    n
        Number of clients (at least 3).
    dropout_rate, corrupt_fraction
        ``int`` = number of clients, ``float`` = fraction of ``n`` (rounded up). Dropouts
        count every client that fails to finish the round, over all phases.
    security_bits, correctness_bits
        ``-log2`` of the tolerated leak and abort probabilities.
    malicious_server
        Use the stricter threshold rule that also resists inconsistent unmask requests.
    """
    if not isinstance(n, int) or n < 3:
        raise ConfigError(f"secure aggregation needs at least 3 clients, got {n!r}")
    dropped = resolve_count(dropout_rate, n, "dropout_rate")
    corrupt = resolve_count(corrupt_fraction, n, "corrupt_fraction")
    if dropped + corrupt >= n - 1:
        raise ConfigError(
            f"{dropped} dropouts + {corrupt} corrupt clients leave no honest survivors among {n}"
        )
    # scipy.stats costs ~0.3 s to import; only the server picks parameters, so a client
    # process (one per Flower message) should not pay for it.
    from scipy import stats

    leak_target = 2.0**-security_bits
    abort_target = 2.0**-correctness_bits
    others = n - 1
    candidates = [k for k in range(2, n - 1) if k % 2 == 0 or n % 2 == 0] + [n - 1]
    for k in candidates:
        c_max, corrupt_p = corrupt_neighbour_bound(n, k, corrupt, security_bits=security_bits)
        t = threshold_for(k, c_max, malicious_server=malicious_server)
        if t > k:
            continue
        complete = k == n - 1
        runs = 0.0 if complete else _runs_bound(n, dropped + corrupt, k)
        if runs > leak_target:
            continue
        drop_tail = float(stats.hypergeom.sf(k - t, others, min(dropped, others), k))
        if drop_tail * n > abort_target:
            continue
        leak = corrupt_p * n + runs
        rule = "t > (k + c) / 2" if malicious_server else "t > c"
        graph = "complete graph (classic SecAgg)" if complete else f"random Harary graph, k={k}"
        explanation = (
            f"n={n} clients, tolerating {dropped} dropouts and {corrupt} corrupt clients: "
            f"{graph}, threshold t={t}. An honest client has more than c={c_max} corrupt "
            f"neighbours with probability <= {corrupt_p:.2e} (x n = "
            f"{corrupt_p * n:.2e} <= 2^-{security_bits}); rule {rule}"
            + ("" if complete else f"; honest survivors disconnected w.p. <= {runs:.2e}")
            + f". A neighbourhood keeps fewer than t survivors (round aborts) with "
            f"probability <= {drop_tail * n:.2e} (<= 2^-{correctness_bits}). k is the "
            f"smallest degree meeting all conditions."
        )
        return SecAggParameters(
            n=n,
            neighbours=k,
            threshold=t,
            dropout_count=dropped,
            corrupt_count=corrupt,
            abort_probability=drop_tail * n,
            leak_probability=leak,
            explanation=explanation,
        )
    raise ConfigError(
        f"no threshold works for n={n} with {dropped} dropouts and {corrupt} corrupt clients "
        f"at 2^-{security_bits} / 2^-{correctness_bits}; lower the margins or the rates"
    )
