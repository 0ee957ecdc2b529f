"""artifacts record the signer of a signed release

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 16:15:00.000000

A nullable ``artifacts.signer`` (the Ed25519 fingerprint, ``SHA256:<base64>``, of the key that
signed the released file; ``NULL`` for unsigned releases and every artifact recorded before this
revision). Rows written before keep their audit-log fingerprints: a ``NULL`` signer is left out
of a row's fingerprint (:data:`privrec.governance.audit.LATER_NULLABLE`), so the log still
verifies after the upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signer", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # in place (SQLite 3.35+ drops columns natively): copying the table, batch mode's default,
    # would drop ``artifacts`` while charges still reference it
    with op.batch_alter_table("artifacts", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("signer")
