"""VM API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nexus.core.paging import Page
from nexus.manager.features.networks.schemas import VmNicRead
from nexus.manager.features.vms.states import VmStateName

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
#: An image id (``img_...``) or name: never a control character (PostgreSQL refuses NUL).
IMAGE_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def check_labels(v: dict[str, str] | None) -> dict[str, str] | None:
    """The labels of a resource: at most 64, keys and values of the allowed shapes."""
    if v is None:
        return v
    if len(v) > 64:
        raise ValueError("at most 64 labels")
    for k, val in v.items():
        if not (1 <= len(k) <= 63) or len(val) > 255:
            raise ValueError(f"label '{k[:70]}': keys 1-63 chars, values up to 255")
    return v


class VmCreate(BaseModel):
    """A new VM. ``image`` is an image id or name (``default`` after ``make up``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="DNS label: a-z, 0-9, '-'")
    description: str = Field(default="", max_length=1000)
    vcpus: int = Field(default=1, ge=1, le=32)
    memory_mib: int = Field(default=256, ge=128, le=256 * 1024)
    image: str = Field(
        default="default",
        min_length=1,
        max_length=64,
        pattern=IMAGE_REF_PATTERN,
        description="image id or name",
    )
    disk_size_mib: int | None = Field(
        default=None, ge=64, le=1024 * 1024, description="grow the root disk to this size"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    start: bool = True
    networks: list[str] = Field(
        default_factory=lambda: ["default"],
        max_length=8,
        description="networks (ids or names) to join, one NIC each, in order (eth0, eth1...)",
    )
    from_snapshot: str | None = Field(
        default=None, max_length=64, description="snapshot id: a new VM restored from it"
    )
    ttl_s: int | None = Field(
        default=None, ge=60, description="delete the VM this many seconds after creation"
    )
    expires_at: datetime | None = Field(
        default=None, description="delete the VM at this time (instead of ttl_s)"
    )

    _labels = field_validator("labels")(check_labels)


class VmUpdate(BaseModel):
    """Editable fields; ``vcpus``/``memory_mib`` only while the VM is stopped."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=1000)
    labels: dict[str, str] | None = None
    vcpus: int | None = Field(default=None, ge=1, le=32)
    memory_mib: int | None = Field(default=None, ge=128, le=256 * 1024)

    _labels = field_validator("labels")(check_labels)


class VmRead(BaseModel):
    """A VM as the API shows it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    labels: dict[str, Any]
    vcpus: int
    memory_mib: int
    disk_size_mib: int | None
    image_id: str
    host_id: str | None
    state: VmStateName
    desired_state: str
    state_reason: str | None
    pid: int | None
    ready_at: datetime | None
    started_at: datetime | None
    cloned_from_id: str | None
    expires_at: datetime | None = Field(
        default=None, description="when the VM is deleted (TTL); null: never"
    )
    ttl_warned_at: datetime | None = Field(
        default=None, description="when its owner was warned of the coming expiry"
    )
    group_id: str | None = Field(default=None, description="the instance group it belongs to")
    nics: list[VmNicRead] = Field(default_factory=list)
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class VmPage(Page[VmRead]):
    """A page of VMs."""
