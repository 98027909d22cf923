"""Schedules (``/v1/schedules``): cron-timed actions on VMs and instance groups."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from nexus.client._base import (
    AsyncCollection,
    AsyncPager,
    Resource,
    SyncCollection,
    SyncPager,
    async_listing,
    sync_listing,
)

ScheduleAction = Literal["start", "stop", "restart", "snapshot", "delete", "scale"]


class Schedule(Resource):
    """Run ``action`` on a VM or group at the times of ``cron`` in ``timezone``.
    ``disabled_reason`` says why it turned itself off (its resource was deleted)."""

    id: str
    name: str = ""
    resource_type: str
    resource_id: str
    action: str
    cron: str
    timezone: str
    enabled: bool
    args: dict[str, Any] = {}
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_operation_id: str | None = None
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class ScheduleRun(Resource):
    """One run: when it was due, its ``schedule.run`` operation and outcome, and how many
    due times it folded in after downtime (``missed``)."""

    id: str
    schedule_id: str
    scheduled_for: datetime
    missed: int = 0
    detail: str | None = None
    operation_id: str | None = None
    status: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    created_at: datetime


def _create_body(
    resource_id: str,
    action: str,
    cron: str,
    resource_type: str,
    timezone: str,
    enabled: bool,
    args: dict[str, Any] | None,
    name: str | None,
) -> dict[str, Any]:
    return {
        "resource_id": resource_id,
        "action": action,
        "cron": cron,
        "resource_type": resource_type,
        "timezone": timezone,
        "enabled": enabled,
        "args": args,
        "name": name,
    }


class Schedules(SyncCollection[Schedule]):
    """``client.schedules``: schedules you may see.

    Example:
        >>> s = client.schedules.create(vm.id, "stop", "0 19 * * 1-5", timezone="Europe/Berlin")
        >>> s.next_run_at
        >>> [r.status for r in client.schedules.runs(s.id)]
        >>> client.schedules.update(s.id, enabled=False)
    """

    path = "/v1/schedules"
    model = Schedule

    def create(
        self,
        resource_id: str,
        action: ScheduleAction,
        cron: str,
        *,
        resource_type: Literal["vm", "group"] = "vm",
        timezone: str = "UTC",
        enabled: bool = True,
        args: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> Schedule:
        """Create a schedule (``args``: snapshot ``{include_memory, keep}``, stop
        ``{force}``, scale ``{desired}``)."""
        body = _create_body(resource_id, action, cron, resource_type, timezone, enabled, args, name)
        s: Schedule = self._create(body)
        return s

    def update(self, id: str, **fields: Any) -> Schedule:
        """Change ``name``, ``action``, ``cron``, ``timezone``, ``enabled`` or ``args``."""
        s: Schedule = self._update(id, fields)
        return s

    def runs(self, id: str, *, limit: int | None = None) -> SyncPager[ScheduleRun]:
        """The schedule's runs, newest first."""
        return sync_listing(self._http, f"{self.path}/{id}/runs", ScheduleRun, limit=limit)


class AsyncSchedules(AsyncCollection[Schedule]):
    """``AsyncClient.schedules`` (see :class:`Schedules`)."""

    path = "/v1/schedules"
    model = Schedule

    async def create(
        self,
        resource_id: str,
        action: ScheduleAction,
        cron: str,
        *,
        resource_type: Literal["vm", "group"] = "vm",
        timezone: str = "UTC",
        enabled: bool = True,
        args: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> Schedule:
        """Create a schedule; see :meth:`Schedules.create`."""
        body = _create_body(resource_id, action, cron, resource_type, timezone, enabled, args, name)
        s: Schedule = await self._create(body)
        return s

    async def update(self, id: str, **fields: Any) -> Schedule:
        """Change a schedule."""
        s: Schedule = await self._update(id, fields)
        return s

    def runs(self, id: str, *, limit: int | None = None) -> AsyncPager[ScheduleRun]:
        """The schedule's runs, newest first."""
        return async_listing(self._http, f"{self.path}/{id}/runs", ScheduleRun, limit=limit)
