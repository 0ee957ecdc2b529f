"""Checkpoints of a FederatedMF server: numpy arrays and JSON metadata in one ``.npz``, no pickle.

Split from :mod:`privrec.federated.server`, whose ``state_dict`` / ``from_state`` / ``save`` /
``load`` call these functions. A checkpoint holds the server's state (item factors, optimiser
moments, clip norm, noise multipliers, the accountant's records): nothing of any user.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privrec.errors import DataError, PrivacyWarning
from privrec.federated.config import FederatedMFConfig
from privrec.privacy.events import SpentEvent

if TYPE_CHECKING:
    from privrec.federated.server import FederatedMFServer

__all__ = ["from_state", "load", "save", "state_dict"]


def state_dict(self: FederatedMFServer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)``: numpy arrays and JSON-able metadata (no pickle anywhere)."""
    arrays = {
        "item_factors": self.item_factors,
        "adam_m": self.adam_m,
        "adam_v": self.adam_v,
        "head_items": np.zeros(0, np.int64) if self.head_items is None else self.head_items,
    }
    if self.noisy_counts is not None and self.noisy_lengths is not None:
        arrays["noisy_counts"] = self.noisy_counts
        arrays["noisy_lengths"] = self.noisy_lengths
    meta = {
        "config": self.config.model_dump(mode="json"),
        "n_items": self.n_items,
        "population": self.population,
        "round": self.round,
        "clip_norm": self.clip_norm,
        "noise_multiplier": self.noise_multiplier,
        "head_noise_multiplier": self.head_noise_multiplier,
        "clip_count_stddev": self.clip_count_stddev,
        "rotation_seed": self.rotation_seed,
        "public_head": self.public_head,
        "has_head": self.head_items is not None,
        "payload_rows": self.payload_rows,
        "spent": [s.to_dict() for s in self.spent],
        "runs": self._runs,
        "history": self.history,
    }
    return arrays, meta


def from_state(
    cls: type[FederatedMFServer],
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    rng: np.random.Generator | None = None,
) -> FederatedMFServer:
    """Rebuild a server from :meth:`state_dict` output (no re-calibration)."""
    config = FederatedMFConfig.model_validate(meta["config"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # seeded rng re-created: warned at start
        srv = cls(config, int(meta["n_items"]), int(meta["population"]), rng=rng, _calibrate=False)
    srv.round = int(meta["round"])
    srv.clip_norm = float(meta["clip_norm"])
    srv.noise_multiplier = float(meta["noise_multiplier"])
    srv.head_noise_multiplier = float(meta["head_noise_multiplier"])
    srv.clip_count_stddev = float(meta["clip_count_stddev"])
    srv.rotation_seed = int(meta["rotation_seed"])
    srv.public_head = bool(meta["public_head"])
    srv.spent = [SpentEvent.from_dict(d) for d in meta["spent"]]
    srv._runs = [int(r) for r in meta["runs"]]
    srv.history = list(meta["history"])
    srv._encoder = None
    if meta["has_head"]:
        srv.head_items = np.asarray(arrays["head_items"], dtype=np.int64)
        rows = meta.get("payload_rows")  # absent before the learnable head under distributed DP
        srv.payload_rows = srv.head_items.size if rows is None else int(rows)
        if not srv.head_items.size <= srv.payload_rows <= srv.n_items:
            raise DataError(
                "the checkpoint's payload rows do not fit its head",
                field="payload_rows",
                expected=f"{srv.head_items.size} <= rows <= {srv.n_items}",
                found=srv.payload_rows,
            )
        srv.item_factors = np.asarray(arrays["item_factors"], dtype=np.float64)
        srv.adam_m = np.asarray(arrays["adam_m"], dtype=np.float64)
        srv.adam_v = np.asarray(arrays["adam_v"], dtype=np.float64)
    if "noisy_counts" in arrays and "noisy_lengths" in arrays:
        srv.noisy_counts = np.asarray(arrays["noisy_counts"], dtype=np.float64)
        srv.noisy_lengths = np.asarray(arrays["noisy_lengths"], dtype=np.float64)
    elif meta["has_head"]:
        # a checkpoint from before the counting round always ran: none is owed (or planned)
        srv.noisy_counts = np.zeros(srv.n_items)
        srv.noisy_lengths = np.zeros(srv.count_dim - srv.n_items)
    return srv


def save(self: FederatedMFServer, path: str | Path) -> Path:
    """Checkpoint to ``path`` (``.npz`` with the metadata as a JSON byte array)."""
    arrays, meta = state_dict(self)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(
            fh,
            __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            **arrays,  # type: ignore[arg-type]
        )
    tmp.replace(path)  # atomic: a crash mid-write never leaves a half checkpoint
    return path


def load(
    cls: type[FederatedMFServer], path: str | Path, rng: np.random.Generator | None = None
) -> FederatedMFServer:
    """Read a checkpoint written by :meth:`save`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError("not a FederatedMF checkpoint", file=path, found=str(exc)) from None
    if "__meta__" not in arrays:
        raise DataError("not a FederatedMF checkpoint (no metadata)", file=path)
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    return from_state(cls, arrays, meta, rng)
