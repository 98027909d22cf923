"""Schedules and their runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track


class Schedule(ResourceMixin, Base):
    """Run ``action`` on a resource at the times of ``cron`` in ``timezone``.

    ``next_run_at`` (UTC) is when the policy loop runs it next. A schedule whose resource
    was deleted turns itself off: ``enabled`` false, ``disabled_reason`` and ``disabled_at``
    set (the owner is to be told)."""

    __tablename__ = "schedules"
    name: Mapped[str] = mapped_column(String(63), nullable=False, default="")
    resource_type: Mapped[str] = mapped_column(String(16), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(40), nullable=False, index=True)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    cron: Mapped[str] = mapped_column(String(128), nullable=False)
    timezone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    args: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    next_run_at: Mapped[datetime | None] = mapped_column(index=True)
    last_run_at: Mapped[datetime | None] = mapped_column()
    last_operation_id: Mapped[str | None] = mapped_column(String(40))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column()


class ScheduleRun(ResourceMixin, Base):
    """One run of a schedule: the operation it started (``schedule.run``), when it was due,
    and how many due times were missed (the manager was down) and folded into this one."""

    __tablename__ = "schedule_runs"
    schedule_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("schedules.id", ondelete="CASCADE"), nullable=False, index=True
    )
    scheduled_for: Mapped[datetime] = mapped_column(nullable=False)
    operation_id: Mapped[str | None] = mapped_column(String(40))
    missed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    detail: Mapped[str | None] = mapped_column(Text)


track(
    Schedule,
    Tracked(
        "schedule",
        state_attr="enabled",
        verbs={"False": "disabled", "True": "enabled"},
        ignore=frozenset({"next_run_at", "last_run_at", "last_operation_id", "disabled_at"}),
        payload=("resource_type", "resource_id", "action", "disabled_reason"),
    ),
)
track(
    ScheduleRun,
    Tracked("schedule_run", name_attr=None, payload=("schedule_id", "operation_id", "missed")),
)
