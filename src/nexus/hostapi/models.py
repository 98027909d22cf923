"""Wire models of the manager <-> agent contract (docs/dev/contracts.md): the agent HTTP API
(VM specs and states, guest exec and metrics, snapshots, networks, port forwards, volumes) and
agent registration/heartbeats. Both sides import this module; neither imports the other.

Between manager and agent, command output travels base64-encoded so arbitrary bytes
round-trip intact.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VmState = Literal["stopped", "starting", "running", "paused", "stopping", "failed"]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_OUTPUT_CAP = 64 * 1024 * 1024
SnapshotKind = Literal["full", "disk"]


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


class NetworkRef(BaseModel):
    """The Nexus network a NIC joins: the agent ensures its bridge and rules."""

    id: str
    cidr: str
    nat: bool = True
    isolated: bool = False


class NicConfig(BaseModel):
    """One NIC of a VM (``net<i>``, the guest's ``eth<i>``).

    With ``network`` the agent creates the tap and writes its name into ``tap`` (which the
    VMM driver reads); without it ``tap`` names a tap wired by the caller (tests, custom
    setups)."""

    model_config = ConfigDict(extra="ignore")

    id: str = ""
    mac: str | None = None
    ip: str | None = None
    prefix: int | None = None
    gateway: str | None = None
    network: NetworkRef | None = None
    tap: str | None = None


class VolumeRef(BaseModel):
    """A volume attached to a VM: its file is ``<state_dir>/volumes/<id>.img`` on the host."""

    id: str
    read_only: bool = False


class VmSpec(BaseModel):
    """Desired machine for one VM (``PUT /v1/vms/{id}``)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=ID_PATTERN)
    name: str = ""
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=256, ge=72, le=1024 * 1024)
    disk_size_mib: int | None = Field(default=None, ge=1)
    image: ImageRef
    kernel_args: str = ""
    nics: list[NicConfig] = Field(default_factory=list)
    volumes: list[VolumeRef] = Field(default_factory=list)
    image_disks: list[ImageRef] = Field(default_factory=list, max_length=4)
    """Read-only content-addressed disks attached after the volumes: each ref's
    ``rootfs.ext4`` (a container image's file system), found or fetched like an image's."""


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


# --- guest exec and metrics ------------------------------------------------------------


class AgentExecRequest(BaseModel):
    """``POST /v1/vms/{id}/exec`` on the agent."""

    argv: list[str] = Field(min_length=1, max_length=4096)
    env: dict[str, str] | None = None
    cwd: str | None = None
    stdin_b64: str = ""
    timeout_s: float = Field(default=60.0, ge=0, le=86400)
    max_output: int = Field(default=16 * 1024 * 1024, ge=0, le=MAX_OUTPUT_CAP)


class AgentExecResult(BaseModel):
    """The result of one exec (output base64)."""

    exit_code: int
    stdout_b64: str
    stderr_b64: str
    duration_ms: int
    timed_out: bool
    truncated: bool
    signal: int | None = None


class HostVmMetrics(BaseModel):
    """What the host sees of one VM's VMM process and files."""

    vmm_pid: int | None = None
    cpu_time_s: float | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    disk_allocated_bytes: int | None = None
    disk_size_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None


class GuestVmMetrics(BaseModel):
    """What the guest agent reports (``metrics`` op)."""

    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    cpus: int | None = None
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    mem_used_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_used_bytes: int | None = None
    disk_free_bytes: int | None = None
    uptime_s: float | None = None
    procs: int | None = None


class VmMetrics(BaseModel):
    """``GET /v1/vms/{id}/metrics`` on the agent: one sample."""

    vm_id: str
    sampled_at: datetime
    state: str
    host: HostVmMetrics
    guest: GuestVmMetrics | None = None
    guest_error: str | None = None


# --- snapshots, restores, clones ---------------------------------------------------------


class SnapshotRequest(BaseModel):
    """``POST /v1/vms/{vm_id}/snapshots``."""

    snapshot_id: str = Field(pattern=ID_PATTERN)
    include_memory: bool = True


class SnapshotInfo(BaseModel):
    """A snapshot as stored on the host."""

    id: str
    vm_id: str
    kind: SnapshotKind
    size_bytes: int
    files: dict[str, dict[str, Any]]
    disk_method: str
    snapshot_ms: int
    downtime_ms: int
    created_at: datetime


class RestoreRequest(BaseModel):
    """``POST /v1/vms/{vm_id}/restore``: roll an existing VM back to a snapshot."""

    snapshot_id: str = Field(pattern=ID_PATTERN)


class RestoreNewRequest(BaseModel):
    """``POST /v1/snapshots/{sid}/vms``: a new VM (``spec.id``) from a snapshot."""

    spec: VmSpec
    start: bool = True
    reseed: bool = True


class RestoreResult(BaseModel):
    """What a restore did and how long it took."""

    status: VmStatus
    kind: SnapshotKind
    restore_ms: int
    disk_method: str
    reseed: dict[str, Any] | None = None


class CloneRequest(BaseModel):
    """``POST /v1/vms/{src}/clone``: a new VM (``spec.id``) with a copy of src's disk."""

    spec: VmSpec


class CloneResult(BaseModel):
    """The new VM's status and how its disk was copied (``reflink`` or ``sparse-copy``)."""

    status: VmStatus
    disk_method: str
    clone_ms: int


# --- networks, port forwards, volumes -----------------------------------------------------


class NetworkBody(BaseModel):
    """A network's host-side settings."""

    cidr: str
    nat: bool = True
    isolated: bool = False


class PortForwardBody(BaseModel):
    """A published port of a VM."""

    vm_id: str = Field(pattern=ID_PATTERN)
    host_port: int = Field(ge=1, le=65535)
    guest_ip: str
    guest_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


class VolumeBody(BaseModel):
    """Create (sparse + mkfs) or grow a volume file."""

    size_mib: int = Field(ge=1, le=16 * 1024 * 1024)
    filesystem: Literal["ext4", "raw"] = "ext4"


class VolumeInfo(BaseModel):
    """A volume file on this host."""

    id: str
    path: str
    size_mib: int
