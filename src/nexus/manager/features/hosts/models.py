"""Hosts (agents) and the join tokens that let them register."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.core.sealing import SealedString
from nexus.manager.platform.outbox import Tracked, track


class JoinToken(ResourceMixin, Base):
    """A single-use secret an agent presents once to register (only the hash is stored)."""

    __tablename__ = "host_join_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    used_at: Mapped[datetime | None] = mapped_column()
    used_by_host_id: Mapped[str | None] = mapped_column(String(40))
    # Only the embedded (all-in-one) agent's token: that agent may register a loopback URL.
    allow_loopback: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)


class Host(ResourceMixin, Base):
    """A machine running ``nexus-agent``. ``created_by_user_id`` = who minted its join token."""

    __tablename__ = "hosts"
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    agent_url: Mapped[str] = mapped_column(String(255), nullable=False)
    # The manager presents agent_token to the agent; the agent presents host_token to us.
    # agent_token is sealed in the database (nexus.core.sealing): a database reader cannot
    # use it; host_token is only a hash.
    agent_token: Mapped[str] = mapped_column(SealedString(512), nullable=False)
    # SHA-256 of the agent's TLS certificate, learned at registration (https agents only):
    # the manager's agent client refuses any other certificate.
    agent_cert_sha256: Mapped[str | None] = mapped_column(String(64))
    host_token_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    drained: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column()
    driver: Mapped[str] = mapped_column(String(32), default="", nullable=False)
    accel: Mapped[str] = mapped_column(String(16), default="", nullable=False)
    accel_warning: Mapped[str | None] = mapped_column(Text)
    vcpus: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    disk_free_mib: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    version: Mapped[str] = mapped_column(String(32), default="", nullable=False)
    facts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    vm_states: Mapped[list[Any] | None] = mapped_column(JSON)


track(
    Host,
    Tracked(
        "host",
        ignore=frozenset(
            {
                "last_heartbeat_at",
                "facts",
                "vm_states",
                "disk_free_mib",
                "vcpus",
                "memory_mib",
                "version",
                "driver",
                "accel",
                "accel_warning",
                "agent_token",
                "host_token_hash",
                "agent_cert_sha256",
                "agent_url",
            }
        ),
        payload=("drained",),
    ),
)
