"""Every exception privrec raises on purpose.

One module so that callers can catch ``PrivrecError`` for anything the library
detected, and so that the messages follow one shape: *where* (file, line,
field), *what was expected* and *what was found*.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AuditLogError",
    "AuthenticationError",
    "BudgetExceededError",
    "CheckpointMismatchError",
    "ConfigError",
    "DataError",
    "DataWarning",
    "DuplicateClientError",
    "DuplicateInteractionError",
    "EngineError",
    "GovernanceError",
    "GuaranteeMismatchError",
    "InsecureParametersError",
    "InvalidInputError",
    "KeyFileError",
    "LedgerSchemaError",
    "MessageRejected",
    "MissingUserDataError",
    "ModelFileError",
    "ModelFileTooLargeError",
    "NonFiniteResultError",
    "NotFittedError",
    "OutputPathError",
    "PeerUnavailable",
    "PermissionDeniedError",
    "PolicyError",
    "PolicyViolation",
    "PrivacyWarning",
    "PrivrecError",
    "ProtocolAbort",
    "ProtocolError",
    "ServeConfigError",
    "SignatureError",
    "StaleDataError",
    "UnknownDatasetError",
    "UnknownItemError",
    "UnknownModelError",
    "UnknownUserError",
    "UtilityWarning",
    "WorkerLostError",
]


class PrivrecError(Exception):
    """Base class of every error privrec raises deliberately."""


class DataError(PrivrecError, ValueError):
    """Input data that cannot be used as it is.

    Parameters
    ----------
    message
        What is wrong, in one sentence.
    file, line, field
        Where it was found (``line`` is 1-based, as an editor shows it).
    expected, found
        What a valid value looks like and what was there instead.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        found: object = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.expected = expected
        self.found = found
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"file {self.file!r}")
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        text = self.message
        if where:
            text = f"{', '.join(where)}: {text}"
        if self.expected is not None:
            text += f" (expected {self.expected}"
            text += f", found {self.found!r})" if self.found is not None else ")"
        elif self.found is not None:
            text += f" (found {self.found!r})"
        return text

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Keep keyword-only fields through pickling (multiprocessing, pytest-xdist).
        return (
            _rebuild_data_error,
            (type(self), self.message, self.file, self.line, self.field, self.expected, self.found),
        )


def _rebuild_data_error(
    cls: type[DataError],
    message: str,
    file: str | None,
    line: int | None,
    field: str | None,
    expected: str | None,
    found: object,
) -> DataError:
    return cls(message, file=file, line=line, field=field, expected=expected, found=found)


class DuplicateInteractionError(DataError):
    """Duplicate (user, item) pairs met under the ``duplicates="error"`` policy."""


class ConfigError(PrivrecError, ValueError):
    """An invalid hyper-parameter or configuration value."""


class NonFiniteResultError(ConfigError):
    """A fit produced non-finite values (extreme settings, e.g. a zero ridge or a huge clip
    norm): nothing is released or saved; change the settings."""


class NotFittedError(PrivrecError, AttributeError):
    """A model was used before ``fit`` (or ``load``) gave it its learned state."""


class MissingUserDataError(PrivrecError, LookupError):
    """A model loaded without training interactions was asked about a training user."""


class UnknownUserError(PrivrecError, KeyError):
    """An external user id that the fitted model has never seen."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable
        return str(self.args[0]) if self.args else ""


class UnknownItemError(PrivrecError, KeyError):
    """An external item id that the fitted model has never seen."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProtocolError(PrivrecError):
    """A secure-computation protocol (e.g. secure aggregation) could not proceed as specified."""


