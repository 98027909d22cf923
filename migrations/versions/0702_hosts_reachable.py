"""hosts.reachable: the reconciler's last health verdict of a host

Its changes are the ``host.online`` / ``host.offline`` events. Null until the first
reconciler pass after this upgrade.

Revision ID: 0702
Revises: 0701
Create Date: 2026-12-03 09:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0702"
down_revision = "0701"
branch_labels = None
depends_on = "0601"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("reachable", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("reachable")
