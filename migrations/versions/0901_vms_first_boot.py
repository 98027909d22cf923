"""vms.first_boot: SSH keys and user data applied once at first boot by the guest agent

``first_boot`` holds what was asked at create (``{"ssh_keys": [...], "user_data": ...}``),
``first_boot_done_at`` when the manager applied it, ``first_boot_error`` why it failed.

Revision ID: 0901
Revises: 0702
Create Date: 2026-12-03 10:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import nexus.core.db

revision = "0901"
down_revision = "0702"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("first_boot", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("first_boot_done_at", nexus.core.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("first_boot_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("first_boot_error")
        batch.drop_column("first_boot_done_at")
        batch.drop_column("first_boot")
