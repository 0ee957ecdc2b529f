"""Helpers shared by the Flower tests: an in-process transport and the local reference sums.

Imported only after ``pytest.importorskip("flwr")``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from flwr.app import Context, RecordDict
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from privrec.federated.flower.node import _user_rng, handle, load_node_data
from privrec.federated.mf import FederatedMFServer, client_update, pack_payload, user_vectors
from privrec.privacy.distributed import DistributedDPEncoder

USERS, ITEMS, PER_USER, DATA_SEED = 36, 24, 6.0, 3
#: the federated DPALS parameters of the Flower tests (seeded: honoured by nodes in test mode)
DPALS_PARAMS: dict[str, Any] = {
    "epsilon": 5.0, "delta": 1e-3, "factors": 3, "iterations": 2, "seed": 5,
}  # fmt: skip


def node_config(part: int, parts: int) -> dict[str, Any]:
    """The node_config of SuperNode ``part`` of ``parts`` on the tiny synthetic dataset."""
    return {
        "data": "synthetic",
        "partition-id": part,
        "num-partitions": parts,
        "synthetic-users": USERS,
        "synthetic-items": ITEMS,
        "synthetic-per-user": PER_USER,
        "synthetic-seed": DATA_SEED,
        "test-mode": True,  # accept the noise-free, seeded rounds these tests check exactly
    }


def full_matrix() -> sp.csr_matrix:
    """The whole dataset (what the test, not the server, knows)."""
    return load_node_data(node_config(0, 1)).histories


def run_config(checkpoint_dir: Path, **mf: Any) -> dict[str, Any]:
    """A run config for two noise-free, seeded rounds over every user."""
    cfg: dict[str, Any] = {
        "mf.factors": 4,
        "mf.head-items": "",
        "mf.rounds": 2,
        "mf.sampling-rate": 1.0,
        "mf.clients-per-round": "",
        "mf.noise-multiplier": 0.0,
        "mf.clip-norm": 1.0,
        "mf.server-lr": 0.1,
        "mf.seed": 11,
        "round-timeout": 60.0,
        "min-nodes": 3,
        "checkpoint-dir": str(checkpoint_dir),
        "save-aggregates": True,
    }
    cfg.update({f"mf.{k.replace('_', '-')}": v for k, v in mf.items()})
    return cfg


def identities(tmp_path: Path, parts: int = 3) -> tuple[Path, Callable[[int], dict[str, Any]]]:
    """A PKI for every user and each node's config naming its own keys (malicious-server rounds:
    the nodes also *require* them)."""
    from privrec.federated.flower.identity import create_identities

    pki = create_identities(range(USERS), parts, tmp_path / "pki")

    def extra(p: int) -> dict[str, Any]:
        return {
            "pki": str(pki),
            "identity-keys": str(tmp_path / "pki" / f"node-{p}.keys"),
            "threat-model": "malicious",
        }

    return pki, extra


def _roundtrip(content: RecordDict) -> RecordDict:
    proto = ProtoRecordDict.FromString(recorddict_to_proto(content).SerializeToString())
    return recorddict_from_proto(proto)


class LocalTransport:
    """SuperNodes as in-process handler calls, every message and node state serialised.

    ``fault(action, node, reply)`` may return ``None`` (the node misses the deadline) or a
    modified reply.
    """

    def __init__(
        self,
        parts: int,
        fault: Callable[[str, int, RecordDict], RecordDict | None] | None = None,
        test_mode: bool = True,
        extra: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        self.contexts = {
            100 + p: context_to_proto(
                Context(
                    run_id=1,
                    node_id=100 + p,
                    node_config={
                        **node_config(p, parts),
                        "test-mode": test_mode,
                        **(extra(p) if extra is not None else {}),
                    },
                    state=RecordDict(),
                    run_config={},
                )
            )
            for p in range(parts)
        }
        self.fault = fault
        self.calls: list[str] = []
        self.errors: list[str] = []

    def node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def exchange(
        self, action: str, contents: Mapping[int, RecordDict], *, timeout: float, group: str
    ) -> dict[int, RecordDict]:
        self.calls.append(action)
        out = {}
        for node, content in contents.items():
            context = context_from_proto(self.contexts[node])  # a fresh process per message
            try:
                reply = _roundtrip(handle(action, _roundtrip(content), context))
            except Exception as exc:  # Flower turns it into an error reply: no content
                self.errors.append(f"{action}@{node}: {exc}")
                continue
            finally:
                self.contexts[node] = context_to_proto(context)
            if self.fault is not None:
                faulty = self.fault(action, node, reply)
                if faulty is None:
                    continue
                reply = faulty
            out[node] = reply
        return out


def reference_round(ckpt: Path, round_: int, matrix: sp.csr_matrix) -> dict[str, Any]:
    """Recompute round ``round_`` locally from the pre-round checkpoint and the survivors.

    Returns the decoded aggregate, the float sum of the survivors' clipped payloads, the
    quantisation bound, and whether the modular sum equals the sum of the survivors' encodings
    recomputed with the same (seeded, test-only) rounding.
    """
    before = FederatedMFServer.load(
        ckpt / f"round-{round_ - 1:04d}.npz", population=matrix.shape[0]
    )
    agg = np.load(ckpt / f"aggregate-{round_:04d}.npz")
    assert before.head_items is not None
    spec = before.round_spec()
    assert spec.ddp is not None
    enc = DistributedDPEncoder(spec.ddp)
    survivors = agg["survivors"].tolist()
    attempt = int(agg["attempt"])
    payloads = []
    encoded = np.zeros(enc.encoded_dim, dtype=np.uint64)
    for u in survivors:
        items = matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]]
        pos = np.minimum(np.searchsorted(before.head_items, items), before.head_items.size - 1)
        pos = pos[before.head_items[pos] == items]  # items outside the head are dropped
        upd = client_update(before.item_factors, pos, before.config, spec.clip_norm)
        payload = pack_payload(upd, spec)
        payloads.append(payload)
        rng = _user_rng(before.config.seed, round_, attempt, u)
        encoded += enc.wrap(enc.quantise(payload, rng))
    encoded &= np.uint64((1 << enc.bits) - 1)
    expected = np.sum(payloads, axis=0)
    return {
        "decoded": agg["payload_sum"],
        "expected": expected,
        "bound": enc.plan.quantisation_error_bound(len(survivors), prob=1e-9),
        "exact": bool(np.array_equal(encoded, agg["sum_mod"])),
        "survivors": survivors,
    }


def training_loss(ckpt_file: Path, matrix: sp.csr_matrix) -> float:
    """Mean iALS loss of every user, each solving its vector exactly (as on the device)."""
    srv = FederatedMFServer.load(ckpt_file, population=matrix.shape[0])
    assert srv.head_items is not None
    y = srv.item_factors
    m = sp.csr_matrix(matrix[:, srv.head_items])
    c = srv.config
    x = user_vectors(y, m, c.alpha0, c.user_regularization)
    s = x @ y.T
    rows, cols = m.nonzero()
    loss = c.alpha0 * float((s**2).sum()) + float(((1.0 - s[rows, cols]) ** 2).sum())
    loss += c.user_regularization * float((x**2).sum())
    return loss / m.shape[0]


def round_log(ckpt: Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """The JSON lines the coordinator wrote for rounds of ``kind`` (``None``: all of them; the
    counting round, ``"count"``, always runs before the training rounds)."""
    lines = (ckpt / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    return [e for e in entries if kind is None or e["kind"] == kind]
