"""Login sessions, rotating refresh tokens and API tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin, TimestampMixin
from nexus.manager.platform.outbox import Tracked, track


class AuthSession(TimestampMixin, Base):
    """One login: a family of refresh tokens. Revoking it ends every token of the family."""

    __tablename__ = "auth_sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column()


class RefreshToken(TimestampMixin, Base):
    """A single-use refresh token (only its SHA-256 is stored)."""

    __tablename__ = "refresh_tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("auth_sessions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column()


class ApiToken(ResourceMixin, Base):
    """A long-lived API token with scopes; only the hash and a display prefix are stored."""

    __tablename__ = "api_tokens"
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    scopes: Mapped[list[Any]] = mapped_column(JSON, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


track(
    ApiToken,
    Tracked(
        "token",
        ignore=frozenset({"last_used_at", "token_hash"}),
        payload=("prefix", "scopes", "expires_at", "revoked_at"),
    ),
)
