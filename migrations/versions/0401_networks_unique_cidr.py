"""networks: one network per CIDR (pool allocations race-free)

Networks never overlap (checked in the service); this index makes the common race, two
requests allocating the same free range of the pool at once, fail in the database too.

Revision ID: 0401
Revises: 0101
Create Date: 2026-12-02 18:55:00
"""

from __future__ import annotations

from alembic import op

revision = "0401"
down_revision = "0101"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("uq_networks_cidr", "networks", ["cidr"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_networks_cidr", table_name="networks")
