"""Schedule API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page

ResourceType = Literal["vm", "group"]
Action = Literal["start", "stop", "restart", "snapshot", "delete", "scale"]
CRON_DOC = (
    "five-field cron expression (minute hour day-of-month month day-of-week), e.g. "
    "`0 19 * * 1-5` (weekdays at 19:00), evaluated in `timezone`"
)
ARGS_DOC = (
    "per action: snapshot `{include_memory: bool, keep: n}`; stop `{force: bool}`; "
    "scale `{desired: n}` (groups)"
)


class ScheduleCreate(BaseModel):
    """``POST /v1/schedules``. Actions: a VM's ``start``, ``stop``, ``restart`` (reboot a
    running VM, start a stopped one), ``snapshot``, ``delete``; a group's ``scale`` (set
    ``desired`` to ``args.desired``) and ``delete``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=63)
    resource_type: ResourceType = "vm"
    resource_id: str = Field(min_length=1, max_length=40)
    action: Action
    cron: str = Field(min_length=9, max_length=128, description=CRON_DOC)
    timezone: str = Field(
        default="UTC", max_length=64, description="IANA time zone, e.g. `Europe/Berlin`"
    )
    enabled: bool = True
    args: dict[str, Any] = Field(default_factory=dict, description=ARGS_DOC)


class ScheduleUpdate(BaseModel):
    """``PATCH /v1/schedules/{id}``: any of these; a new cron, timezone or enabling it
    recomputes ``next_run_at`` from now."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=63)
    action: Action | None = None
    cron: str | None = Field(default=None, min_length=9, max_length=128, description=CRON_DOC)
    timezone: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    args: dict[str, Any] | None = Field(default=None, description=ARGS_DOC)


class ScheduleRead(BaseModel):
    """A schedule. ``disabled_reason`` says why it turned itself off (its resource was
    deleted)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    resource_type: ResourceType
    resource_id: str
    action: Action
    cron: str
    timezone: str
    enabled: bool
    args: dict[str, Any]
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_operation_id: str | None
    disabled_reason: str | None
    disabled_at: datetime | None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class SchedulePage(Page[ScheduleRead]):
    """A page of schedules."""


class ScheduleRunRead(BaseModel):
    """One run: when it was due, the ``schedule.run`` operation and its outcome, and how many
    due times were missed while no manager ran (folded into this one run)."""

    id: str
    schedule_id: str
    scheduled_for: datetime
    missed: int
    detail: str | None
    operation_id: str | None
    status: str | None
    error: str | None
    result: dict[str, Any] | None
    created_at: datetime


class ScheduleRunPage(Page[ScheduleRunRead]):
    """A page of runs, newest first."""
