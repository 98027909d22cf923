"""/v1/webhooks: HTTP endpoints that receive your events, signed and retried."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from nexus.core.paging import LIMIT_DOC
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.features.webhooks import service
from nexus.manager.features.webhooks.schemas import (
    DeliveryPage,
    DeliveryRead,
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookPage,
    WebhookRead,
    WebhookUpdate,
)
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

TARGET_DOC = (
    "a URL that resolves to a loopback, link-local, private or reserved address, or to the"
    " manager itself (unless allowlisted by an administrator), a bad secret or pattern"
)


@router.post(
    "",
    response_model=WebhookCreated,
    status_code=201,
    dependencies=[CreateLimit],
    responses={400: problem(TARGET_DOC), 409: problem("you already have a webhook of that name")},
)
async def create_webhook(
    body: WebhookCreate, db: DbSession, state: State, principal: CurrentPrincipal
) -> WebhookCreated:
    """Create a webhook. It receives every event you may see whose type matches one of its
    `events` patterns, as a signed POST (Standard Webhooks: `webhook-id`,
    `webhook-timestamp`, `webhook-signature`). The secret is in this answer only."""
    hook, secret = await service.create(db_session=db, state=state, principal=principal, body=body)
    return WebhookCreated(**WebhookRead.model_validate(hook).model_dump(), secret=secret)


@router.get("", response_model=WebhookPage)
async def list_webhooks(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=40, description="the previous `next_cursor`"),
) -> WebhookPage:
    """Your webhooks (admin: everyone's), newest first."""
    rows, next_cursor = await service.list_webhooks(
        db_session=db, principal=principal, cursor=cursor, limit=limit
    )
    return WebhookPage(items=[WebhookRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/{webhook_id}", response_model=WebhookRead)
async def get_webhook(webhook_id: str, db: DbSession, principal: CurrentPrincipal) -> WebhookRead:
    """One webhook."""
    return WebhookRead.model_validate(
        await service.get(db_session=db, principal=principal, webhook_id=webhook_id)
    )


@router.patch(
    "/{webhook_id}",
    response_model=WebhookRead,
    responses={400: problem(TARGET_DOC), 409: problem("you already have a webhook of that name")},
)
async def update_webhook(
    webhook_id: str, body: WebhookUpdate, db: DbSession, state: State, principal: CurrentPrincipal
) -> WebhookRead:
    """Change a webhook. `{"enabled": true}` re-enables one that was disabled after failing."""
    hook = await service.update_webhook(
        db_session=db, state=state, principal=principal, webhook_id=webhook_id, body=body
    )
    return WebhookRead.model_validate(hook)


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, db: DbSession, principal: CurrentPrincipal) -> Response:
    """Delete a webhook with its delivery log; pending deliveries are dropped."""
    await service.delete(db_session=db, principal=principal, webhook_id=webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    webhook_id: str,
    db: DbSession,
    principal: CurrentPrincipal,
    status: DeliveryStatus | None = None,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=40, description="the previous `next_cursor`"),
) -> DeliveryPage:
    """The delivery log, newest first: status, attempts, latency, the response's first KiB."""
    rows, next_cursor = await service.list_deliveries(
        db_session=db,
        principal=principal,
        webhook_id=webhook_id,
        status=status,
        cursor=cursor,
        limit=limit,
    )
    return DeliveryPage(
        items=[DeliveryRead.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    response_model=DeliveryRead,
    status_code=202,
    responses={409: problem("the webhook is disabled")},
)
async def redeliver(
    webhook_id: str, delivery_id: str, db: DbSession, principal: CurrentPrincipal
) -> DeliveryRead:
    """Send a delivery again now, with the same `webhook-id`, whatever its status."""
    d = await service.redeliver(
        db_session=db, principal=principal, webhook_id=webhook_id, delivery_id=delivery_id
    )
    return DeliveryRead.model_validate(d)


@router.post(
    "/{webhook_id}/test",
    response_model=DeliveryRead,
    status_code=202,
    responses={409: problem("the webhook is disabled")},
)
async def test_webhook(webhook_id: str, db: DbSession, principal: CurrentPrincipal) -> DeliveryRead:
    """Queue a `webhook.test` delivery; follow it in the delivery log."""
    d = await service.send_test(db_session=db, principal=principal, webhook_id=webhook_id)
    return DeliveryRead.model_validate(d)
