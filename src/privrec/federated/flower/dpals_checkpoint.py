"""Resuming a federated DPALS training on Flower: its released rounds, kept by the server.

Why: a training is a handful of rounds, each a SecAgg+ sum over every device — minutes to hours
in a deployment. A server that crashes after round 3 of 4 should not ask the devices for
rounds 1–3 again: that would cost them a second release of the same statistics (and ε the
model's guarantee would not show). Everything the server does between rounds is deterministic
post-processing of the decoded sums, so a restarted server that *replays* the recorded sums
reaches the same state and asks the devices for the next round only.

What is kept (``checkpoint-dir/dpals-run/``): ``run.json`` — the run's fingerprint (the
parameters, population and catalogue) and the seed of the data-independent initial item
factors (drawn from the CSPRNG when the run has no seed, so a replay starts from the same
factors) — and one ``round-NNN.npz`` per completed round: its decoded noisy sum and survivor
count (released outputs, already in the model's list of what it releases; no device data)
with a digest of the task and encoding it answered. A replayed round must have the same
digest as the round the resumed server is about to run — otherwise the checkpoint belongs to
another run or plan and is refused (:class:`~privrec.errors.ConfigError`).

Never under-count: before a round's secure sum starts, ``round-NNN.started`` is written; it
is removed when the round aborts before decoding (nothing was released: the retry is free) and
superseded by ``round-NNN.npz`` once decoded. A resumed run finding a round started but
neither aborted nor recorded refuses to go on: the server may have decoded that sum, and asking
the devices again would be a second release its guarantee does not count. Accounting: a
replayed round is the same release as the recorded one; the model charges it once, as in an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privrec.errors import ConfigError
from privrec.federated.dpals_devices import ARRAY_FIELDS, DeviceTask, SumResult
from privrec.models.persistence import atomic_output

if TYPE_CHECKING:
    from privrec.privacy.distributed import DistributedDPEncoder

__all__ = ["RoundStore", "task_digest"]


def task_digest(task: DeviceTask, enc: DistributedDPEncoder, n_min: int) -> str:
    """What a round asks of the devices, as a hash: the task, its arrays and the encoding."""
    h = hashlib.sha256()
    h.update(json.dumps(task.settings(), sort_keys=True, default=float).encode())
    for name in ARRAY_FIELDS:
        arr = getattr(task, name)
        h.update(name.encode())
        if arr is not None:
            a = np.ascontiguousarray(arr)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    h.update(enc.config.model_dump_json().encode())
    h.update(str(int(n_min)).encode())
    return h.hexdigest()


class RoundStore:
    """The recorded rounds of one federated DPALS run in ``folder`` (created if missing).

    Parameters
    ----------
    folder
        ``checkpoint-dir/dpals-run``.
    params
        The run's ``FederatedDPALS`` parameters (public), with the population and catalogue
        size they are trained for: together the run's fingerprint.
    resume
        Replay recorded rounds of the same run (``False``: an existing record is refused —
        a new run needs a new folder).
    """

    def __init__(self, folder: Path, params: dict[str, Any], *, resume: bool) -> None:
        self.folder = folder
        blob = json.dumps(params, sort_keys=True, default=str).encode()
        self.fingerprint = hashlib.sha256(blob).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        run = folder / "run.json"
        if run.exists():
            try:
                doc = json.loads(run.read_text(encoding="utf-8"))
                seed, fp = int(doc["init_seed"]), str(doc["fingerprint"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{str(run)!r} is not a federated DPALS run record: {exc}"
                ) from None
            if fp != self.fingerprint:
                raise ConfigError(
                    f"{str(folder)!r} holds the rounds of another federated DPALS run (other "
                    "parameters, population or catalogue): use a new checkpoint-dir"
                )
            if not resume:
                raise ConfigError(
                    f"{str(folder)!r} holds recorded rounds and resume is off: use a new "
                    "checkpoint-dir, or resume = true to continue that run"
                )
            self.init_seed = seed
        else:
            self.init_seed = secrets.randbits(62)
            with atomic_output(run) as tmp:
                tmp.write_text(
                    json.dumps({"fingerprint": self.fingerprint, "init_seed": self.init_seed}),
                    encoding="utf-8",
                )

    def _path(self, index: int, suffix: str) -> Path:
        return self.folder / f"round-{index:03d}.{suffix}"

    def replay(self, index: int, digest: str) -> SumResult | None:
        """Round ``index``'s recorded sum, or ``None`` if it has not run (see the module doc)."""
        done = self._path(index, "npz")
        if not done.exists():
            if self._path(index, "started").exists():
                raise ConfigError(
                    f"round {index} of this run was started and never recorded or aborted: the "
                    "server may have decoded it, and asking the devices again would be a second "
                    "release its guarantee does not count — start a new run"
                )
            return None
        try:
            with np.load(done, allow_pickle=False) as z:
                stored, decoded = str(z["digest"]), np.asarray(z["decoded"], dtype=np.float64)
                survivors = int(z["survivors"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{str(done)!r} is not a recorded round: {exc}") from None
        if stored != digest:
            raise ConfigError(
                f"round {index} recorded in {str(self.folder)!r} asked the devices something "
                "else than this run would now: the checkpoint belongs to another plan"
            )
        return SumResult(decoded, survivors, extra={"resumed": True})

    def start(self, index: int) -> None:
        """Mark round ``index`` as started (before any device is asked)."""
        self._path(index, "started").write_text("", encoding="utf-8")

    def aborted(self, index: int) -> None:
        """Round ``index`` aborted before decoding: nothing was released."""
        self._path(index, "started").unlink(missing_ok=True)

    def record(self, index: int, digest: str, result: SumResult) -> None:
        """Keep round ``index``'s decoded sum (before the server uses it)."""
        with atomic_output(self._path(index, "npz")) as tmp, tmp.open("wb") as fh:
            np.savez(
                fh,
                digest=np.asarray(digest),
                decoded=np.asarray(result.decoded, dtype=np.float64),
                survivors=np.asarray(int(result.survivors)),
            )
        self._path(index, "started").unlink(missing_ok=True)
