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

Never under-count: before a round's unmask phase — the first moment the server could decode its
sum — ``round-NNN.started`` is created (exclusively, never through a link) and ``start NNN`` is
appended to the ``journal`` (fsynced, as is every file here: a power loss cannot lose a mark the
devices acted on); a round aborted before that phase is journalled ``abort`` (nothing was
released: the retry is free), a decoded one is written to ``round-NNN.npz`` (never replacing
one) and journalled ``record``. An abort *after* the unmask request went out is not free — the
replies the server holds may decode that attempt — so the coordinator does not retry it and the
round stays marked. A server killed earlier in a round (key advertisement, shares,
masked inputs) leaves no marker: it could not have decoded anything, so the resumed run asks
again at no cost. A resumed run finding a round started but neither aborted nor recorded
refuses to go on: the server may have decoded that sum, and asking the devices again would be a
second release its guarantee does not count. Nor does it run a round the journal says was
recorded whose file is gone, or while a *later* round is on record (a lost or deleted file: the
hole would be asked for twice). One server at a time:
the run holds an exclusive lock on ``dpals-run/.lock`` from start to end, and a second server
pointed at the same folder is refused — two servers on one record would each ask the devices
for the same round. As a second line, a round is not started if its lock file was removed or
replaced, or if it or a later round appeared on record meanwhile. Local file systems only:
``flock`` is not shared across hosts on NFS (``nolock``), sshfs or CIFS. Accounting: a replayed round is the same release as the recorded one; the
model charges it once, as in an uninterrupted run. A new run (a new folder) after a refused
resume releases every round again: its ε composes with the first run's.

