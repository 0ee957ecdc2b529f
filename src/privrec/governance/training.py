"""Training through the ledger: write-ahead charge, fit, atomic save, commit.

:func:`train` (also :meth:`Ledger.train <privrec.governance.Ledger.train>`) runs a private model
on :class:`~privrec.governance.records.GovernedData`:

1. the model calibrates its noise and announces its planned releases (``_plan``) — **before any
   noise is drawn** the ledger reserves their charge, or refuses (:class:`BudgetExceededError`)
   and the fit stops there;
2. the model fits, recording exactly the announced releases (checked);
3. the model file is written atomically (temporary name, then rename) — the release;
4. the charge is committed with the artifact's hash, kind, config, guarantee, privrec version and
   git commit, and the dataset version it was trained on.

A failure before step 1 leaves nothing behind; a failure after it keeps the charge (noise was
drawn), so the ledger may over-report but never under-reports.

:class:`ChargeSession` is the same protocol for trainings that are not a
:class:`~privrec.models.private.PrivateRecommender`: FederatedMF servers and cross-silo drivers
announce every event a complete run records (:func:`federated_events`, :func:`silo_events`),
the session reserves them before the first noisy release, and the computation's
``ledger_hook`` hands each release to :meth:`ChargeSession.cover` *before* it is applied: a
release the reservation holds is ticked off, any other is charged on top (budget-checked, or
refused with nothing of it applied). The charge is never lowered. Both reserve with
``accountant="rdp"``: their events are proven only in Rényi DP (see
:mod:`privrec.governance.composition`), so the ledger's ε for them is the RDP one — the same
number, at the same orders, as the model's own guarantee.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import dp_accounting

from privrec.errors import GovernanceError, PolicyViolation
from privrec.governance.composition import RDP_ONLY, event_key
from privrec.governance.records import ArtifactRecord, ChargeInfo, GovernedData, GovernedVersion
from privrec.privacy.events import SpentEvent

if TYPE_CHECKING:
    from privrec.governance.ledger import Ledger

__all__ = [
    "ChargeSession",
    "TrainingRecord",
    "artifact_info",
    "federated_events",
    "release_model",
    "signing_identity",
    "silo_events",
    "train",
    "train_from_cli",
]


@functools.cache
def git_commit() -> str | None:
    """The git commit of the privrec source tree, when it is a git checkout (else ``None``)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def artifact_info(
    path: str | Path,
    *,
    model_kind: str,
    config: dict[str, Any],
    guarantee: dict[str, Any],
    seeded_noise: bool,
    dataset_hash: str,
    signer: str | None = None,
) -> dict[str, Any]:
    """The artifact fields :meth:`Ledger.commit` records (hashes the file).

    ``signer`` is the fingerprint of the key that signed the file (:func:`signing_identity`);
    the file's own signature block must name the same key, so the ledger never records a signer
    the bytes it hashed do not carry.
    """
    from privrec import __version__
    from privrec.governance.ledger import file_sha256

    if signer is not None:
        from privrec.models.signing import read_signature

        claimed = read_signature(path)
        if claimed is None or claimed.fingerprint != signer:
            raise GovernanceError(
                f"the released file {str(path)!r} is not signed by {signer} "
                f"({'unsigned' if claimed is None else 'signed by ' + claimed.fingerprint}): "
                "nothing recorded"
            )
    return {
        "signer": signer,
        "file_hash": file_sha256(path),
        "path": str(Path(path).resolve()),
        "model_kind": model_kind,
        "config_json": json.dumps(config, sort_keys=True, default=str),
        "privrec_version": __version__,
        "git_commit": git_commit(),
        "guarantee_json": json.dumps(guarantee, sort_keys=True, default=str),
        "seeded_noise": bool(seeded_noise),
        "dataset_hash": dataset_hash,
    }


