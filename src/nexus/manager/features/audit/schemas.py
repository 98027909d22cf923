"""Audit API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from nexus.core.paging import Page


class AuditEventRead(BaseModel):
    """One audit row."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    at: datetime
    actor_user_id: str | None
    actor_username: str | None
    token_id: str | None
    action: str
    resource_type: str
    resource_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    outcome: Literal["success", "denied", "failure"]
    detail: str | None
    request_id: str | None
    source_ip: str | None


class AuditPage(Page[AuditEventRead]):
    """A page of audit rows, newest first; pass ``next_cursor`` as ``cursor`` for the next."""