Every file is read as hostile: ``run.json`` must be a small object with a 64-hex fingerprint and
an integer seed in [0, 2⁶²); a round file must hold exactly the three arrays, a finite float
sum of the expected length and a non-negative integer survivor count, and its members' sizes are
checked before anything is decompressed (:class:`~privrec.errors.ConfigError` otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privrec.errors import ConfigError
from privrec.federated.dpals_devices import ARRAY_FIELDS, DeviceTask, SumResult
from privrec.federated.flower.run_lock import RunLock
from privrec.models.persistence import atomic_output, sync_folder

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
        self._lock = RunLock(folder)
        try:
            self.init_seed = self._open_run(folder / "run.json", resume)
        except BaseException:
            self.close()
            raise

    def _open_run(self, run: Path, resume: bool) -> int:
        """The run's initial-factor seed: read from ``run.json``, else drawn and written."""
        if not os.path.lexists(run):
            if self._indices() or os.path.lexists(self.folder / _JOURNAL):
                raise ConfigError(
                    f"{str(run)!r} is missing but the folder holds rounds of a run: restore it, "
                    "or start a new run in a new checkpoint-dir (its ε composes with that run's)"
                )
            fresh = secrets.randbits(62)
            with atomic_output(run) as tmp:
                tmp.write_text(
                    json.dumps({"fingerprint": self.fingerprint, "init_seed": fresh}),
                    encoding="utf-8",
                )
            return fresh
        try:
            doc = json.loads(_read_small(run, _RUN_BYTES).decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            seed: Any = doc.get("init_seed")
            fp: Any = doc.get("fingerprint")
            if type(seed) is not int or not 0 <= seed < 2**62:
                raise ValueError("init_seed must be an integer in [0, 2^62)")
            if not isinstance(fp, str) or not _HEX64.fullmatch(fp):
                raise ValueError("fingerprint must be 64 hexadecimal digits")
        except (OSError, ValueError, RecursionError) as exc:
            raise ConfigError(f"{str(run)!r} is not a federated DPALS run record: {exc}") from None
        if fp != self.fingerprint:
            raise ConfigError(
                f"{str(self.folder)!r} holds the rounds of another federated DPALS run (other "
                "parameters, population or catalogue): use a new checkpoint-dir — if that run's "
                "devices are yours too, the new run's ε composes with the rounds it released"
            )
        if not resume:
            raise ConfigError(
                f"{str(self.folder)!r} holds recorded rounds and resume is off: resume = true "
                "continues that run; a new checkpoint-dir starts another, whose ε composes with "
                "the rounds this one already released"
            )
        return seed

    def close(self) -> None:
        """Release the run folder's lock (another server may then resume the run)."""
        self._lock.close()

    def _path(self, index: int, suffix: str) -> Path:
        return self.folder / f"round-{index:03d}.{suffix}"

    def replay(self, index: int, digest: str, dim: int) -> SumResult | None:
        """Round ``index``'s recorded sum (``dim`` long), or ``None`` if it has not run.

        Refuses (see the module doc) a round started and never recorded or aborted, a round the
        journal says was recorded whose file is gone, a round not recorded while a later one
        is, and a round file that is not exactly what :meth:`record` writes.
        """
        done = self._path(index, "npz")
        journal = self._journal()
        if not os.path.lexists(done):
            if os.path.lexists(self._path(index, "started")) or journal.get(index) == "start":
                raise ConfigError(
                    f"round {index} of this run was started and never recorded or aborted: the "
                    "server may have decoded it, and asking the devices again would be a second "
                    "release its guarantee does not count — a new run (a new checkpoint-dir) "
                    "releases every round again, and its ε composes with this run's"
                )
            if journal.get(index) == "record":
                raise ConfigError(
                    f"round {index} was recorded and round-{index:03d}.npz is gone: asking the "
                    "devices for it again would release it a second time — restore the file, "
                    "or start a new run (its ε composes with this run's)"
                )
            later = [m for m in self._indices() if m > index]
            later += [m for m, state in journal.items() if m > index and state != "abort"]
            if later:
                raise ConfigError(
                    f"round {index} is not on record but round {min(later)} is (a lost or "
                    "deleted file): asking the devices for it again would release it a second "
                    f"time — restore round-{index:03d}.npz, or start a new run (its ε composes "
                    "with this run's)"
                )
            return None
        try:
            if done.is_symlink():
                raise ValueError("a link")
            stored, decoded, survivors = _read_round(done, dim)
        except (OSError, ValueError, KeyError, TypeError, EOFError, OverflowError,
                zipfile.BadZipFile) as exc:  # fmt: skip
            raise ConfigError(
                f"{str(done)!r} is not a recorded round ({exc}): do not delete it — asking the "
                "devices for that round again would release it a second time; restore it from "
                "a copy, or start a new run (its ε composes with this run's)"
            ) from None
        if stored != digest:
            raise ConfigError(
                f"round {index} recorded in {str(self.folder)!r} asked the devices something "
                "else than this run would now: the checkpoint belongs to another plan"
            )
        return SumResult(decoded, survivors, extra={"resumed": True})

    def _indices(self) -> list[int]:
        """The round numbers with a file (recorded or started) in the folder."""
        out = []
        for name in os.listdir(self.folder):
            m = _ROUND_FILE.fullmatch(name)
            if m is not None:
                out.append(int(m.group(1)))
        return out

    def _journal(self) -> dict[int, str]:
        """Each round's last state in the append-only ``journal`` (start, abort, record)."""
        path = self.folder / _JOURNAL
        if not os.path.lexists(path):
            if self._indices():
                raise ConfigError(
                    f"{str(path)!r} is missing but the folder holds rounds: without it a lost "
                    "round file cannot be told from a round never run — restore it, or start a "
                    "new run in a new checkpoint-dir (its ε composes with this run's)"
                )
            return {}
        try:
            text = _read_small(path, _JOURNAL_BYTES).decode("ascii")
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{str(path)!r} is not a round journal ({exc}): do not delete it — restore it, "
                "or start a new run in a new checkpoint-dir (its ε composes with this run's)"
            ) from None
        out: dict[int, str] = {}
        for line in text.split("\n")[:-1]:  # a torn last line was never acted on
            m = _JOURNAL_LINE.fullmatch(line)
            if m is None:
                raise ConfigError(
                    f"{str(path)!r} is not a round journal (line {line[:40]!r}): do not delete "
                    "it — restore it, or start a new run (its ε composes with this run's)"
                )
            index, state = int(m.group(2)), m.group(1)
            # a start is only ever followed by its record: neither is undone by a later line
            if _RANK[state] >= _RANK.get(out.get(index, ""), -1):
                out[index] = state
        return out

    def _note(self, state: str, index: int) -> None:
        """Append ``state index`` to the journal and make it durable (fsync file and folder)."""
        path = self.folder / _JOURNAL
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        line = f"{state} {index}\n".encode("ascii")
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot write the round journal {str(path)!r}: {exc}") from None
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(line):
                done += os.write(fd, line[done:])
            os.fsync(fd)
            sync_folder(self.folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no torn line left behind
            raise ConfigError(f"cannot write the round journal {str(path)!r}: {exc}") from None
        finally:
            os.close(fd)

    def start(self, index: int) -> None:
        """Mark round ``index`` as started (before its unmask phase: from then on the server
        could decode it). Created exclusively, never through a link, and durable before the
        devices are asked; refused if the round or a later one is already on record."""
        self._lock.check()
        path = self._path(index, "started")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            os.close(os.open(path, flags, 0o600))
        except FileExistsError:
            raise ConfigError(
                f"{str(path)!r} already exists: another server is running this round, or the "
                "folder was changed under this one"
            ) from None
        try:
            if any(m > index for m in self._indices()) or os.path.lexists(self._path(index, "npz")):
                raise ConfigError(
                    f"round {index} or a later one was recorded while this server ran it: "
                    "another server is running this record — stopping before asking the devices"
                )
            self._note("start", index)
        except BaseException:
            path.unlink(missing_ok=True)  # the devices were not asked: no mark may stay
            raise

    def aborted(self, index: int) -> None:
        """Round ``index`` aborted before its unmask phase: nothing was released."""
        self._note("abort", index)
        self._path(index, "started").unlink(missing_ok=True)

    def record(self, index: int, digest: str, result: SumResult) -> None:
        """Keep round ``index``'s decoded sum, durably (before the server uses it); never
        replaces a recorded round."""
        final = self._path(index, "npz")
        tmp = self.folder / f".round-{index:03d}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            with os.fdopen(os.open(tmp, flags, 0o600), "wb") as fh:
                np.savez(
                    fh,
                    digest=np.asarray(digest),
                    decoded=np.asarray(result.decoded, dtype=np.float64),
                    survivors=np.asarray(int(result.survivors)),
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, final)  # fails if the round is already recorded: never replaced
        except FileExistsError:
            raise ConfigError(
                f"{str(final)!r} already exists: another server recorded this round"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        sync_folder(self.folder)
        self._note("record", index)
        self._path(index, "started").unlink(missing_ok=True)


#: largest ``run.json`` accepted (ours is about 120 bytes)
_RUN_BYTES = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ROUND_FILE = re.compile(r"round-(\d{3,9})\.(?:npz|started)")
#: the append-only record of each round's state, and its largest accepted size
_JOURNAL = "journal"
_JOURNAL_BYTES = 1 << 20
_JOURNAL_LINE = re.compile(r"(start|abort|record) (\d{1,9})")
#: a round's state is the strongest line about it (an abort never undoes a start)
_RANK = {"abort": 0, "start": 1, "record": 2}
#: the members :meth:`RoundStore.record` writes
_MEMBERS = frozenset({"digest.npy", "decoded.npy", "survivors.npy"})


def _read_small(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path`` (never through a link); larger files are refused."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with contextlib.closing(os.fdopen(fd, "rb")) as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return raw


def _read_round(path: Path, dim: int) -> tuple[str, np.ndarray, int]:
    """Digest, decoded sum and survivor count of a round file, each checked before use."""
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        if set(infos) != _MEMBERS:
            raise ValueError(f"members {sorted(infos)}, expected {sorted(_MEMBERS)}")
        # a float64 vector of dim entries, a short string and a scalar, each with its header
        limits = {"decoded.npy": 8 * dim + 1024, "digest.npy": 4096, "survivors.npy": 1024}
        for name, limit in limits.items():
            if infos[name].file_size > limit:
                raise ValueError(f"{name} is larger than a recorded round's")
    with np.load(path, allow_pickle=False) as z:
        digest, decoded, survivors = z["digest"], z["decoded"], z["survivors"]
    if digest.dtype.kind != "U" or digest.ndim != 0:
        raise ValueError("the digest is not a string")
    if decoded.dtype != np.float64 or decoded.shape != (dim,):
        raise ValueError(f"the sum is {decoded.dtype} {decoded.shape}, expected float64 ({dim},)")
    if not np.all(np.isfinite(decoded)):
        raise ValueError("the sum has non-finite entries")
    if survivors.dtype.kind not in "iu" or survivors.ndim != 0 or int(survivors) < 0:
        raise ValueError("the survivor count is not a non-negative integer")
    return str(digest), np.array(decoded), int(survivors)
