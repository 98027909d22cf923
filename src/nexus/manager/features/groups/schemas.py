"""Instance group API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nexus.core.paging import Page
from nexus.manager.features.vms.schemas import IMAGE_REF_PATTERN, NAME_PATTERN, check_labels

MAX_GROUP_SIZE = 100


class ScaleRule(BaseModel):
    """Target tracking on CPU: every policy pass after ``cooldown_s`` since the last change,
    ``desired`` becomes ``ceil(members * average / target_percent)`` (within min..max), where
    ``average`` is the members' mean CPU (per vCPU, host-measured) over the last
    ``window_s``."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal["cpu"] = "cpu"
    target_percent: float = Field(gt=0, le=100)
    window_s: int = Field(default=60, ge=5, le=3600)
    cooldown_s: int = Field(default=120, ge=0, le=86400)


class GroupTemplate(BaseModel):
    """The VM every member is made from (the fields of ``POST /v1/vms`` that make sense for
    identical members)."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(default="default", min_length=1, max_length=64, pattern=IMAGE_REF_PATTERN)
    vcpus: int = Field(default=1, ge=1, le=32)
    memory_mib: int = Field(default=256, ge=128, le=256 * 1024)
    disk_size_mib: int | None = Field(default=None, ge=64, le=1024 * 1024)
    networks: list[str] = Field(default_factory=lambda: ["default"], max_length=8)
    labels: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels")(check_labels)


def _sizes(lo: int, hi: int, desired: int | None) -> None:
    if lo > hi:
        raise ValueError(f"min ({lo}) is above max ({hi})")
    if desired is not None and not lo <= desired <= hi:
        raise ValueError(f"desired ({desired}) must be between min ({lo}) and max ({hi})")


class GroupCreate(BaseModel):
    """``POST /v1/groups``: ``desired`` (default ``min``) VMs from ``template``, kept running
    by the manager; ``scale_rule`` moves ``desired`` between ``min`` and ``max``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, max_length=50, description="members are <name>-<n>")
    description: str = Field(default="", max_length=1000)
    template: GroupTemplate
    min: int = Field(default=1, ge=0, le=MAX_GROUP_SIZE)
    max: int = Field(default=1, ge=1, le=MAX_GROUP_SIZE)
    desired: int | None = Field(default=None, ge=0, le=MAX_GROUP_SIZE)
    scale_rule: ScaleRule | None = None

    @model_validator(mode="after")
    def _check(self) -> GroupCreate:
        _sizes(self.min, self.max, self.desired)
        return self


class GroupUpdate(BaseModel):
    """``PATCH /v1/groups/{id}``: sizes, rule (``null`` removes it), description."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=1000)
    min: int | None = Field(default=None, ge=0, le=MAX_GROUP_SIZE)
    max: int | None = Field(default=None, ge=1, le=MAX_GROUP_SIZE)
    desired: int | None = Field(default=None, ge=0, le=MAX_GROUP_SIZE)
    scale_rule: ScaleRule | None = None


class GroupScale(BaseModel):
    """``POST /v1/groups/{id}/scale``."""

    model_config = ConfigDict(extra="forbid")
    desired: int = Field(ge=0, le=MAX_GROUP_SIZE)


class GroupRead(BaseModel):
    """An instance group and its members (VM ids)."""

    id: str
    name: str
    description: str
    template: dict[str, Any]
    min: int
    max: int
    desired: int
    scale_rule: dict[str, Any] | None
    members: list[str]
    running: int
    last_scaled_at: datetime | None
    state_reason: str | None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class GroupPage(Page[GroupRead]):
    """A page of groups."""
