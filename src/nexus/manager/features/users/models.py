"""User accounts."""

from __future__ import annotations

from sqlalchemy import Boolean, String
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, TimestampMixin
from nexus.manager.platform.outbox import Tracked, track


class User(TimestampMixin, Base):
    """A person or robot that logs in. ``created_by_user_id`` has no FK so users can be deleted."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    created_by_user_id: Mapped[str] = mapped_column(String(40), nullable=False, index=True)


track(
    User,
    Tracked(
        "user",
        name_attr="username",
        ignore=frozenset({"password_hash"}),
        payload=("role", "disabled"),
        owner=lambda row: row.id,
    ),
)
