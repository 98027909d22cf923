"""Host API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page

HostStatus = Literal["healthy", "unhealthy", "draining"]
"""``unhealthy``: no heartbeat for ``host_heartbeat_timeout_s``; ``draining``: healthy but
drained (no new VMs are placed on it)."""


class JoinTokenCreate(BaseModel):
    """How long the join token stays valid."""

    model_config = ConfigDict(extra="forbid")
    expires_in_s: int = Field(default=3600, ge=60, le=30 * 86400)


class JoinTokenCreated(BaseModel):
    """The join token (shown once): pass it to ``nexus-agent --join-token``."""

    id: str
    token: str
    expires_at: datetime


class HostSummary(BaseModel):
    """A host as non-admins see it: health and capacity, without the agent's address or
    what other tenants run there."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    status: HostStatus
    drained: bool
    last_heartbeat_at: datetime | None
    driver: str
    accel: str
    accel_warning: str | None
    vcpus: int
    memory_mib: int
    disk_free_mib: int
    version: str
    created_at: datetime
    updated_at: datetime


class HostRead(BaseModel):
    """A host as admins see it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    agent_url: str
    agent_cert_sha256: str | None = Field(
        default=None,
        description="SHA-256 of the https agent's certificate, pinned at registration "
        "(null: plain http, or verified against the system CAs)",
    )
    status: HostStatus
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


class HostMetrics(BaseModel):
    """A host's latest live facts (from its last heartbeat) with what the manager has
    placed on it. The live fields are None when the host's agent does not report them."""

    host_id: str
    name: str
    status: HostStatus
    sampled_at: datetime | None = Field(description="When the facts were sent (last heartbeat).")
    vcpus: int
    memory_mib: int
    mem_available_mib: int | None = None
    disk_free_mib: int
    disk_total_mib: int | None = None
    load_avg: list[float] | None = Field(default=None, description="1, 5, 15 minute load.")
    uptime_s: float | None = None
    vmm_rss_mib: int | None = Field(
        default=None, description="Resident memory of the host's running VMM processes."
    )
    vm_count: int = Field(default=0, description="VMs on the host (a non-admin's: their own).")
    vm_counts: dict[str, int] = Field(
        default_factory=dict,
        description="VMs placed on the host, by state (every state); a non-admin's own only.",
    )
    allocated_vcpus: int = 0
    allocated_memory_mib: int = 0
    vcpu_overcommit: int = Field(description="vCPUs placeable per host CPU.")
    vcpu_limit: int = Field(description="vcpus x vcpu_overcommit: the placement limit.")


class HostPage(Page[HostRead | HostSummary]):
    """A page of hosts (admins get ``HostRead``, others ``HostSummary``)."""
