"""Quota tables: per-user overrides of the role defaults, and each user's usage row (the row
every quota check locks, so two checks of one user never interleave)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, TimestampMixin


class QuotaOverride(TimestampMixin, Base):
    """An admin's per-user limits ``{limit: n}`` (-1: unlimited); a limit left out follows
    the user's role default. ``set_by_user_id`` is the admin who set them (no foreign key,
    like ``users.created_by_user_id``: that admin may be deleted later)."""

    __tablename__ = "quota_overrides"
    user_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    set_by_user_id: Mapped[str] = mapped_column(String(40), nullable=False)


class QuotaUsage(TimestampMixin, Base):
    """One per user: the lock a quota check takes (an UPDATE of ``locked_at``: a row lock on
    PostgreSQL, the write lock on SQLite) and the usage counted by the last check or by the
    policy loop's recount (``usage``, ``counted_at``)."""

    __tablename__ = "quota_usage"
    user_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    locked_at: Mapped[datetime | None] = mapped_column()
    counted_at: Mapped[datetime | None] = mapped_column()
