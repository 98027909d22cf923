"""Image API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class ImageBuild(BaseModel):
    """Build one of Nexus's images from Debian packages."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["default", "test"] = "default"
    force: bool = Field(
        default=False,
        description="rebuild even if cached; admin only (it clears the shared build cache)",
    )
    public: bool | None = Field(
        default=None,
        description="make the image visible to every user; admin only. Default: public when "
        "an admin builds it, private (yours) when an operator does",
    )


class ImageImport(BaseModel):
    """Register an image from files already on the manager's machine (admin only)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=1000)
    kernel_path: str = Field(min_length=1, max_length=1024)
    rootfs_path: str = Field(min_length=1, max_length=1024)
    initrd_path: str | None = Field(default=None, max_length=1024)
    public: bool = False


class ImageUpdate(BaseModel):
    """Editable image fields."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=1000)
    public: bool | None = None


class ImageRead(BaseModel):
    """An image in the catalogue."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    source: str
    public: bool
    kernel_sha256: str
    initrd_sha256: str | None
    rootfs_sha256: str
    kernel_version: str
    size_bytes: int
    rootfs_size_mib: int
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class ImagePage(Page[ImageRead]):
    """A page of images."""
