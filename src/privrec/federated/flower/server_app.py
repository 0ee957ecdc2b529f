"""The Flower ServerApp of FederatedMF (``privrec.federated.flower.server_app:app``).

It runs on the SuperLink's side (spawned by ``flwr run``), reads the run config
(``[tool.flwr.app.config]`` of ``examples/flower/pyproject.toml``, overridable with
``flwr run --run-config``), waits for the SuperNodes, and hands over to
:class:`~privrec.federated.flower.coordinator.Coordinator`, which carries every SecAgg+ phase
as Flower messages through the Grid. Nodes that do not reply within ``round-timeout`` seconds
are dropouts of that phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from privrec.errors import ConfigError
from privrec.federated.flower.codec import ACTIONS
from privrec.federated.flower.coordinator import Coordinator, parse_run_config
from privrec.federated.flower.rounds import DeploySettings, Transport

__all__ = ["GridTransport", "Training", "app", "training"]

#: Seconds between two pulls of replies (Flower's own ``send_and_receive`` waits 3 s).
POLL_SECONDS = 0.2


class GridTransport:
    """:class:`~privrec.federated.flower.coordinator.Transport` over a Flower Grid."""

    def __init__(self, grid: Grid, poll: float = POLL_SECONDS) -> None:
        self.grid = grid
        self.poll = poll

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def wait_for_nodes(self, minimum: int, timeout: float) -> list[int]:
        """Block until at least ``minimum`` nodes are connected (or raise after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.node_ids()
            if len(nodes) >= minimum:
                return nodes
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"only {len(nodes)} SuperNodes connected after {timeout:g} s, "
                    f"min-nodes is {minimum}"
                )
            time.sleep(self.poll)

    def exchange(
        self, action: str, contents: Mapping[int, RecordDict], *, timeout: float, group: str
    ) -> dict[int, RecordDict]:
        """Push one message per node, pull replies until all arrived or ``timeout`` passed."""
        messages = [
            Message(
                content,
                dst_node_id=node,
                message_type=ACTIONS[action],
                group_id=group,
                ttl=timeout + 30.0,
            )
            for node, content in contents.items()
        ]
        pending = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + timeout
        out: dict[int, RecordDict] = {}
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                node = int(reply.metadata.src_node_id)
                if reply.has_error():
                    log(WARNING, "node %s failed in %s: %s", node, action, reply.error.reason)
                    continue
                out[node] = reply.content
            if pending:
                time.sleep(self.poll)
        if pending:
            log(WARNING, "%d node(s) missed the %s deadline (%g s)", len(pending), action, timeout)
        return out


app = ServerApp()


@dataclass(frozen=True)
class Training:
    """A parsed run config: which coordinator to start, and the deployment settings.

    :func:`training` parses (and validates) before any node is contacted; :meth:`run` waits for
    the nodes and trains. Shared by the deployment ServerApp and the simulation engine
    (:mod:`privrec.engine.flower_sim`).
    """

    algorithm: str
    settings: DeploySettings
    start: Callable[[Transport, Callable[[str], None]], object]

    def run(self, transport: GridTransport, say: Callable[[str], None]) -> None:
        nodes = transport.wait_for_nodes(self.settings.min_nodes, self.settings.node_wait)
        name = "federated DPALS" if self.algorithm == "dpals" else "FederatedMF"
        say(f"privrec {name} on {len(nodes)} SuperNodes")
        self.start(transport, say)


def training(run_config: Mapping[str, Any]) -> Training:
    """FederatedMF, or federated DPALS with ``algorithm = "dpals"``, from a flat run config."""
    if run_config.get("algorithm", "mf") == "dpals":
        from privrec.federated.flower.dpals import DPALSCoordinator, parse_dpals_run_config

        params, dep = parse_dpals_run_config(run_config)
        return Training(
            "dpals", dep, lambda t, say: DPALSCoordinator(t, params, dep, say=say).run()
        )
    config, settings = parse_run_config(run_config)
    return Training("mf", settings, lambda t, say: Coordinator(t, config, settings, say=say).run())


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train FederatedMF (or, with ``algorithm = "dpals"``, federated DPALS) over the connected
    SuperNodes with SecAgg+ and distributed DP."""
    training(context.run_config).run(GridTransport(grid), lambda s: log(INFO, "%s", s))
