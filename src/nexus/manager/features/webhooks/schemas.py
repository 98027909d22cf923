"""Webhook API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
PATTERN_DOC = "event type patterns: `vm.started`, `vm.*`, `*.failed`, `*` (every event you may see)"


class WebhookCreate(BaseModel):
    """A new webhook. The secret is generated unless you give one; it is shown once."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="DNS label: a-z, 0-9, '-'")
    url: str = Field(min_length=8, max_length=2048, description="http(s) URL that receives POSTs")
    events: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=20, description=PATTERN_DOC
    )
    secret: str | None = Field(
        default=None,
        max_length=200,
        description="`whsec_` + base64 of 24-64 random bytes; omit to have one generated",
    )
    enabled: bool = True
    description: str = Field(default="", max_length=1000)


class WebhookUpdate(BaseModel):
    """Change a webhook (omitted fields stay). Enabling clears the failure record."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    url: str | None = Field(default=None, min_length=8, max_length=2048)
    events: list[str] | None = Field(
        default=None, min_length=1, max_length=20, description=PATTERN_DOC
    )
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=1000)


class WebhookRead(BaseModel):
    """A webhook (its secret is never shown again after creation)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    url: str
    events: list[str]
    enabled: bool
    description: str
    disabled_reason: str | None = Field(description="why it was disabled automatically")
    failing_since: datetime | None = Field(description="first failure since the last success")
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookRead):
    """The new webhook and its signing secret: store it now, it is not shown again."""

    secret: str


WebhookPage = Page[WebhookRead]

DeliveryStatus = Literal["pending", "succeeded", "failed"]


class AttemptRead(BaseModel):
    """One delivery attempt."""

    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryRead(BaseModel):
    """One event for one webhook. `id` is the `webhook-id` header, the same on every retry."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    webhook_id: str
    event_id: int | None = Field(description="the event delivered (null for a test delivery)")
    event_type: str
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="when the next try is due (pending)")
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: float | None
    last_response: str | None = Field(description="the first KiB of the last response body")
    last_error: str | None
    delivered_at: datetime | None
    log: list[AttemptRead] = Field(description="the last attempts, oldest first")
    body: dict[str, Any] = Field(description="the JSON sent (`type`, `timestamp`, `data`)")


DeliveryPage = Page[DeliveryRead]
