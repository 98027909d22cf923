"""Template API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nexus.manager.features.vms.schemas import NAME_PATTERN, _check_labels


class TemplateSpec(BaseModel):
    """The VM a template makes. ``networks`` / ``volumes`` are passed to ``VmCreate`` when the
    networks / volumes features add those fields to it (stored either way)."""

    model_config = ConfigDict(extra="forbid")
    vcpus: int = Field(default=1, ge=1, le=32)
    memory_mib: int = Field(default=256, ge=128, le=256 * 1024)
    image: str = Field(default="default", min_length=1, max_length=64)
    disk_size_mib: int | None = Field(default=None, ge=64, le=1024 * 1024)
    networks: list[Any] = Field(default_factory=list, max_length=16)
    volumes: list[Any] = Field(default_factory=list, max_length=16)
    labels: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels")(_check_labels)


class TemplateCreate(BaseModel):
    """``POST /v1/templates``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=1000)
    public: bool = False
    spec: TemplateSpec


class TemplateUpdate(BaseModel):
    """``PATCH /v1/templates/{id}`` (owner or admin)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=1000)
    public: bool | None = None
    spec: TemplateSpec | None = None


class TemplateRead(BaseModel):
    """A template as the API shows it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    public: bool
    spec: dict[str, Any]
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class TemplatePage(BaseModel):
    """A page of templates."""

    items: list[TemplateRead]
    total: int
    limit: int
    offset: int


class InstantiateOverrides(BaseModel):
    """What an instantiation may change from the template's spec."""

    model_config = ConfigDict(extra="forbid")
    vcpus: int | None = Field(default=None, ge=1, le=32)
    memory_mib: int | None = Field(default=None, ge=128, le=256 * 1024)
    image: str | None = Field(default=None, min_length=1, max_length=64)
    disk_size_mib: int | None = Field(default=None, ge=64, le=1024 * 1024)
    labels: dict[str, str] | None = None

    _labels = field_validator("labels")(_check_labels)


class TemplateInstantiate(BaseModel):
    """``POST /v1/templates/{id}/instantiate``: a VM from the template."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=1000)
    start: bool = True
    overrides: InstantiateOverrides | None = None
