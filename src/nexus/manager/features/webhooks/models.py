"""Webhook tables: subscriptions and their deliveries (the durable delivery queue)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.core.sealing import SealedString
from nexus.core.timeutil import utcnow
from nexus.manager.platform.outbox import Tracked, track


class Webhook(ResourceMixin, Base):
    """An HTTP endpoint that receives the events its owner may see and that match
    ``events`` (type patterns). The signing secret is sealed in the database."""

    __tablename__ = "webhooks"
    __table_args__ = (
        UniqueConstraint("created_by_user_id", "name", name="uq_webhooks_owner_name"),
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    events: Mapped[list[Any]] = mapped_column(JSON, nullable=False)
    secret: Mapped[str] = mapped_column(SealedString(512), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    failing_since: Mapped[datetime | None] = mapped_column()


class WebhookDelivery(Base):
    """One event for one webhook: ``id`` is the ``webhook-id`` header (the same on every
    retry, so receivers can de-duplicate). pending -> succeeded | failed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_hook", "webhook_id", "id"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
    )
    event_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), default="pending", nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, nullable=False)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, nullable=False)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column()
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_latency_ms: Mapped[float | None] = mapped_column()
    last_response: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column()
    log: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)


track(
    Webhook,
    Tracked(
        "webhook",
        state_attr="enabled",
        verbs={"False": "disabled", "True": "enabled"},
        ignore=frozenset({"failing_since", "secret"}),
        payload=("url", "disabled_reason"),
    ),
)
