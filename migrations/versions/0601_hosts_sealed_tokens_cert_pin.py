"""hosts: sealed agent tokens, pinned agent certificates, embedded-agent join tokens

* ``hosts.agent_token`` widens to 512 characters: it now holds the agent token *sealed*
  (``sealed:v1:<Fernet token>``, see ``nexus.core.sealing``) instead of the clear value. The
  rows themselves are sealed by the manager's first start after this upgrade
  (``hosts.service.seal_host_tokens``), because only the manager knows where its sealing
  key lives (``sealing_key`` setting or ``<state_dir>/sealing-keys.json``); a migration run
  by hand does not have the settings of the manager that will use the database.
* ``hosts.agent_cert_sha256``: the SHA-256 fingerprint of the agent's TLS certificate,
  learned at registration; the manager refuses any other certificate (pinning).
* ``host_join_tokens.allow_loopback``: set only on the join token the all-in-one manager
  mints for its embedded agent, the one agent allowed a loopback ``agent_url``.

Revision ID: 0601
Revises: 0002
Create Date: 2026-12-02 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0601"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.alter_column(
            "agent_token", existing_type=sa.String(128), type_=sa.String(512), nullable=False
        )
        batch.add_column(sa.Column("agent_cert_sha256", sa.String(64), nullable=True))
    with op.batch_alter_table("host_join_tokens") as batch:
        batch.add_column(
            sa.Column("allow_loopback", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    # Sealed tokens do not fit the old column and an older manager cannot open them:
    # after a downgrade every agent must register again with a new join token.
    op.execute(sa.text("DELETE FROM hosts WHERE agent_token LIKE 'sealed:%'"))
    with op.batch_alter_table("host_join_tokens") as batch:
        batch.drop_column("allow_loopback")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("agent_cert_sha256")
        batch.alter_column(
            "agent_token", existing_type=sa.String(512), type_=sa.String(128), nullable=False
        )
