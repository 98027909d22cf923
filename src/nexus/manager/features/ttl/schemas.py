"""TTL API schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class VmExtend(BaseModel):
    """``POST /v1/vms/{id}/extend``: exactly one of ``ttl_s`` (from now), ``by_s`` (added to
    the current expiry) or ``expires_at``; or ``clear: true`` to remove the TTL."""

    model_config = ConfigDict(extra="forbid")
    ttl_s: int | None = Field(default=None, ge=60, description="live this long from now")
    by_s: int | None = Field(default=None, ge=1, description="add this to the current expiry")
    expires_at: datetime | None = Field(default=None, description="new absolute expiry")
    clear: bool = Field(default=False, description="remove the TTL: the VM lives on")
