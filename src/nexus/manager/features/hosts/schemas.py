"""Host API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class JoinTokenCreate(BaseModel):
    """How long the join token stays valid."""

    model_config = ConfigDict(extra="forbid")
    expires_in_s: int = Field(default=3600, ge=60, le=30 * 86400)


class JoinTokenCreated(BaseModel):
    """The join token (shown once): pass it to ``nexus-agent --join-token``."""

    id: str
    token: str
    expires_at: datetime


class HostRead(BaseModel):
    """A host as users see it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    agent_url: str
    status: Literal["healthy", "unhealthy", "draining"]
    drained: bool
    last_heartbeat_at: datetime | None
    driver: str
    accel: str
    accel_warning: str | None
    vcpus: int
    memory_mib: int
    disk_free_mib: int
    version: str
    vm_count: int = 0
    allocated_vcpus: int = 0
    allocated_memory_mib: int = 0
    created_at: datetime
    updated_at: datetime
