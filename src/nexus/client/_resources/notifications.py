"""Notifications (``/v1/notifications``): messages for you, derived from events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from nexus.client._base import AsyncCollection, AsyncPager, Resource, SyncCollection, SyncPager

__all__ = [
    "AsyncNotifications",
    "Notification",
    "NotificationPreferences",
    "Notifications",
]


class Notification(Resource):
    """A message for you; ``read_at`` is None while unread."""

    id: str
    created_at: datetime
    kind: str
    title: str
    body: str = ""
    resource_type: str | None = None
    resource_id: str | None = None
    read_at: datetime | None = None


class NotificationPreferences(Resource):
    """What you are told: nothing while ``muted``; every kind but ``disabled_kinds``."""

    muted: bool = False
    disabled_kinds: list[str] = []
    kinds: list[str] = []


def _prefs_body(muted: bool | None, disabled_kinds: Sequence[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if muted is not None:
        body["muted"] = muted
    if disabled_kinds is not None:
        body["disabled_kinds"] = list(disabled_kinds)
    return body


class Notifications(SyncCollection[Notification]):
    """``client.notifications``: list, mark read, preferences.

    Example:
        >>> for n in client.notifications.list(unread=True):
        ...     print(n.kind, n.title)
        ...     client.notifications.read(n.id)
        >>> client.notifications.set_preferences(disabled_kinds=["operation_succeeded"])
    """

    path = "/v1/notifications"
    model = Notification

    def list(  # type: ignore[override]
        self, *, unread: bool = False, limit: int | None = None, page_size: int | None = None
    ) -> SyncPager[Notification]:
        """Your notifications, newest first (``unread``: only unread ones)."""
        return super().list(limit=limit, page_size=page_size, unread=unread or None)

    def unread_count(self) -> int:
        """How many of your notifications are unread."""
        return int(self._http.request("GET", f"{self.path}/summary").json()["unread"])

    def read(self, id: str, *, read: bool = True) -> Notification:
        """Mark one read (``read=False``: unread again)."""
        return self._update(id, {"read": read})  # type: ignore[no-any-return]

    def read_all(self) -> int:
        """Mark all read; how many were unread."""
        return int(self._http.request("POST", f"{self.path}/read-all").json()["marked"])

    def preferences(self) -> NotificationPreferences:
        """Your preferences."""
        data = self._http.request("GET", f"{self.path}/preferences").json()
        return NotificationPreferences.model_validate(data)

    def set_preferences(
        self, *, muted: bool | None = None, disabled_kinds: Sequence[str] | None = None
    ) -> NotificationPreferences:
        """Change your preferences (None leaves a field as it is)."""
        data = self._http.request(
            "PUT", f"{self.path}/preferences", json=_prefs_body(muted, disabled_kinds)
        ).json()
        return NotificationPreferences.model_validate(data)


class AsyncNotifications(AsyncCollection[Notification]):
    """``AsyncClient.notifications`` (see :class:`Notifications`)."""

    path = "/v1/notifications"
    model = Notification

    def list(  # type: ignore[override]
        self, *, unread: bool = False, limit: int | None = None, page_size: int | None = None
    ) -> AsyncPager[Notification]:
        """Your notifications, newest first."""
        return super().list(limit=limit, page_size=page_size, unread=unread or None)

    async def unread_count(self) -> int:
        """How many of your notifications are unread."""
        resp = await self._http.request("GET", f"{self.path}/summary")
        return int(resp.json()["unread"])

    async def read(self, id: str, *, read: bool = True) -> Notification:
        """Mark one read (or unread)."""
        return await self._update(id, {"read": read})  # type: ignore[no-any-return]

    async def read_all(self) -> int:
        """Mark all read; how many were unread."""
        resp = await self._http.request("POST", f"{self.path}/read-all")
        return int(resp.json()["marked"])

    async def preferences(self) -> NotificationPreferences:
        """Your preferences."""
        resp = await self._http.request("GET", f"{self.path}/preferences")
        return NotificationPreferences.model_validate(resp.json())

    async def set_preferences(
        self, *, muted: bool | None = None, disabled_kinds: Sequence[str] | None = None
    ) -> NotificationPreferences:
        """Change your preferences."""
        resp = await self._http.request(
            "PUT", f"{self.path}/preferences", json=_prefs_body(muted, disabled_kinds)
        )
        return NotificationPreferences.model_validate(resp.json())