class ChargeSession:
    """One write-ahead charge around a computation that releases noisy output.

    Use as a context manager: call :meth:`reserve` with the planned events before drawing any
    noise, :meth:`released` once output has left the process (a file written, a message sent to
    clients), and :meth:`commit` at the end. Leaving the block with an exception after the
    reservation keeps the charge reserved, with a note: noise may have been drawn, so the ledger
    over-reports rather than under-reports. Only :meth:`Ledger.abort` releases a reservation, for a
    computation known to have stopped before drawing noise.

    A computation that announces each release (a ``ledger_hook``) passes :meth:`cover`: every
    release is checked against the reserved events *before* it is applied, and one the
    reservation does not hold (more rounds than planned, a weaker event) is charged on top —
    within the budgets, or refused. So the charges always hold at least every release made.
    """

    def __init__(
        self,
        ledger: Ledger,
        dataset: str,
        *,
        kind: str,
        purpose: str | None = None,
        description: str = "",
        data: GovernedData | GovernedVersion | None = None,
        accountant: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.dataset = dataset
        self.kind = kind
        self.purpose = purpose
        self.description = description
        self.data = data
        self.charge: ChargeInfo | None = None
        self.planned: list[SpentEvent] = []
        #: charges added by :meth:`cover` for releases the reservation did not hold
        self.top_ups: list[ChargeInfo] = []
        #: ``"rdp"`` when the events are proven only in RDP (:meth:`gate` reserves under it)
        self.accountant: str | None = accountant
        self._units: Counter[str] = Counter()
        self._released = False
        self._noise_drawn = False

    # -- protocol
    def reserve(self, planned: list[SpentEvent], *, accountant: str | None = None) -> ChargeInfo:
        """Reserve ``planned`` (``accountant="rdp"``: events proven only in RDP)."""
        if self.charge is not None:
            raise GovernanceError("this charge session already reserved its charge")
        self.charge = self.ledger.reserve(
            self.dataset,
            planned,
            purpose=self.purpose,
            kind=self.kind,
            description=self.description,
            data=self.data,
            accountant=accountant,
        )
        self.planned = list(planned)
        self.accountant = accountant
        for key, n in (_units(s.event) for s in planned):
            self._units[key] += n
        self._noise_drawn = True  # from here on the computation may draw noise
        return self.charge

    def cover(self, release: SpentEvent) -> None:
        """A ``ledger_hook``: ``release`` is about to be applied — make sure it is charged.

        Ticks it off the reserved events when they hold it (the same event, as many times);
        otherwise reserves it as an extra charge (:attr:`top_ups`), which raises
        :class:`~privrec.errors.BudgetExceededError` — stopping the computation before the
        release — when a budget cannot take it.
        """
        if self.charge is None:
            raise GovernanceError("a release before the charge was reserved (write-ahead violated)")
        key, n = _units(release.event)
        if self._units[key] >= n:
            self._units[key] -= n
            return
        top_up = self.ledger.reserve(
            self.dataset,
            [release],
            purpose=self.purpose,
            kind=self.kind,
            description=f"{self.description}: {release.label}, beyond the reservation"[:2000],
            data=self.data,
            accountant=self.accountant,
        )
        self.top_ups.append(top_up)
        if self._released:  # output already leaves under this session: so will this release's
            self.ledger.mark_released(top_up)

    def gate(self, planned: list[SpentEvent]) -> None:
        """A model's ``release_gate``: reserve the planned releases (raises to refuse), under
        the session's accountant (``"rdp"`` for a model whose events are proven only in RDP)."""
        self.reserve(planned, accountant=self.accountant)

    def released(self) -> None:
        """Noisy output is leaving (or has left) the process: from now on the charge — and every
        top-up — can only be committed.

        Recorded in the ledger (:meth:`Ledger.mark_released`), not only in this object: a
        process that fails before committing leaves the charge reserved, and the ledger then
        refuses to abort it — the privacy was spent. Call it *before* writing or sending the
        output, so a crash half-way cannot leave a released output under an abortable charge.
        """
        if self.charge is None:
            raise GovernanceError("released before the charge was reserved (write-ahead violated)")
        if self._released:  # already recorded; later top-ups are marked as cover adds them
            return
        self.ledger.mark_released([self.charge, *self.top_ups])
        self._released = True

    def commit(self, *, artifact: dict[str, Any] | None = None, result: Any = None) -> ChargeInfo:
        """Commit the charge (and any top-ups) with the artifact or result."""
        if self.charge is None:
            raise GovernanceError("nothing reserved to commit")
        self.charge = self.ledger.commit(self.charge, artifact=artifact, result=result)
        self.top_ups = [
            self.ledger.commit(c, note=f"top-up of charge {self.charge.id}") for c in self.top_ups
        ]
        return self.charge

    def __enter__(self) -> ChargeSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or self.charge is None or self.charge.status != "reserved":
            return
        with contextlib.suppress(Exception):  # the original error matters more
            for charge in [self.charge, *self.top_ups]:
                self.ledger.note(
                    charge,
                    f"kept after a failure ({type(exc).__name__}): noise may have been drawn"
                    + ("; output was released" if self._released else ""),
                )


def model_accountant(model: Any) -> str | None:
    """``"rdp"`` for a model whose events are proven only in Rényi DP (its
    ``rdp_only_events``; e.g. distributed discrete-Gaussian rounds), else ``None`` (any)."""
    return RDP_ONLY if getattr(model, "rdp_only_events", False) else None


def _units(event: dp_accounting.DpEvent) -> tuple[str, int]:
    """``(key, count)``: a self-composed event is ``count`` releases of its inner event."""
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return event_key(event.event), int(event.count)
    return event_key(event), 1


@dataclass(frozen=True)
class TrainingRecord:
    """What :func:`train` returns: the fitted model, the file, its committed charge and artifact."""

    model: Any
    path: Path
    charge: ChargeInfo
    artifact: ArtifactRecord


def signing_identity(signing_key: Any) -> tuple[Any, str | None]:
    """``(private key, its fingerprint)`` — the key read once (a missing or group-readable key
    file fails here, before any noise is drawn) — or ``(None, None)`` without a key."""
    if signing_key is None:
        return None, None
    from privrec.models.signing import fingerprint, load_signing_key

    key = load_signing_key(signing_key)
    return key, fingerprint(key)


def _atomic_save(
    model: Any,
    output: Path,
    include_user_data: bool | None,
    signing_key: Any = None,
    claim: OutputClaim | None = None,
) -> Path:
    """``model.save`` — itself all or nothing (written beside the target, then renamed) and,
    with ``signing_key``, signed before the ledger records its hash. With a ``claim`` (a
    governed release), the file is written beside the target and put in place only if the
    target is still as it was when training began: created exclusively if there was none,
    refused if one appeared or changed meanwhile (the charge is kept: noise was drawn)."""
    signed = {} if signing_key is None else {"signing_key": signing_key}
    if claim is None:
        path: Path = model.save(output, include_user_data=include_user_data, **signed)
        return path
    target = claim.path
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.release.npz")
    raced = PolicyViolation(
        f"{target} appeared or changed while this model trained (another release to the same "
        "path?): not replaced — the charge is kept; train again to another path"
    )
    try:
        written: Path = model.save(tmp, include_user_data=include_user_data, **signed)
        if claim.before is None:
            try:
                os.link(written, target)  # exclusive: fails if anything is there now
            except FileExistsError:
                raise raced from None
        else:
            if _stat(target) != claim.before:
                raise raced
            os.replace(written, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def release_model(
    session: ChargeSession,
    model: Any,
    output: str | Path,
    *,
    config: dict[str, Any],
    dataset_hash: str,
    signing_key: Any = None,
    claim: OutputClaim | None = None,
) -> tuple[Path, ChargeInfo]:
    """Save a fitted private ``model`` atomically (the release; signed with ``signing_key``),
    then commit ``session`` with the artifact. For computations run through a
    :class:`ChargeSession` (FederatedMF, cross-silo); :func:`train` does the same for central
    models."""
    key, signer = signing_identity(signing_key)
    # the commit refuses an artifact naming other data than the charge's version: checked here
    # too, before anything is released (a refusal after the save left an unrecorded model
    # file and a charge that could no longer be aborted)
    expected = "" if session.data is None else session.data.content_hash
    if dataset_hash != expected:
        raise GovernanceError(
            f"dataset_hash {dataset_hash[:16] or '(none)'}… is not the hash of the data this "
            f"session was reserved for ({expected[:16] or 'no checked version'}): nothing released"
        )
    session.released()  # recorded before the file can exist (see ChargeSession.released)
    path = _atomic_save(model, Path(output), None, key, claim)
    g = model.guarantee_
    art = artifact_info(
        path,
        model_kind=model.name,
        config=config,
        guarantee=g.model_dump(mode="json"),
        seeded_noise=g.seeded_noise,
        dataset_hash=dataset_hash,
        signer=signer,
    )
    return path, session.commit(artifact=art)


@dataclass(frozen=True)
class OutputClaim:
    """Where a governed release will be written, and what was there when training began
    (``(inode, size, mtime_ns)``, ``None`` if nothing): the release refuses to replace a file
    that appeared or changed meanwhile — another release racing for the same path."""

    path: Path
    before: tuple[int, int, int] | None


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def refuse_recorded_output(ledger: Ledger, output: Path) -> OutputClaim:
    """Refuse to write over a file the ledger records as an artifact: its record (hash, lineage,
    charges) would then describe bytes that no longer exist. The path is the one the model
    file will have (``.npz`` appended as ``save`` does). Returns the claim :func:`_atomic_save`
    checks again at release time."""
    import sqlalchemy as sa

    from privrec.governance import schema as tbl
    from privrec.governance.db import read_transaction
    from privrec.governance.reading import file_sha256
    from privrec.models.persistence import npz_path

    out = npz_path(output)
    claim = OutputClaim(out, _stat(out))
    if claim.before is None:
        return claim
    digest = file_sha256(out)
    with read_transaction(ledger.engine) as conn:
        aid = conn.execute(
            sa.select(tbl.Artifact.id).where(tbl.Artifact.file_hash == digest).limit(1)
        ).scalar_one_or_none()
    if aid is not None:
        raise PolicyViolation(
            f"{out} is the released file of artifact {aid}: write the new model to another "
            "path (the ledger's record of that release must keep describing its bytes)"
        )
    return claim


def train(
    ledger: Ledger,
    model: Any,
    data: GovernedData,
    *,
    output: str | Path,
    purpose: str | None = None,
    include_user_data: bool | None = None,
    fit: Callable[[Any, Any], Any] | None = None,
    signing_key: Any = None,
    **fit_kwargs: Any,
) -> TrainingRecord:
    """Fit a private ``model`` on governed ``data`` through a write-ahead charge, save and record it.

    Refuses (one-line typed errors, nothing written): data that did not come from
    :meth:`Ledger.load`, data loaded before a later deletion/consent/policy change, a
    non-private model, a model whose privacy unit is not the dataset's, and a charge that would
    exceed a budget (:class:`~privrec.errors.BudgetExceededError`, raised before any noise).
    """
    from privrec.governance.policy import content_hash
    from privrec.models.private import PrivateRecommender

    if not isinstance(data, GovernedData):
        raise PolicyViolation(
            "training through the ledger needs data from ledger.load(dataset, …): this data did not "
            "pass through the dataset's policy"
        )
    if not isinstance(model, PrivateRecommender):
        raise PolicyViolation(
            f"{getattr(model, 'name', type(model).__name__)} is not differentially private: the "
            "ledger only records releases whose privacy loss it can account for"
        )
    if include_user_data:
        raise PolicyViolation(
            "a governed release holds only what its guarantee covers: include_user_data would "
            "store the training users and interactions beside the model, which no ε bounds"
        )
    claim = refuse_recorded_output(ledger, Path(output))
    cfg = model.config()
    unit = str(getattr(cfg, "unit", ""))
    info = ledger.dataset(data.dataset)
    if unit != info.unit:
        raise PolicyViolation(
            f"dataset {data.dataset!r} is governed at the {info.unit} level; the model uses unit={unit!r}"
        )
    if content_hash(data.interactions) != data.content_hash:
        raise PolicyViolation("the data changed after ledger.load; load it again")
    eps = getattr(cfg, "epsilon", None)
    key, signer = signing_identity(signing_key)  # before the charge: a bad key spends nothing
    session = ChargeSession(
        ledger,
        data.dataset,
        kind="training",
        purpose=purpose,
        description=f"{model.name} (ε={eps:g}, δ={getattr(cfg, 'delta', 0):g})"
        if eps is not None
        else model.name,
        data=data,
        accountant=model_accountant(model),
    )
    with session:
        model.release_gate = session.gate
        try:
            if fit is not None:  # e.g. the CLI's progress bar
                fit(model, data.interactions)
            else:
                model.fit(data.interactions, **fit_kwargs)
        finally:
            model.release_gate = None
        spent = model.guarantee_.spent_events
        if session.charge is None:  # a model without the _plan hook: still before any release
            session.reserve(spent, accountant=session.accountant)
        elif [s.to_dict() for s in spent] != [s.to_dict() for s in session.planned]:
            raise GovernanceError(f"{model.name} released other events than it reserved")
        session.released()  # recorded before the file can exist (see ChargeSession.released)
        path = _atomic_save(model, claim.path, include_user_data, key, claim)
        art = artifact_info(
            path,
            model_kind=model.name,
            config=cfg.model_dump(mode="json"),
            guarantee=model.guarantee_.model_dump(mode="json"),
            seeded_noise=model.guarantee_.seeded_noise,
            dataset_hash=data.content_hash,
            signer=signer,
        )
        charge = session.commit(artifact=art)
    assert charge.artifact_id is not None
    return TrainingRecord(model, path, charge, ledger.artifact(charge.artifact_id))


def federated_events(server: Any, *, remaining: bool = False) -> list[SpentEvent]:
    """What a :class:`ChargeSession` reserves before round 1 of a calibrated
    :class:`~privrec.federated.mf.FederatedMFServer`: exactly the events a complete run
    records (private head selection, then every round at the event each completed round is
    charged — with distributed DP its worst case, the fewest honest noise shares a round may
    complete with). ``remaining=True``: only those still to come (a resumed run). Reserve them
    with ``accountant="rdp"`` when ``server.config.aggregation == "distributed"`` (or use
    :func:`federated_session`)."""
    return list(server.planned_events(remaining=remaining))


def federated_session(
    ledger: Ledger,
    dataset: str,
    server: Any,
    *,
    data: GovernedData | None = None,
    purpose: str | None = None,
    remaining: bool = False,
) -> ChargeSession:
    """Reserve a FederatedMF run's events and hook the server's releases to the charge.

    Returns the open session (use it as a context manager around the run; commit at the end).
    Raises :class:`~privrec.errors.BudgetExceededError` before round 1 when a budget cannot take
    the run.
    """
    c = server.config
    what = f"ε={c.epsilon:g}" if c.epsilon is not None else f"z={c.noise_multiplier:g}"
    session = ChargeSession(
        ledger,
        dataset,
        kind="federated",
        purpose=purpose,
        description=f"FederatedMF, {c.aggregation} DP, {c.rounds} rounds ({what}, δ={c.delta:g})",
        data=data,
    )
    session.reserve(
        federated_events(server, remaining=remaining),
        accountant=RDP_ONLY if c.aggregation == "distributed" else None,
    )

    def cover(release: SpentEvent) -> None:
        # the hook runs when the server already holds the noisy sum (the counting round's noisy
        # counts, a round's noisy update: the devices drew the noise, or the server did) and is
        # about to apply it: once the release is charged, the charge can no longer be aborted —
        # even if the run dies before the noisy counts or factors reach a device (until
        # 2026-12-07 only from the second release on: a run dying between the counting round
        # and round 1 left a charge that an owner could abort although its counts were drawn)
        session.cover(release)
        session.released()

    server.ledger_hook = cover
    return session


def silo_events(driver: Any, *, remaining: bool = True) -> list[SpentEvent]:
    """The events a cross-silo :class:`~privrec.secure.silo_driver.Driver` (or
    ``EASEDriver``) records over a complete run — after :meth:`prepare`, by default only
    those not yet journalled (a resumed run). Reserve them with ``accountant="rdp"``."""
    return list(driver.planned_events(remaining=remaining))


def train_from_cli(
    model: Any,
    data: Any,
    *,
    url: str | None,
    api_key: str | None,
    dataset: str,
    purpose: str | None,
    output: Path,
    include_user_data: bool | None,
    fit: Callable[[Any, Any], Any] | None = None,
    signing_key: Any = None,
) -> tuple[TrainingRecord, Any]:
    """``privrec train … --dataset NAME``: connect, load through the policy, train; returns the
    record and the dataset budget's status after the charge."""
    from privrec.governance.ledger import Ledger

    ledger = Ledger.connect(url, api_key)
    governed = ledger.load(dataset, data)
    rec = train(
        ledger,
        model,
        governed,
        output=output,
        purpose=purpose,
        include_user_data=include_user_data,
        fit=fit,
        signing_key=signing_key,
    )
    (status,) = [s for s in ledger.status(dataset) if s.scope == "dataset"]
    return rec, status
