"""The key of the ledger's user hashes: kept in the database, or supplied from outside.

People are stored by a keyed 64-bit BLAKE2b hash of their id (consents, deletion requests,
dataset versions' members). Whoever holds the key can hash a candidate id and test it against
those rows; the ids of a typical service (integers, e-mail addresses) are few enough to try them
all. So a key stored in the database beside the hashes turns a copy of the database file into
the list of people who asked to be deleted.

By default the key is generated at ``ledger init`` and stored in ``ledger_meta`` (row
``user_key``): nothing to configure, and the database file must be protected like the data
itself. With :data:`USER_KEY_ENV` set when the ledger is initialised, the key stays outside the
database: ``ledger_meta`` holds only ``external:<fingerprint>`` (SHA-256 of the key, useless for
hashing ids), and every process that hashes ids — loading data, recording consents and deletion
requests, lineage of a person — must have the same variable set. A copy of the database alone
then reveals no id. Existing ledgers keep their stored key; the variable is read only for a
ledger initialised with it.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from privrec.errors import GovernanceError, LedgerSchemaError

__all__ = [
    "EXTERNAL_PREFIX",
    "USER_KEY_ENV",
    "external_key_from_env",
    "new_user_key",
    "stored_key_fingerprint",
    "user_key_bytes",
    "user_key_fingerprint",
]

USER_KEY_ENV = "PRIVREC_USER_KEY"
#: ``ledger_meta.user_key`` of a ledger whose key is kept outside: this prefix and the fingerprint
EXTERNAL_PREFIX = "external:"
_MIN_BYTES, _MAX_BYTES = 32, 64  # BLAKE2b keys are at most 64 bytes; fewer than 32 is guessable


def user_key_fingerprint(user_key: str) -> str:
    """SHA-256 of the ledger's user-hash key (logged at init; the key itself is never logged)."""
    return hashlib.sha256(f"privrec user key\n{user_key}".encode()).hexdigest()


def _parse(text: str, where: str) -> str:
    key = text.strip().lower()
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raise GovernanceError(f"{where} is not hexadecimal") from None
    if not _MIN_BYTES <= len(raw) <= _MAX_BYTES:
        raise GovernanceError(
            f"{where} must be {_MIN_BYTES}-{_MAX_BYTES} bytes ({2 * _MIN_BYTES}-{2 * _MAX_BYTES} "
            f"hexadecimal digits), found {len(raw)} bytes"
        )
    return key


def external_key_from_env() -> str | None:
    """The externally supplied key (normalised hex) from :data:`USER_KEY_ENV`, if set."""
    raw = os.environ.get(USER_KEY_ENV)
    if raw is None or not raw.strip():
        return None
    return _parse(raw, f"${USER_KEY_ENV}")


def new_user_key() -> tuple[str, str]:
    """``(value to store in ledger_meta, the key as hex)`` for a new ledger.

    With :data:`USER_KEY_ENV` set, the stored value is only the key's fingerprint.
    """
    external = external_key_from_env()
    if external is not None:
        return EXTERNAL_PREFIX + user_key_fingerprint(external), external
    key = secrets.token_hex(32)
    return key, key


def stored_key_fingerprint(stored: str) -> str:
    """The fingerprint of the key a ``ledger_meta.user_key`` value stands for (audit check)."""
    if stored.startswith(EXTERNAL_PREFIX):
        return stored[len(EXTERNAL_PREFIX) :]
    return user_key_fingerprint(stored)


def user_key_bytes(stored: str | None) -> bytes:
    """The key to hash user ids with, from the stored ``ledger_meta.user_key`` value.

    Raises :class:`~privrec.errors.LedgerSchemaError` when the row is missing or malformed (a
    damaged database: hashing with any other key would make every deletion request and consent
    match nobody), and :class:`~privrec.errors.GovernanceError` when an external key is needed
    but :data:`USER_KEY_ENV` is unset or holds another key.
    """
    if stored is None:
        raise LedgerSchemaError(
            "the ledger's user-hash key (ledger_meta 'user_key') is missing: the database was "
            "damaged or edited; restore it from a backup (with another key, deletion requests "
            "and consents would match nobody)"
        )
    if stored.startswith(EXTERNAL_PREFIX):
        key = external_key_from_env()
        if key is None:
            raise GovernanceError(
                f"this ledger keeps its user-hash key outside the database: set ${USER_KEY_ENV} "
                "to the key it was initialised with"
            )
        if user_key_fingerprint(key) != stored[len(EXTERNAL_PREFIX) :]:
            raise GovernanceError(
                f"${USER_KEY_ENV} is not the user-hash key this ledger was initialised with"
            )
        return bytes.fromhex(key)
    try:
        return bytes.fromhex(stored)
    except ValueError:
        raise LedgerSchemaError(
            "the ledger's user-hash key (ledger_meta 'user_key') is not hexadecimal: the "
            "database was damaged or edited; restore it from a backup"
        ) from None
