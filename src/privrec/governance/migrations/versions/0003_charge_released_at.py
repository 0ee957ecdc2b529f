"""charges record when their output was released

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 10:00:00.000000

A nullable ``charges.released_at`` (UTC seconds): set by ``Ledger.mark_released`` once a
charge's noisy output has left the process, after which ``Ledger.abort`` refuses the charge —
aborting it would give back privacy already spent. Before this revision "output was released"
was only free text in the charge's note, which nothing checked. ``NULL`` for every charge
recorded before; a ``NULL`` value is left out of a row's audit fingerprint
(:data:`privrec.governance.audit.LATER_NULLABLE`), so the log still verifies after the upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("released_at", sa.Float(), nullable=True))


def downgrade() -> None:
    # in place (SQLite 3.35+ drops columns natively), as 0002's downgrade does
    with op.batch_alter_table("charges", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("released_at")
