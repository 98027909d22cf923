"""Notification tables: the notifications of each user and their preferences."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base
from nexus.core.timeutil import utcnow


class Notification(Base):
    """A message for one user; ``read_at`` is null while unread."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user", "user_id", "id"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    body: Mapped[str] = mapped_column(Text, default="", nullable=False)
    resource_type: Mapped[str | None] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    read_at: Mapped[datetime | None] = mapped_column()


class NotificationPrefs(Base):
    """What a user wants to be told: ``muted`` silences everything, ``disabled_kinds`` some."""

    __tablename__ = "notification_prefs"
    user_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    muted: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    disabled_kinds: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)
