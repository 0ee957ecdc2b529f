"""Roles and API keys.

Three roles, enforced by every :class:`~privrec.governance.ledger.Ledger` method (and so by the
CLI and any service built on it):

``owner``
    Sets policies and budgets, creates and revokes keys, imports consents, records deletion
    requests; reads everything.
``analyst``
    Loads data through a dataset's policy, trains models and runs queries *within budgets*;
    reads the budgets and charges that concern them.
``auditor``
    Reads the whole ledger and verifies the audit log; changes nothing.

An API key is ``prk_<key id>_<secret>``. The ledger stores only the key id and
``scrypt(secret, salt, n=2^14, r=8, p=1)``: a copy of the database does not yield usable keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from privrec.errors import AuthenticationError, PermissionDeniedError

__all__ = ["Principal", "Role", "hash_secret", "new_key", "parse_key", "require", "verify_secret"]

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
KEY_PREFIX = "prk"


class Role(StrEnum):
    OWNER = "owner"
    ANALYST = "analyst"
    AUDITOR = "auditor"

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls(str(value).lower())
        except ValueError:
            raise PermissionDeniedError(
                f"unknown role {value!r}; choose owner, analyst or auditor"
            ) from None


#: What each action needs.
PERMISSIONS: dict[str, frozenset[Role]] = {
    "manage": frozenset({Role.OWNER}),  # policy, budgets, keys, consents, deletions
    "spend": frozenset({Role.ANALYST}),  # load through policy, train, query
    "read_all": frozenset({Role.OWNER, Role.AUDITOR}),  # every charge, lineage, audit log
    "read_own": frozenset({Role.OWNER, Role.AUDITOR, Role.ANALYST}),
}


@dataclass(frozen=True)
class Principal:
    """Who is acting: a name and a role (authenticated by an API key)."""

    name: str
    role: Role

    def can(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]


def require(principal: Principal, permission: str, action: str) -> None:
    """Raise :class:`PermissionDeniedError` (one line) unless the principal's role allows ``permission``."""
    if not principal.can(permission):
        allowed = " or ".join(sorted(r.value for r in PERMISSIONS[permission]))
        raise PermissionDeniedError(
            f"{principal.name} is {principal.role.value}; {action} needs the {allowed} role"
        )


def new_key() -> tuple[str, str, str]:
    """A fresh key: ``(full key to hand out, key id, secret)``."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}_{key_id}_{secret}", key_id, secret


def parse_key(key: str) -> tuple[str, str]:
    """``(key id, secret)`` of a key, or :class:`AuthenticationError` for anything malformed."""
    parts = key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or not parts[2]:
        raise AuthenticationError("malformed API key (expected prk_<id>_<secret>)")
    return parts[1], parts[2]


def hash_secret(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    ).hex()


def scrypt_params() -> str:
    return f"scrypt:n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"


def verify_secret(secret: str, salt_hex: str, expected_hex: str) -> bool:
    return hmac.compare_digest(hash_secret(secret, bytes.fromhex(salt_hex)), expected_hex)
