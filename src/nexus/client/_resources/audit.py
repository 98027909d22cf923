"""The audit log (``/v1/audit``): who did what, when, from where, with which outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from nexus.client._base import AsyncCollection, AsyncPager, Resource, SyncCollection, SyncPager

Outcome = Literal["success", "denied", "failure"]


class AuditEvent(Resource):
    """One audit row (mutations and denied attempts)."""

    id: str
    at: datetime
    actor_user_id: str | None = None
    actor_username: str | None = None
    token_id: str | None = None
    action: str
    resource_type: str
    resource_id: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    outcome: Outcome
    detail: str | None = None
    request_id: str | None = None
    source_ip: str | None = None


def _filters(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


class Audit(SyncCollection[AuditEvent]):
    """``client.audit``: iterate audit events, newest first (cursor pagination).

    Example:
        >>> for ev in client.audit.list(action="user.create", limit=20):
        ...     print(ev.at, ev.actor_username, ev.resource_id)
    """

    path = "/v1/audit"
    model = AuditEvent

    def list(  # type: ignore[override]
        self,
        *,
        actor: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        action: str | None = None,
        outcome: Outcome | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        page_size: int | None = None,
    ) -> SyncPager[AuditEvent]:
        """Events matching all given filters (``actor``: user id or username)."""
        return super().list(
            limit=limit,
            page_size=page_size,
            **_filters(
                actor=actor,
                resource_type=resource_type,
                resource_id=resource_id,
                action=action,
                outcome=outcome,
                since=since,
                until=until,
            ),
        )


class AsyncAudit(AsyncCollection[AuditEvent]):
    """``AsyncClient.audit`` (see :class:`Audit`)."""

    path = "/v1/audit"
    model = AuditEvent

    def list(  # type: ignore[override]
        self,
        *,
        actor: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        action: str | None = None,
        outcome: Outcome | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        page_size: int | None = None,
    ) -> AsyncPager[AuditEvent]:
        """Events matching all given filters."""
        return super().list(
            limit=limit,
            page_size=page_size,
            **_filters(
                actor=actor,
                resource_type=resource_type,
                resource_id=resource_id,
                action=action,
                outcome=outcome,
                since=since,
                until=until,
            ),
        )
