"""signing key out of the database

The JWT signing key used to sit in ``system_values`` (``jwt_signing_key``), readable by anyone
who could read the database. It now lives in a 0600 key file (``<state_dir>/jwt-keys.json``)
or the ``secret_key`` setting. The old key is deleted, not carried over: a key that sat in a
database that may have been world-readable must be presumed known, so tokens it signed must
stop working. Access tokens signed with it (15 minutes by default) are refused after the
upgrade; clients get new ones with their refresh tokens, which are unaffected.

Revision ID: 0501
Revises: 0002
Create Date: 2026-12-02 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0501"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM system_values WHERE key = 'jwt_signing_key'"))


def downgrade() -> None:
    # Nothing to restore: the old key is gone on purpose; an older manager makes a new one.
    pass
