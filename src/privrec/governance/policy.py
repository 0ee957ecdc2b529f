"""Data-use policy: purpose, columns, retention, consent, minimisation, unit and budget — applied once.

A policy is a TOML file validated by pydantic (unknown keys are errors)::

    purpose = "weekly recommendations"
    unit = "user"                       # the privacy unit every training on this dataset uses
    columns = ["user", "item", "timestamp"]   # "value" absent: ratings are dropped (binarised)
    retention_days = 365                # interactions older than this are dropped
    max_interactions_per_user = 200     # minimisation: the most recent 200 per user are kept

    [consent]
    required = true
    source = "ledger"                   # imported with `privrec consent import`, or a CSV path

    [budget]                            # the dataset's lifetime (or per-period) cap
    epsilon = 8.0
    delta = 1e-6
    # period_days = 30

    [deletion]
    retrain_within_days = 30            # models trained before a deletion must be retrained

:func:`apply_policy` is the **one** place a policy touches data. It returns the filtered
interactions and a :class:`PolicyReport` of what was dropped and why — counts only, never ids.
Steps run in a fixed order: deletion requests, consent, retention, minimisation, empty users,
columns. The report's exact counts are an internal record for the data controller and the
auditor (they are not differentially private and must not be published).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import (
    DataError,
    LedgerSchemaError,
    PolicyError,
    PolicyViolation,
    StaleDataError,
)
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "BudgetRule",
    "ConsentRule",
    "Policy",
    "PolicyReport",
    "PolicyStep",
    "apply_policy",
    "check_retention",
    "load_policy",
    "read_consents",
]

Column = Literal["user", "item", "value", "timestamp"]


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class ConsentRule(_Strict):
    required: bool = False
    #: ``"ledger"`` (records imported with ``privrec consent import``) or a CSV file of consents
    source: str = "ledger"


class BudgetRule(_Strict):
    # strict: `epsilon = true` or `epsilon = "1"` in a policy file is a mistake, not 1.0
    epsilon: float = pydantic.Field(gt=0, allow_inf_nan=False, strict=True)
    delta: float = pydantic.Field(gt=0, lt=1, strict=True)
    period_days: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    accountant: Literal["pld", "rdp"] = "pld"


class DeletionRule(_Strict):
    #: after a deletion request, models trained on data that held the person must be retrained
    #: within this many days (``None``: no retrain required — DP already bounds what they reveal)
    retrain_within_days: float | None = pydantic.Field(default=None, ge=0, allow_inf_nan=False)


class Policy(_Strict):
    """A dataset's data-use policy (see the module docstring for the TOML form)."""

    purpose: str = pydantic.Field(min_length=1, max_length=128)
    unit: PrivacyUnit
    columns: tuple[Column, ...] = ("user", "item")
    retention_days: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    max_interactions_per_user: int | None = pydantic.Field(default=None, ge=1)
    consent: ConsentRule = ConsentRule()
    budget: BudgetRule
    deletion: DeletionRule = DeletionRule()

    @pydantic.field_validator("columns")
    @classmethod
    def _needs_user_item(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        missing = [c for c in ("user", "item") if c not in v]
        if missing:
            raise ValueError(f"columns must include 'user' and 'item' (missing {missing[0]!r})")
        if len(set(v)) != len(v):
            raise ValueError("columns are listed twice")
        return v

    @pydantic.model_validator(mode="after")
    def _cap_needs_the_user_unit(self) -> Policy:
        if self.max_interactions_per_user is not None and self.unit is PrivacyUnit.INTERACTION:
            raise ValueError(
                "max_interactions_per_user needs unit = 'user': under the interaction unit, "
                "removing one interaction of a capped user lets another of theirs in, so "
                "neighbouring datasets would differ in two interactions and every sensitivity "
                "stated for one would be too small"
            )
        return self

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """A policy as the ledger stores it (canonical JSON).

        A stored policy that does not validate is a damaged or edited ledger, reported as
        :class:`~privrec.errors.LedgerSchemaError` rather than pydantic's multi-line error.
        """
        try:
            return cls.model_validate_json(text)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise LedgerSchemaError(
                f"a policy stored in the ledger is not valid ({where}: {err['msg']}): the "
                "database was damaged or edited; set the policy again or restore a backup"
            ) from None


#: Key of the minimisation order's hash (public: the order only has to ignore other users)
_PAIR_KEY = b"privrec minimisation order v1"


def _id_hashes(ids: np.ndarray) -> np.ndarray:
    """A 64-bit keyed BLAKE2b hash of every id's text, as uint64."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(x).encode(), digest_size=8, key=_PAIR_KEY).digest())
            for x in np.asarray(ids).tolist()
        ),
        dtype=np.uint64,
        count=len(ids),
    )


def _pair_hashes(
    user_ids: np.ndarray, item_ids: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """A pseudo-random uint64 per interaction that depends only on its (user id, item id).

    The two ids' keyed hashes (one Python call per user and per item, not per interaction)
    are combined and finalised with splitmix64's mixer, vectorised (uint64 arithmetic wraps).
    """
    hu, hi = _id_hashes(user_ids), _id_hashes(item_ids)
    with np.errstate(over="ignore"):
        z = hu[rows] ^ (hi[cols] * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def _policy_error(where: str, exc: pydantic.ValidationError) -> PolicyError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "missing":
        return PolicyError(f"policy {where}: missing required field {field!r}")
    if err["type"] == "extra_forbidden":
        return PolicyError(f"policy {where}: unknown field {field!r}")
    msg = err["msg"].removeprefix("Value error, ")
    return PolicyError(f"policy {where}: field {field!r}: {msg} (found {err.get('input')!r})")


def load_policy(path: str | Path) -> Policy:
    """Read and validate a TOML policy; every problem is one :class:`PolicyError` line.

    A ``[budget]`` cap that weakens privacy (ε above 10, δ at or above 0.01) warns
    (:class:`~privrec.errors.PrivacyWarning`); an invalid one (ε ≤ 0, non-finite, δ outside
    (0, 1)) is a :class:`PolicyError`.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy file {str(path)!r} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy file {str(path)!r} is not valid TOML: {exc}") from None
    policy = policy_from_dict(raw, where=repr(str(path)))
    from privrec.privacy.budget import warn_weak_budget

    # the file sets the dataset's cap: a weak one warns here, by the rule training uses
    b = policy.budget
    warn_weak_budget(b.epsilon, b.delta, what=f"policy {str(path)!r}: budget cap: ")
    return policy


def policy_from_dict(raw: dict[str, Any], where: str = "(dict)") -> Policy:
    try:
        return Policy.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise _policy_error(where, exc) from None


class PolicyStep(_Strict):
    """One filtering step: why, and how many users / interactions it removed (counts only)."""

    step: str
    reason: str
    users_dropped: int
    interactions_dropped: int


class PolicyReport(_Strict):
    """What :func:`apply_policy` kept and dropped, counts only (no ids, no per-user numbers)."""

    policy_hash: str
    users_in: int
    interactions_in: int
    users_out: int
    interactions_out: int
    steps: tuple[PolicyStep, ...]
    columns_dropped: tuple[str, ...]
    #: SHA-256 of the consent file the load read (a policy whose consents live in a file): a
    #: charge on this version is refused once the file changed (e.g. someone withdrew)
    consent_file_sha256: str | None = None
    #: under ``retention_days``: the timestamp of the oldest interaction kept (``None`` when
    #: none was). Retention is applied at load (with :func:`retention_grace` to spare); a
    #: charge on this version is refused once the window has passed this interaction, so a
    #: version cannot outlive the policy's retention
    oldest_kept_timestamp: float | None = None

    def step(self, name: str) -> PolicyStep:
        for s in self.steps:
            if s.step == name:
                return s
        raise KeyError(name)


_TRUE = {"1", "true", "yes", "y", "granted", "given", "opt-in", "optin"}
_FALSE = {"0", "false", "no", "n", "revoked", "withdrawn", "denied", "opt-out", "optout"}


def consent_file_digest(path: str | Path) -> str:
    """SHA-256 of a consent file's bytes (what a loaded version records).

    An unreadable file is a :class:`~privrec.errors.DataError` naming the file (its name, not
    its directory: the message reaches analysts), as :func:`read_consents` reports a missing
    one — the server's configuration, not the caller's request.
    """
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise DataError(f"consent file cannot be read ({why})", file=Path(path).name) from None


def read_consents(path: str | Path) -> list[tuple[str, bool]]:
    """Consent records from a CSV with columns ``user`` and ``consent`` (true/false, granted/revoked…).

    Later lines win over earlier ones for the same user. Problems name the file (its name, not
    its directory) and the line, never what the line holds (a person's id): the messages reach
    analysts, through a load or a charge.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DataError("consent file not found", file=name)
    out: list[tuple[str, bool]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if "user" not in header or "consent" not in header:
                raise DataError(
                    "missing column",
                    file=name,
                    line=1,
                    expected="a header with 'user' and 'consent'",
                )
            iu, ic = header.index("user"), header.index("consent")
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(iu, ic) or not row[iu].strip():
                    raise DataError("missing field", file=name, line=lineno, field="user")
                flag = row[ic].strip().lower()
                if flag not in _TRUE | _FALSE:
                    raise DataError(
                        "unreadable consent value",
                        file=name,
                        line=lineno,
                        field="consent",
                        expected="true/false (or granted/revoked)",
                    )
                out.append((row[iu].strip(), flag in _TRUE))
    except UnicodeDecodeError:
        raise DataError("consent file is not UTF-8 text", file=name) from None
    return out


#: How far after the load a timestamp may lie (clocks differ) before the data are refused.
FUTURE_SLACK = 86400.0


def retention_grace(retention_days: float) -> float:
    """Seconds a load under ``retention_days`` drops beyond the window: 1 % of it, at most an hour.

    Why: retention is applied at load, and a version is refused (stale) once the window passes
    its oldest kept interaction. Cut exactly at the window, data with a steady stream of
    timestamps would have an interaction expire seconds after every load, so every charge would
    be refused and reload. Dropping slightly more than the policy asks (privacy-conservative)
    keeps a version valid for at least this long.
    """
    return min(3600.0, 0.01 * retention_days * 86400.0)


def check_retention(name: str, retention_days: float, report: dict[str, Any], now: float) -> None:
    """Refuse (:class:`~privrec.errors.StaleDataError`) a version holding an interaction the
    retention window has since passed — for a charge on a loaded version and for a version
    registered from a cluster's workers alike.

    Retention is applied when data is loaded; a version stays usable only while its oldest kept
    interaction (``report["oldest_kept_timestamp"]``, a :class:`PolicyReport` as JSON) is within
    the window. A version recorded before that field existed cannot show it is within the
    window, so it is refused too (reloading once records it): refusing costs a reload,
    accepting could train on interactions the policy says are gone.
    """
    if "oldest_kept_timestamp" not in report:
        raise StaleDataError(
            f"this version of dataset {name!r} was loaded by a privrec that did not record "
            "its oldest interaction, so its retention window cannot be checked: load it "
            "again so retention applies"
        )
    oldest = report["oldest_kept_timestamp"]
    if oldest is None and not report.get("interactions_out"):
        return  # the load kept nothing
    # written so that a NaN, a missing value (NaN is stored as null) or text is stale too:
    # `NaN < cutoff` is False, and such a version would never expire
    if not (
        isinstance(oldest, int | float)
        and not isinstance(oldest, bool)
        and oldest >= now - retention_days * 86400.0
    ):
        raise StaleDataError(
            f"this version of dataset {name!r} holds interactions older than its retention "
            f"window ({retention_days:g} days) now: load it again so retention applies"
        )


def _refuse_future(ts: np.ndarray, now: float) -> None:
    """Refuse timestamps more than :data:`FUTURE_SLACK` after ``now`` (a retention bypass:
    milliseconds read as seconds lie far in the future, so a 400-day-old interaction is kept)."""
    ahead = ts > now + FUTURE_SLACK
    if ahead.any():
        hint = (
            " (they look like milliseconds: give Unix time in seconds)"
            if float(ts[ahead].max()) > now * 100
            else ""
        )
        raise DataError(
            f"{int(ahead.sum())} interaction(s) have a timestamp more than a day in the future, "
            f"which a retention window would never drop{hint}"
        )


def _step(step: str, reason: str, users: int, interactions: int) -> PolicyStep:
    return PolicyStep(
        step=step, reason=reason, users_dropped=int(users), interactions_dropped=int(interactions)
    )


def apply_policy(
    data: Interactions,
    policy: Policy,
    *,
    user_digests: np.ndarray,
    deleted: np.ndarray,
    consented: np.ndarray | None,
    now: float,
) -> tuple[Interactions, PolicyReport]:
    """Filter ``data`` by ``policy``; returns the data a training may see and a counts-only report.

    Parameters
    ----------
    user_digests
        The ledger's keyed hash of each row's user id (aligned with ``data.user_ids``).
    deleted
        Hashes of users with a deletion request for this dataset: always dropped.
    consented
        Hashes of users whose latest consent record grants it (used when consent is required).
    now
        Unix time the retention window is measured from.
    """
    n_users, nnz = data.n_users, data.nnz
    counts = data.user_counts
    steps: list[PolicyStep] = []
    gone = np.isin(user_digests, deleted)
    steps.append(
        _step("deletion", "a deletion request was recorded", gone.sum(), counts[gone].sum())
    )
    keep_user = ~gone
    if policy.consent.required:
        if consented is None:
            raise PolicyViolation("the policy requires consent but no consent records were given")
        no = keep_user & ~np.isin(user_digests, consented)
        steps.append(_step("consent", "no consent on record", no.sum(), counts[no].sum()))
        keep_user &= ~no
    m = data.matrix
    row_of = np.repeat(np.arange(n_users), np.diff(m.indptr))
    keep = keep_user[row_of]
    ts = None if data.timestamps is None else np.asarray(data.timestamps, dtype=np.float64)
    uses_ts = policy.retention_days is not None or policy.max_interactions_per_user is not None
    if ts is not None and uses_ts and not np.isfinite(ts).all():
        # NaN compares false with every cutoff: it would be kept and never expire
        bad = int((~np.isfinite(ts)).sum())
        raise DataError(f"{bad} interaction(s) have a timestamp that is not a finite number")
    if policy.retention_days is not None:
        if ts is None:
            raise PolicyViolation(
                "the policy sets retention_days but the data have no timestamps to apply it to"
            )
        _refuse_future(ts, now)
        # drop `grace` seconds more than the window, so that the version stays valid (its
        # oldest kept interaction inside the window) for at least that long after the load
        cutoff = now - policy.retention_days * 86400.0 + retention_grace(policy.retention_days)
        old = keep & ~(ts >= cutoff)
        steps.append(
            _step(
                "retention",
                f"older than {policy.retention_days:g} days",
                0,
                old.sum(),
            )
        )
        keep &= ~old
    cap = policy.max_interactions_per_user
    if cap is not None:
        # rank each user's kept interactions, most recent first (without timestamps: by a keyed
        # hash of (user id, item id) — a fixed pseudo-random order that depends on that pair
        # only, so adding or removing anyone else never changes which of a user's interactions
        # are kept, and every Ray partition picks the same ones); keep the first `cap`
        if ts is not None:
            order_key = np.where(keep, -ts, np.inf)
        else:
            pair = _pair_hashes(data.user_ids, data.item_ids, row_of, m.indices)
            order_key = np.where(keep, pair, np.iinfo(np.uint64).max)
        order = np.lexsort((order_key, row_of))
        rank = np.arange(nnz) - m.indptr[row_of[order]]
        over = np.zeros(nnz, dtype=bool)
        over[order[rank >= cap]] = True
        over &= keep
        steps.append(_step("minimisation", f"more than {cap} interactions per user", 0, over.sum()))
        keep &= ~over
    oldest_kept = (
        float(ts[keep].min())
        if policy.retention_days is not None and ts is not None and keep.any()
        else None
    )
    kept_per_user = np.bincount(row_of[keep], minlength=n_users)
    empty = keep_user & (kept_per_user == 0)
    steps.append(_step("empty", "no interactions left after the steps above", empty.sum(), 0))
    users = np.flatnonzero(kept_per_user > 0)
    new_row = np.full(n_users, -1, dtype=np.int64)
    new_row[users] = np.arange(len(users))
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(kept_per_user[users], out=indptr[1:])
    values = m.data[keep].astype(np.float32)
    dropped_cols = []
    if "value" not in policy.columns:
        values = np.ones_like(values)
        dropped_cols.append("value")
    matrix = sp.csr_matrix(
        (values, np.array(m.indices[keep], dtype=np.int32), indptr),
        shape=(len(users), data.n_items),
    )
    out_ts = None if ts is None else ts[keep]
    if ts is not None and "timestamp" not in policy.columns:
        out_ts = None
        dropped_cols.append("timestamp")
    out = Interactions(matrix, np.array(data.user_ids[users]), np.array(data.item_ids), out_ts)
    report = PolicyReport(
        policy_hash=policy.digest(),
        users_in=n_users,
        interactions_in=nnz,
        users_out=out.n_users,
        interactions_out=out.nnz,
        steps=tuple(steps),
        columns_dropped=tuple(dropped_cols),
        oldest_kept_timestamp=oldest_kept,
    )
    return out, report


def content_hash(data: Interactions) -> str:
    """SHA-256 of the normalised interactions (canonical CSR, ids as text, timestamps if kept)."""
    m = data.matrix
    h = hashlib.sha256()
    h.update(f"{m.shape[0]}x{m.shape[1]}:{m.nnz}\n".encode())
    for ids in (data.user_ids, data.item_ids):
        h.update("\x1f".join(map(str, ids.tolist())).encode())
        h.update(b"\x1e")
    h.update(np.ascontiguousarray(m.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(m.indices, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(m.data, dtype=np.float32).tobytes())
    if data.timestamps is not None:
        h.update(np.ascontiguousarray(data.timestamps, dtype=np.float64).tobytes())
    return h.hexdigest()


def _finite(x: float) -> bool:
    return math.isfinite(x)
