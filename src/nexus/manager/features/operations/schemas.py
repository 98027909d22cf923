"""Operation API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from nexus.core.paging import Page

OperationStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class OperationRead(BaseModel):
    """A long-running task and how far it got."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    kind: str
    status: OperationStatus
    progress: int
    message: str | None
    resource_type: str | None
    resource_id: str | None
    result: dict[str, Any] | None
    error: str | None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class OperationPage(Page[OperationRead]):
    """A page of operations, newest first."""
