"""FederatedMF and federated DPALS on Flower's simulation engine: thousands of virtual SecAgg+
clients on Ray.

The deployment ServerApp logic (:class:`~privrec.federated.flower.coordinator.Coordinator`
behind :class:`~privrec.federated.flower.server_app.GridTransport`) and the ClientApp handlers
(:func:`~privrec.federated.flower.node.handle`) run unchanged under
``flwr.simulation.run_simulation`` (``flwr[simulation]``, part of the ``[ray]`` extra): each
virtual SuperNode is **one user** (partition ``u`` of ``n_clients``), a real SecAgg+ client with
its own X25519 keys, Shamir shares, exact on-device solve, clipping and share of the
distributed discrete Gaussian noise, its state kept between phases in the node's
``Context.state``. Flower's Ray backend runs the ClientApp calls in a pool of actors; the
server sees exactly what a deployment with one user per device would show it.

What differs from ``flwr run`` is only how settings arrive: ``run_simulation`` passes no run
config, so :func:`simulation_apps` closes the run config over the ServerApp and gives the
virtual nodes their ``node.*`` data defaults (a node's own ``node_config`` still wins, and
``test-mode`` is never taken from the run config).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from privrec.errors import ConfigError

__all__ = ["run_federated_simulation", "simulation_apps"]


def simulation_apps(
    run_config: Mapping[str, Any], say: Callable[[str], None] | None = None
) -> tuple[Any, Any]:
    """A (ServerApp, ClientApp) pair running FederatedMF — or federated DPALS with
    ``algorithm = "dpals"`` — with ``run_config`` (flat ``mf.*``/``dpals.*``, deployment and
    ``node.*`` keys, as in ``examples/flower/pyproject.toml``)."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    from privrec.federated.flower.codec import ACTIONS
    from privrec.federated.flower.node import handle
    from privrec.federated.flower.server_app import GridTransport, training

    plan = training(run_config)  # errors before anything starts
    node_defaults = {
        k[len("node.") :]: v
        for k, v in run_config.items()
        if k.startswith("node.") and k != "node.test-mode"  # only a node may weaken itself
    }

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        plan.run(GridTransport(grid), say or (lambda s: None))

    client = ClientApp()

    def register(action: str, message_type: str) -> None:
        category, name = message_type.split(".", 1)

        def handler(msg: Message, context: Context) -> Message:
            # Flower freezes a Context's run config: the node defaults go in under the node's
            # own node_config (which wins), in a Context that shares the node's state
            node = Context(
                run_id=context.run_id,
                node_id=context.node_id,
                node_config={**node_defaults, **context.node_config},
                state=context.state,
                run_config=context.run_config,
            )
            return Message(handle(action, msg.content, node), reply_to=msg)

        getattr(client, category)(name)(handler)

    for action, message_type in ACTIONS.items():
        register(action, message_type)
    return server, client


def run_federated_simulation(
    n_clients: int,
    *,
    algorithm: Literal["mf", "dpals"] = "mf",
    rounds: int = 1,
    sampling_rate: float = 1.0,
    factors: int = 8,
    n_items: int = 100,
    per_user: float = 10.0,
    epsilon: float = 5.0,
    delta: float = 1e-5,
    round_timeout: float = 1800.0,
    client_cpus: float = 1.0,
    checkpoint_dir: str | Path | None = None,
    say: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """FederatedMF (or federated DPALS) with ``n_clients`` virtual SuperNodes (one synthetic
    user each); returns the server's round log (one dict per round attempt: sampled,
    survivors, dropouts, ε, bytes, s).

    FederatedMF: ``rounds`` training rounds; ``sampling_rate`` 1.0 puts every client in every
    round's SecAgg+ cohort. ``algorithm="dpals"``: federated DPALS with ``rounds`` item steps
    (``iterations``) after its counting round(s); every client takes part in every round, so
    ``sampling_rate`` must stay 1.0. Ray is started by Flower unless it is already initialised
    (then its resources are used).

    A simulation never resumes (``resume = false``): its checkpoints go to ``checkpoint_dir``
    (which must not hold an earlier run) or to a temporary folder removed afterwards, so running
    it again releases every round again — fine for the synthetic users it simulates, and the
    reason a deployment keeps a ``checkpoint-dir`` (``docs/flower.md``).
    """
    if algorithm not in ("mf", "dpals"):
        raise ConfigError(f"algorithm must be 'mf' or 'dpals', found {algorithm!r}")
    if algorithm == "dpals" and sampling_rate != 1.0:
        raise ConfigError("federated DPALS has every device in every round: sampling_rate=1.0")
    # checked before Flower starts Ray: a bad value crashed its simulation runtime, untyped
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 2:
        raise ConfigError(f"n_clients must be an integer >= 2, found {n_clients!r}")
    for name, value in (("client_cpus", client_cpus), ("round_timeout", round_timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{name} must be a number > 0, found {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, found {value!r}")
    from flwr.simulation import run_simulation

    with tempfile.TemporaryDirectory(prefix="privrec-flwr-sim-") as tmp:
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tmp)
        run_config: dict[str, Any] = {
            "round-timeout": float(round_timeout),
            "min-nodes": n_clients,
            "node-wait": 600.0,
            "checkpoint-dir": str(ckpt),
            "resume": False,
            **(
                {
                    "algorithm": "dpals",
                    "dpals.factors": factors,
                    "dpals.iterations": rounds,
                    "dpals.epsilon": float(epsilon),
                    "dpals.delta": float(delta),
                }
                if algorithm == "dpals"
                else {
                    "mf.factors": factors,
                    "mf.rounds": rounds,
                    "mf.sampling-rate": float(sampling_rate),
                    "mf.epsilon": float(epsilon),
                    "mf.delta": float(delta),
                }
            ),
            "node.data": "synthetic",
            "node.synthetic-users": n_clients,
            "node.synthetic-items": n_items,
            "node.synthetic-per-user": float(per_user),
        }
        server, client = simulation_apps(run_config, say=say)
        t0 = time.perf_counter()
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=n_clients,
            backend_config={
                "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
                "init_args": {
                    "include_dashboard": False,
                    "log_to_driver": False,
                    "_node_ip_address": "127.0.0.1",
                },
            },
        )
        log_file = ckpt / "rounds.jsonl"
        rows = (
            [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
            if log_file.exists()
            else []
        )
        for r in rows:
            r.setdefault("simulation_wall_s", time.perf_counter() - t0)
        return rows
