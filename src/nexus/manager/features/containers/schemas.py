"""Container and container image API schemas."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nexus.core.paging import Page

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
IMAGE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$"
RESTART_PATTERN = r"^(no|always|on-failure(:[0-9]{1,4})?)$"


class ContainerImagePull(BaseModel):
    """Pull an image from a registry with skopeo (an operation)."""

    model_config = ConfigDict(extra="forbid")
    reference: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9][^\s]*$",
        description="registry reference, e.g. `registry.example:5000/app:1.0`",
    )  # fmt: skip
    name: str | None = Field(
        default=None, pattern=IMAGE_NAME_PATTERN, description="defaults to the reference"
    )
    username: str | None = Field(default=None, max_length=255, description="registry user")
    password: str | None = Field(
        default=None, max_length=1024,
        description="registry password or token: stored sealed, never returned",
    )  # fmt: skip
    tls_verify: bool = Field(default=True, description="false for a plain-HTTP registry")


class ContainerImageRead(BaseModel):
    """A container image (its config is what containers of it run by default)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    source: str
    reference: str | None
    digest: str
    rootfs_sha256: str
    size_bytes: int
    config: dict[str, Any]
    registry_username: str | None = None
    has_registry_password: bool = False
    created_by_user_id: str
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> ContainerImageRead:
        """From a row, saying only whether a password is stored."""
        out = cls.model_validate(row)
        out.has_registry_password = bool(row.registry_password)
        return out


class ContainerImagePage(Page[ContainerImageRead]):
    """A page of container images."""


class PortMapping(BaseModel):
    """Publish ``container_port`` on ``host_port`` of the container's host (omit host_port
    to get a free one from ``port_forward_range``)."""

    model_config = ConfigDict(extra="forbid")
    container_port: int = Field(ge=1, le=65535)
    host_port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


#: Where a volume may not be mounted in a container (the runtime's own mounts).
RESERVED_MOUNTS = ("/proc", "/sys", "/dev")
MAX_VOLUMES = 8


def check_mount_path(path: str) -> str:
    """An absolute path without ``..``, not ``/`` and not under /proc, /sys or /dev;
    returned normalised (no ``.``, no doubled or trailing ``/``)."""
    if not path.startswith("/") or len(path) > 1024:
        raise ValueError(f"mount_path {path[:80]!r}: must be an absolute path")
    if not re.fullmatch(r"[A-Za-z0-9._@+=,:/-]+", path):
        raise ValueError(f"mount_path {path[:80]!r}: letters, digits and ._@+=,:- only")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"mount_path {path[:80]!r}: '..' is not allowed")
    if not parts:
        raise ValueError("mount_path: '/' cannot be a volume")
    norm = "/" + "/".join(parts)
    for r in RESERVED_MOUNTS:
        if norm == r or norm.startswith(r + "/"):
            raise ValueError(f"mount_path {norm!r}: {r} belongs to the container runtime")
    return norm


class ContainerVolume(BaseModel):
    """A Nexus volume (``ext4``, yours, attached nowhere else) mounted at ``mount_path``
    inside the container; it is attached to the container's VM for the container's life."""

    model_config = ConfigDict(extra="forbid")
    volume: str = Field(min_length=1, max_length=64, description="volume id or name")
    mount_path: str = Field(
        max_length=1024, description="absolute; not '/', not under /proc, /sys or /dev"
    )
    read_only: bool = Field(default=False, description="a read-only disk and bind mount")

    @field_validator("mount_path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_mount_path(v)


class ContainerCreate(BaseModel):
    """A container: an OCI image run in a microVM of its own."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="DNS label: a-z, 0-9, '-'")
    image: str = Field(min_length=1, max_length=255, description="container image id or name")
    command: list[str] | None = Field(
        default=None, max_length=256, description="replaces the image's entrypoint"
    )
    args: list[str] | None = Field(
        default=None, max_length=4096, description="replaces the image's cmd"
    )
    env: dict[str, str] = Field(default_factory=dict, description="merged over the image's")
    workdir: str | None = Field(default=None, max_length=4096, pattern=r"^/")
    user: str | None = Field(default=None, max_length=255, pattern=r"^[A-Za-z0-9_.:-]+$")
    ports: list[PortMapping] = Field(default_factory=list, max_length=32)
    volumes: list[ContainerVolume] = Field(
        default_factory=list, max_length=MAX_VOLUMES,
        description="volumes to mount (one mount path each, each volume once)",
    )  # fmt: skip
    vcpus: int = Field(default=1, ge=1, le=32)
    memory_mib: int = Field(default=256, ge=128, le=256 * 1024)
    restart_policy: str = Field(
        default="no", pattern=RESTART_PATTERN, description="no | always | on-failure[:max]"
    )
    network: str | None = Field(default=None, max_length=64, description="default: 'default'")
    base_image: str = Field(
        default="default", max_length=64, description="the VM image the microVM boots"
    )
    ttl_s: int | None = Field(default=None, ge=60, description="delete after this many seconds")

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 256 or any(not k or "=" in k or "\0" in k + val for k, val in v.items()):
            raise ValueError("env: at most 256 NAME=value pairs, names without '='")
        return v

    @model_validator(mode="after")
    def _distinct_volumes(self) -> ContainerCreate:
        paths = [v.mount_path for v in self.volumes]
        for p in paths:
            if any(q != p and (q + "/").startswith(p + "/") for q in paths):
                raise ValueError(f"volumes: mount paths may not nest ({p} holds another)")
        if len(set(paths)) != len(paths):
            raise ValueError("volumes: each mount_path once")
        if len({v.volume for v in self.volumes}) != len(self.volumes):
            raise ValueError("volumes: each volume once")
        return self


class ContainerUpdate(BaseModel):
    """What can change on a container without recreating it."""

    model_config = ConfigDict(extra="forbid")
    restart_policy: str | None = Field(default=None, pattern=RESTART_PATTERN)


class ContainerRead(BaseModel):
    """A container, its state, exit code, restart count and last error."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    image_id: str
    vm_id: str | None
    spec: dict[str, Any]
    restart_policy: str
    max_restarts: int | None
    desired_state: str
    state: str
    exit_code: int | None
    restart_count: int
    last_error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    next_restart_at: datetime | None
    created_by_user_id: str
    created_at: datetime


class ContainerPage(Page[ContainerRead]):
    """A page of containers."""


class ContainerExec(BaseModel):
    """Run a command inside the running container's root, as its user."""

    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(min_length=1, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = Field(default=None, max_length=255, pattern=r"^[A-Za-z0-9_.:-]+$")
    workdir: str | None = Field(default=None, max_length=4096, pattern=r"^/")
    timeout_s: float = Field(default=60, ge=1, le=3600)


class ContainerExecResult(BaseModel):
    """An exec's exit code and output."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool


class LogLine(BaseModel):
    """One line the container wrote."""

    time: datetime
    stream: Literal["stdout", "stderr"]
    line: str


class ContainerLogs(BaseModel):
    """Log lines, oldest first."""

    lines: list[LogLine]


class ContainerShellTicket(BaseModel):
    """A single-use ticket for the container's terminal WebSocket: open
    ``ws_path?ticket=<ticket>`` within ``expires_at``."""

    ticket: str
    container_id: str
    expires_at: datetime
    ws_path: str
