"""What one person's protection covers: the privacy unit and its neighbouring relation."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: dp-accounting is slow to import
    import dp_accounting

__all__ = ["PrivacyUnit"]


class PrivacyUnit(StrEnum):
    """The unit whose presence or absence differential privacy hides.

    ``USER``
        Neighbouring datasets differ by adding or removing **one user's whole
        history**. This is what protects a person; every sensitivity in privrec
        is computed per user and then bounded by contribution limits.
    ``INTERACTION``
        Neighbouring datasets differ by one (user, item) interaction. Much
        weaker: a heavy user's many interactions each get ε, so the person gets
        up to (#interactions)·ε. Offered for comparison with the literature.

    Both use the add/remove neighbouring relation (dp-accounting's
    ``ADD_OR_REMOVE_ONE``), which is what the accountants assume.
    """

    USER = "user"
    INTERACTION = "interaction"

    @property
    def neighbouring(self) -> str:
        """Plain-language neighbouring relation."""
        if self is PrivacyUnit.USER:
            return "datasets that differ by adding or removing all interactions of one user"
        return "datasets that differ by adding or removing one (user, item) interaction"

    @property
    def relation(self) -> dp_accounting.NeighboringRelation:
        import dp_accounting

        return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE

    @classmethod
    def parse(cls, value: PrivacyUnit | str) -> PrivacyUnit:
        from privrec.errors import ConfigError

        if isinstance(value, PrivacyUnit):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ConfigError(
                f"unknown privacy unit {value!r}; choose 'user' (protects a person) or 'interaction'"
            ) from None
