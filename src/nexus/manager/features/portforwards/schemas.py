"""Port forward API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page


class PortForwardCreate(BaseModel):
    """Publish ``guest_port`` of the VM's first NIC on ``host_port`` of its host."""

    model_config = ConfigDict(extra="forbid")
    host_port: int | None = Field(
        default=None, ge=1, le=65535, description="omit to pick one from port_forward_range"
    )
    guest_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


class PortForwardRead(BaseModel):
    """A published port."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    vm_id: str
    host_id: str
    host_port: int
    guest_ip: str
    guest_port: int
    protocol: str
    created_by_user_id: str
    created_at: datetime


class PortForwardPage(Page[PortForwardRead]):
    """A page of a VM's port forwards."""
