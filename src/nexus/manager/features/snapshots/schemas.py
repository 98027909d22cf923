"""Snapshot and clone API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nexus.core.paging import Page
from nexus.manager.features.vms.schemas import NAME_PATTERN, check_labels


class SnapshotCreate(BaseModel):
    """``POST /v1/vms/{id}/snapshots``. A running VM gets a full snapshot (memory + device
    state + disk) unless ``include_memory`` is false; a stopped VM a disk snapshot."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="DNS label, unique per VM")
    description: str = Field(default="", max_length=1000)
    include_memory: bool = True


class SnapshotRead(BaseModel):
    """A snapshot as the API shows it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    vm_id: str
    vm_name: str
    host_id: str | None
    image_id: str
    vcpus: int
    memory_mib: int
    disk_size_mib: int | None
    include_memory: bool
    kind: Literal["full", "disk"] | None
    state: str
    state_reason: str | None
    size_bytes: int | None
    files: dict[str, Any] | None
    timings: dict[str, Any] | None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class SnapshotPage(Page[SnapshotRead]):
    """A page of snapshots."""


class CloneOverrides(BaseModel):
    """What a clone may change from its source."""

    model_config = ConfigDict(extra="forbid")
    network: str | None = Field(default=None, max_length=64, description="network id or name")
    vcpus: int | None = Field(default=None, ge=1, le=32)
    memory_mib: int | None = Field(default=None, ge=128, le=256 * 1024)


class VmClone(BaseModel):
    """``POST /v1/vms/{id}/clone``: a new, independent VM with a copy-on-write copy of the
    source's root disk."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=1000)
    labels: dict[str, str] | None = None
    start: bool = True
    overrides: CloneOverrides | None = None

    _labels = field_validator("labels")(check_labels)
