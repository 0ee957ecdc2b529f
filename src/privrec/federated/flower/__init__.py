"""FederatedMF deployed on Flower: a ServerApp and a ClientApp over privrec's own SecAgg+.

Every SecAgg+ phase (advertise keys → share keys → masked input → unmask) travels as one
Flower message per SuperNode and phase; the payloads are the byte encodings of
:mod:`privrec.secure.messages`, so Flower only routes opaque bytes. Flower's own SecAgg+ mod
is not used.

Modules (import them explicitly; they need ``flwr``, the ``[federated]`` extra):

``server_app``
    ``app``: the ServerApp (``privrec.federated.flower.server_app:app``).
``client_app``
    ``app``: the ClientApp (``privrec.federated.flower.client_app:app``).
``coordinator``
    The server's round logic behind a small transport interface (Flower's Grid in
    deployment, direct calls in the in-process tests).
``node``
    What a SuperNode does with each message: its users' data, their SecAgg+ state machines,
    their updates and distributed-DP encodings.
``codec``
    Records on the wire and in ``Context.state``.

See ``docs/flower.md`` for the commands, what runs where and the threat model.
"""

from __future__ import annotations

__all__: list[str] = []
