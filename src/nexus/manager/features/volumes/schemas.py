"""Volume API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nexus.core.paging import Page

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
MAX_SIZE_MIB = 1024 * 1024


class VolumeCreate(BaseModel):
    """A new volume. ``ext4`` volumes are formatted; ``raw`` ones are left empty."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="DNS label: a-z, 0-9, '-'")
    description: str = Field(default="", max_length=1000)
    size_mib: int = Field(ge=1, le=MAX_SIZE_MIB)
    filesystem: Literal["ext4", "raw"] = "ext4"

    @model_validator(mode="after")
    def _ext4_min(self) -> VolumeCreate:
        if self.filesystem == "ext4" and self.size_mib < 8:
            raise ValueError("an ext4 volume needs at least 8 MiB")
        return self


class VolumeUpdate(BaseModel):
    """Rename, describe, or grow (``size_mib``, larger only, while detached)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=1000)
    size_mib: int | None = Field(default=None, ge=1, le=MAX_SIZE_MIB)


class VolumeAttachmentRead(BaseModel):
    """Where a volume is attached."""

    model_config = ConfigDict(from_attributes=True)
    vm_id: str
    volume_id: str
    position: int
    read_only: bool
    device: str


class VolumeRead(BaseModel):
    """A volume as the API shows it."""

    id: str
    name: str
    description: str
    size_mib: int
    filesystem: str
    host_id: str | None
    attachment: VolumeAttachmentRead | None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class VolumeAttach(BaseModel):
    """Attach a volume to a stopped VM (it appears at the next boot)."""

    model_config = ConfigDict(extra="forbid")
    volume_id: str = Field(min_length=1, max_length=64, description="volume id or name")
    read_only: bool = False


class VolumePage(Page[VolumeRead]):
    """A page of volumes."""


class VolumeAttachmentPage(Page[VolumeAttachmentRead]):
    """A page of a VM's volume attachments, in device order."""