class ProtocolAbort(ProtocolError):  # noqa: N818  (named by the protocol spec)
    """A protocol round stopped safely instead of producing a possibly wrong or leaking result.

    Parameters
    ----------
    phase
        The protocol phase that detected the problem (e.g. ``"unmask"``).
    reason
        Why the round cannot continue, in one sentence.
    """

    def __init__(self, phase: str, reason: str) -> None:
        self.phase = phase
        self.reason = reason
        super().__init__(f"protocol aborted in phase {phase!r}: {reason}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.phase, self.reason))


class MessageRejected(ProtocolError):  # noqa: N818
    """A protocol message was malformed, tampered with (AEAD failure), replayed or misaddressed."""


class DuplicateClientError(MessageRejected):
    """Two participants claimed the same client id (in a configuration or within one phase)."""


class InvalidInputError(ProtocolError, ValueError):
    """A client's private input has the wrong shape or values outside the protocol's range."""


class DataWarning(UserWarning):
    """Something in the data was changed under a documented policy (e.g. duplicates merged)."""


class PrivacyWarning(UserWarning):
    """A setting weakens privacy or is only fit for tests (e.g. seeded noise)."""


class UtilityWarning(UserWarning):
    """The data are too few for the budget: a simpler private model is expected to rank better."""


class InsecureParametersError(ConfigError):
    """Encryption parameters or key material below the security bar.

    Raised for homomorphic-encryption parameters that miss 128-bit security
    (too many modulus bits for the ring degree) and for a context that carries
    a secret key where only public material may go (e.g. sent to a server).
    """


class PeerUnavailable(ProtocolError):  # noqa: N818
    """A network peer did not answer in time, closed its connection or could not be reached.

    Raised by the authenticated channel of :mod:`privrec.secure.channel`; the cross-silo
    protocol turns it into a :class:`ProtocolAbort` naming the phase it happened in.
    """


# --- model files, guarantees and command-line outputs (area: artifacts) -------------------------


class ModelFileError(DataError):
    """A model file that is not a well-formed privrec model: unknown members, arrays whose
    header disagrees with the metadata, malformed metadata or state, or a broken archive.

    Raised before any array is used, so a hostile file never reaches a model's code.
    """


class ModelFileTooLargeError(ModelFileError):
    """A model file whose declared arrays exceed the configured size limit (checked from the
    ``.npy`` headers before anything is decompressed)."""


class GuaranteeMismatchError(ModelFileError):
    """A stored privacy guarantee that its own records do not support: ε differs from the one
    recomputed from the stored events, δ/unit/accountant disagree with the model's parameters,
    or the events are malformed. The stored ε is never shown in that case."""


class SignatureError(ModelFileError):
    """A model file's Ed25519 signature is missing, malformed, by another key, or does not match
    the file's bytes."""


class CheckpointMismatchError(DataError):
    """A training checkpoint whose stored state its own records do not support: a head the
    model's rule would not choose from the stored noisy counts (or a public head the resuming
    caller does not confirm), or accountant records that charge fewer rounds, or a smaller ε,
    than the rounds done and the noise used imply. Raised on load, before the state is used."""


class OutputPathError(ConfigError):
    """An output file that cannot be written (checked before any work starts)."""


# ----------------------------------------------------------------- governance (privrec.governance)
class GovernanceError(PrivrecError):
    """A privacy-operations rule of the ledger (budgets, roles, policy, audit log) refused an action.

    Raised *before* anything is written: the ledger validates first, then mutates inside one
    transaction, so a refused action leaves the database unchanged.
    """


class BudgetExceededError(GovernanceError):
    """A charge would take a budget past its cap; nothing was reserved and no noise was drawn.

    Parameters
    ----------
    scope
        Which budget refused (e.g. ``"dataset ratings"``, ``"analyst bob on ratings"``).
    remaining
        ε still available in that scope at the budget's δ (composed, never summed).
    requested
        ε the refused charge would cost on its own at that δ.
    """

    def __init__(self, scope: str, *, remaining: float, requested: float, cap: float) -> None:
        self.scope = scope
        self.remaining = remaining
        self.requested = requested
        self.cap = cap
        super().__init__(
            f"refused: {scope} has ε = {max(remaining, 0.0):.4g} remaining of {cap:.4g}; "
            f"this charge needs ε = {requested:.4g} on its own"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_budget_error, (self.scope, self.remaining, self.requested, self.cap))


def _rebuild_budget_error(
    scope: str, remaining: float, requested: float, cap: float
) -> BudgetExceededError:
    return BudgetExceededError(scope, remaining=remaining, requested=requested, cap=cap)


class PermissionDeniedError(GovernanceError, PermissionError):
    """The caller's role (owner, analyst, auditor) does not allow the action."""


class AuthenticationError(GovernanceError):
    """An API key that is unknown, malformed or revoked."""


class UnknownDatasetError(GovernanceError, LookupError):
    """A dataset (or charge, artifact) name or id the ledger does not know."""


class PolicyError(ConfigError):
    """A data-use policy file that is malformed or inconsistent (TOML or schema problem)."""


class PolicyViolation(GovernanceError):  # noqa: N818  (a refusal, not a crash)
    """Data or a model that did not pass through the dataset's policy (or passed before a deletion)."""


class StaleDataError(PolicyViolation):
    """Data loaded through the policy that no longer reflects it: a deletion, consent or policy change
    (or the passing of the retention window) since the load. Loading again applies the change."""


class LedgerSchemaError(GovernanceError):
    """A ledger database that is missing, not initialised, or from a newer privrec schema."""


class AuditLogError(GovernanceError):
    """The hash-chained audit log does not verify; the message names the first bad row."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        self.seq = seq
        super().__init__(message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.args[0],), {"seq": self.seq})


# ----------------------------------------------------------------- service (privrec.serve)
class UnknownModelError(PrivrecError, LookupError):
    """A model id the recommendation service does not serve (not in its models directory)."""


class ServeConfigError(ConfigError):
    """A service configuration (datasets file, limits, bind address) that cannot be used."""


# --------------------------------------------------------------------------- secure computation
# (engineer "secure": key files, SecAgg+ and silo errors)


class KeyFileError(ConfigError):
    """A secret key file that cannot be used safely: unreadable, malformed, not a regular file,
    or readable by other users (a key must be mode 0600, owner only)."""


# ------------------------------------------------------------ distributed engine (privrec.engine)
class EngineError(PrivrecError):
    """A distributed training could not run (cluster unreachable, workers lost too often…)."""


class WorkerLostError(EngineError):
    """A worker died more often than the engine's retry limit allows; nothing was released."""
