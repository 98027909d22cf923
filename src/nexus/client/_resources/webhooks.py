"""Webhooks (``/v1/webhooks``): your events POSTed to your endpoint, signed and retried."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from nexus.client._base import (
    AsyncCollection,
    AsyncPager,
    Resource,
    SyncCollection,
    SyncPager,
    async_listing,
    sync_listing,
)

__all__ = ["AsyncWebhooks", "Webhook", "WebhookCreated", "WebhookDelivery", "Webhooks"]


class Webhook(Resource):
    """A webhook (the secret is only in :class:`WebhookCreated`)."""

    id: str
    name: str
    url: str
    events: list[str]
    enabled: bool
    description: str = ""
    disabled_reason: str | None = None
    failing_since: datetime | None = None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class WebhookCreated(Webhook):
    """A new webhook with its signing ``secret`` — store it now; it is shown once."""

    secret: str


class WebhookDelivery(Resource):
    """One event for one webhook; ``id`` is the ``webhook-id`` header."""

    id: str
    webhook_id: str
    event_id: int | None = None
    event_type: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_latency_ms: float | None = None
    last_response: str | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    log: list[dict[str, Any]] = []
    body: dict[str, Any] = {}


def _create_body(**kw: Any) -> dict[str, Any]:
    return {
        k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in kw.items() if v is not None
    }


class Webhooks(SyncCollection[Webhook]):
    """``client.webhooks``: create, list, change, test and delete webhooks.

    Example:
        >>> hook = client.webhooks.create("ci", "https://ci.example/nexus", events=["vm.*"])
        >>> hook.secret          # verify signatures with it (Standard Webhooks)
        >>> client.webhooks.test(hook.id)
        >>> [d.status for d in client.webhooks.deliveries(hook.id)]
    """

    path = "/v1/webhooks"
    model = Webhook

    def create(
        self,
        name: str,
        url: str,
        *,
        events: Sequence[str] = ("*",),
        secret: str | None = None,
        enabled: bool = True,
        description: str = "",
    ) -> WebhookCreated:
        """Create a webhook; the answer carries its secret (shown once)."""
        body = _create_body(
            name=name,
            url=url,
            events=list(events),
            secret=secret,
            enabled=enabled,
            description=description,
        )
        return WebhookCreated.model_validate(
            self._http.request("POST", self.path, json=body).json()
        )

    def update(self, id: str, **changes: Any) -> Webhook:
        """Change ``name``, ``url``, ``events``, ``enabled`` or ``description``."""
        return self._update(id, _create_body(**changes))  # type: ignore[no-any-return]

    def deliveries(
        self, id: str, *, status: str | None = None, limit: int | None = None
    ) -> SyncPager[WebhookDelivery]:
        """The delivery log of a webhook, newest first."""
        filters = {"status": status} if status else {}
        return sync_listing(
            self._http,
            f"{self._item_path(id)}/deliveries",
            WebhookDelivery,
            filters,
            limit=limit,
        )

    def redeliver(self, id: str, delivery_id: str) -> WebhookDelivery:
        """Send a delivery again now (same ``webhook-id``)."""
        resp = self._http.request(
            "POST", f"{self._item_path(id)}/deliveries/{delivery_id}/redeliver"
        )
        return WebhookDelivery.model_validate(resp.json())

    def test(self, id: str) -> WebhookDelivery:
        """Queue a ``webhook.test`` delivery."""
        resp = self._http.request("POST", f"{self._item_path(id)}/test")
        return WebhookDelivery.model_validate(resp.json())


class AsyncWebhooks(AsyncCollection[Webhook]):
    """``AsyncClient.webhooks`` (see :class:`Webhooks`)."""

    path = "/v1/webhooks"
    model = Webhook

    async def create(
        self,
        name: str,
        url: str,
        *,
        events: Sequence[str] = ("*",),
        secret: str | None = None,
        enabled: bool = True,
        description: str = "",
    ) -> WebhookCreated:
        """Create a webhook; the answer carries its secret (shown once)."""
        body = _create_body(
            name=name,
            url=url,
            events=list(events),
            secret=secret,
            enabled=enabled,
            description=description,
        )
        resp = await self._http.request("POST", self.path, json=body)
        return WebhookCreated.model_validate(resp.json())

    async def update(self, id: str, **changes: Any) -> Webhook:
        """Change ``name``, ``url``, ``events``, ``enabled`` or ``description``."""
        return await self._update(id, _create_body(**changes))  # type: ignore[no-any-return]

    def deliveries(
        self, id: str, *, status: str | None = None, limit: int | None = None
    ) -> AsyncPager[WebhookDelivery]:
        """The delivery log of a webhook, newest first."""
        filters = {"status": status} if status else {}
        return async_listing(
            self._http,
            f"{self._item_path(id)}/deliveries",
            WebhookDelivery,
            filters,
            limit=limit,
        )

    async def redeliver(self, id: str, delivery_id: str) -> WebhookDelivery:
        """Send a delivery again now."""
        resp = await self._http.request(
            "POST", f"{self._item_path(id)}/deliveries/{delivery_id}/redeliver"
        )
        return WebhookDelivery.model_validate(resp.json())

    async def test(self, id: str) -> WebhookDelivery:
        """Queue a ``webhook.test`` delivery."""
        resp = await self._http.request("POST", f"{self._item_path(id)}/test")
        return WebhookDelivery.model_validate(resp.json())
