"""The Flower ClientApp of FederatedMF (``privrec.federated.flower.client_app:app``).

Runs on each SuperNode, one ``flwr-clientapp`` process per message. Each handler is a thin
wrapper around :func:`privrec.federated.flower.node.handle`; the SuperNode's
``node_config`` says which users it hosts (see :mod:`privrec.federated.flower.node`).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from privrec.federated.flower.node import handle

__all__ = ["app"]

app = ClientApp()


@app.query("privrec_describe")
def describe(msg: Message, context: Context) -> Message:
    """Announce the hosted users and the catalogue size."""
    return Message(handle("describe", msg.content, context), reply_to=msg)


@app.train("privrec_advertise_keys")
def advertise_keys(msg: Message, context: Context) -> Message:
    """SecAgg+ phase 1 for the node's sampled users."""
    return Message(handle("advertise_keys", msg.content, context), reply_to=msg)


@app.train("privrec_share_keys")
def share_keys(msg: Message, context: Context) -> Message:
    """SecAgg+ phase 2."""
    return Message(handle("share_keys", msg.content, context), reply_to=msg)


@app.train("privrec_masked_input")
def masked_input(msg: Message, context: Context) -> Message:
    """SecAgg+ phase 3: compute, clip, encode (distributed DP) and mask each user's update."""
    return Message(handle("masked_input", msg.content, context), reply_to=msg)


@app.train("privrec_consistency_check")
def consistency_check(msg: Message, context: Context) -> Message:
    """Malicious-server rounds: sign the survivor set before unmasking."""
    return Message(handle("consistency_check", msg.content, context), reply_to=msg)


@app.train("privrec_unmask")
def unmask(msg: Message, context: Context) -> Message:
    """SecAgg+ last phase: reveal the shares the server is entitled to."""
    return Message(handle("unmask", msg.content, context), reply_to=msg)
