"""Event API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page


class EventRead(BaseModel):
    """One change of one resource. ``id`` only grows: it is the cursor of the stream."""

    model_config = ConfigDict(from_attributes=True)
    id: int = Field(description="the cursor: pass it as `after` (or `Last-Event-ID`) to resume")
    at: datetime
    type: str = Field(description="`<resource>.<verb>`, e.g. `vm.started`, `operation.failed`")
    resource_type: str
    resource_id: str | None
    resource_name: str | None
    actor_user_id: str | None = Field(description="who caused it; null for the system")
    actor_username: str | None
    owner_user_id: str | None = Field(description="the owner of the resource")
    payload: dict[str, Any] = Field(description="a small, type-specific summary of the change")
    request_id: str | None = Field(description="the API request that caused it, if any")


EventPage = Page[EventRead]
