"""Wire models of the agent HTTP API and of agent registration (docs/dev/contracts.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VmState = Literal["stopped", "starting", "running", "paused", "stopping", "failed"]


class HostFacts(BaseModel):
    """What a host offers; sent at registration and with every heartbeat.

    The live fields (load, available memory, disk size, uptime, VMM RSS) are optional so
    that facts from agents that predate them still validate; ``None`` means "not reported".
    """

    hostname: str
    driver: str
    accel: str
    accel_warning: str | None = None
    vcpus: int
    memory_mib: int
    disk_free_mib: int
    version: str
    vm_count: int = 0
    load_avg: list[float] | None = None
    """1, 5 and 15 minute load averages (``os.getloadavg``)."""
    mem_available_mib: int | None = None
    """``MemAvailable`` of ``/proc/meminfo``."""
    disk_total_mib: int | None = None
    """Size of the filesystem holding the VM state directories (``disk_free_mib``'s)."""
    uptime_s: float | None = None
    """Seconds since the host booted (``/proc/uptime``)."""
    vmm_rss_mib: int | None = None
    """Resident memory of this host's running VMM processes, summed."""
    subnets: list[str] | None = None
    """The host's own IPv4 address networks, routes and gateways (Nexus bridges left out):
    the manager refuses networks that overlap them."""


class ImageRef(BaseModel):
    """The image a VM boots: a directory with vmlinuz/vmlinux, initrd.img, rootfs.ext4."""

    id: str
    kernel_sha256: str
    initrd_sha256: str | None = None
    rootfs_sha256: str
    source_dir: str


class VmSpec(BaseModel):
    """Desired machine for one VM (``PUT /v1/vms/{id}``)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str = ""
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=256, ge=72, le=1024 * 1024)
    disk_size_mib: int | None = Field(default=None, ge=1)
    image: ImageRef
    kernel_args: str = ""
    nics: list[dict[str, Any]] = Field(default_factory=list)
    volumes: list[dict[str, Any]] = Field(default_factory=list)


class VmStatus(BaseModel):
    """Actual state of one VM on this host."""

    id: str
    state: VmState
    pid: int | None = None
    guest_ready: bool = False
    ready_at: datetime | None = None
    error: str | None = None
    console_tail: str | None = None
    guest_channel_error: str | None = None
    """Why the agent dropped the guest channel (flood or protocol violation) since the VM
    last started; the manager copies it into the VM's ``state_reason`` and audits it."""


class RegisterRequest(BaseModel):
    """``POST {manager}/v1/hosts/register``."""

    join_token: str
    name: str
    agent_url: str
    facts: HostFacts
    agent_cert_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the agent API's TLS certificate (https agent_url): the "
        "manager pins it and refuses any other certificate",
    )


class RegisterResponse(BaseModel):
    """The per-host credentials the manager returns at registration."""

    host_id: str
    host_token: str
    agent_token: str


class Heartbeat(BaseModel):
    """``POST {manager}/v1/hosts/{host_id}/heartbeat``."""

    facts: HostFacts
    vms: list[VmStatus]
