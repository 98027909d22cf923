"""Notification API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page

NotificationKind = Literal[
    "vm_failed",
    "vm_stopped_unexpectedly",
    "operation_failed",
    "operation_succeeded",
    "ttl_warning",
    "schedule_disabled",
    "webhook_disabled",
    "alert",
]
KINDS: tuple[str, ...] = NotificationKind.__args__  # type: ignore[attr-defined]


class NotificationRead(BaseModel):
    """A message for you. ``read_at`` is null while unread."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    created_at: datetime
    kind: NotificationKind
    title: str
    body: str
    resource_type: str | None
    resource_id: str | None
    read_at: datetime | None


NotificationPage = Page[NotificationRead]


class NotificationSummary(BaseModel):
    """How many notifications you have, and how many of them are unread."""

    unread: int
    total: int


class NotificationUpdate(BaseModel):
    """Mark one notification read (or unread again)."""

    model_config = ConfigDict(extra="forbid")
    read: bool


class ReadAllResult(BaseModel):
    """How many notifications were marked read."""

    marked: int


class NotificationPrefsRead(BaseModel):
    """What you are told: nothing while ``muted``; every kind but ``disabled_kinds``."""

    model_config = ConfigDict(from_attributes=True)
    muted: bool = False
    disabled_kinds: list[NotificationKind] = Field(default_factory=list)
    kinds: list[NotificationKind] = Field(
        default_factory=lambda: list(KINDS),  # type: ignore[arg-type]
        description="every kind there is",
    )


class NotificationPrefsUpdate(BaseModel):
    """Change your preferences (omitted fields stay)."""

    model_config = ConfigDict(extra="forbid")
    muted: bool | None = None
    disabled_kinds: list[NotificationKind] | None = Field(default=None, max_length=len(KINDS))
