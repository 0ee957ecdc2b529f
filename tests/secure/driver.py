"""A test driver for one SecAgg+ round with scripted dropouts and optional message tampering."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from privrec.secure import AggregateResult, RoundConfig, SecAggClient, SecAggServer

PHASES = ("advertise_keys", "share_keys", "masked_input", "unmask")
Hook = Callable[[str, dict[int, Any]], dict[int, Any]]


def run_round(
    config: RoundConfig,
    inputs: np.ndarray,
    drops: dict[int, str] | None = None,
    *,
    to_clients: Hook | None = None,
    to_server: Hook | None = None,
) -> AggregateResult:
    """Drive clients and server through the four phases.

    ``drops`` maps a client id to the phase whose message it never sends. The hooks may
    rewrite the server's outgoing messages (a malicious server or network) or the clients'.
    """
    drops = drops or {}
    clients = {u: SecAggClient(config, u) for u in config.client_ids}
    server = SecAggServer(config)

    def up(phase: str, msgs: dict[int, Any]) -> list[Any]:
        return list((to_server(phase, msgs) if to_server else msgs).values())

    def down(phase: str, msgs: dict[int, Any]) -> dict[int, Any]:
        return to_clients(phase, msgs) if to_clients else msgs

    live = [u for u in config.client_ids if drops.get(u) != "advertise_keys"]
    out = server.advertise_keys(
        up("advertise_keys", {u: clients[u].advertise_keys() for u in live})
    )
    out = down("share_keys", out)
    msgs = {u: clients[u].share_keys(m) for u, m in out.items() if drops.get(u) != "share_keys"}
    out = down("masked_input", server.share_keys(up("share_keys", msgs)))
    index = {u: i for i, u in enumerate(config.client_ids)}
    msgs = {
        u: clients[u].masked_input(m, inputs[index[u]])
        for u, m in out.items()
        if drops.get(u) != "masked_input"
    }
    out = down("unmask", server.masked_input(up("masked_input", msgs)))
    msgs = {u: clients[u].unmask(m) for u, m in out.items() if drops.get(u) != "unmask"}
    return server.unmask(up("unmask", msgs))


def expected_outcome(config: RoundConfig, drops: dict[int, str]) -> set[int] | None:
    """The survivors of a round that must succeed, or None if it must abort.

    Re-derived from the protocol description, independently of the server's code.
    """
    t, graph = config.threshold, config.neighbour_sets

    def live(u: int, alive: set[int]) -> int:
        return len(graph[u] & alive)

    advertised = {u for u in config.client_ids if drops.get(u) != "advertise_keys"}
    u1 = {u for u in advertised if live(u, advertised) >= t}
    u2 = {u for u in u1 if drops.get(u) != "share_keys"}
    while True:
        weak = {u for u in u2 if live(u, u2) < t}
        if not weak:
            break
        u2 -= weak
    u3 = {u for u in u2 if drops.get(u) != "masked_input"}
    u4 = {u for u in u3 if drops.get(u) != "unmask"}
    if len(u3) < config.min_survivors:
        return None
    if any(live(u, u4) < t for u in u2):
        return None
    return u3


def plain_sum(config: RoundConfig, inputs: np.ndarray, survivors: set[int]) -> np.ndarray:
    """The reference: sum of the survivors' inputs modulo 2**bits, in Python integers."""
    index = {u: i for i, u in enumerate(config.client_ids)}
    total = [0] * config.dim
    for u in survivors:
        for j, v in enumerate(inputs[index[u]].tolist()):
            total[j] += int(v)
    mod = 1 << config.bits
    return np.array([v % mod for v in total], dtype=np.uint64)
