"""Webhooks: subscriptions, the durable delivery queue, and the loops that fill and drain it.

* The **dispatcher** (one leader, lease ``webhook-dispatch``) reads events after its cursor
  (a system value), and in one transaction adds a delivery for every enabled webhook whose
  owner may see the event and whose patterns match, and moves the cursor. A crash before the
  commit leaves the cursor where it was; a unique (webhook, event) pair makes a second
  dispatch of the same event impossible.
* The **senders** (every replica) claim due deliveries one by one with a conditional UPDATE
  (``claimed_until``), so two replicas never send the same delivery at once; a replica that
  dies mid-attempt lets its claim lapse and the delivery is sent again (at least once; the
  ``webhook-id`` lets receivers de-duplicate). Failures are retried with exponential backoff
  and jitter for ``webhook_retry_window_s``; a webhook failing for ``webhook_disable_after_s``
  without a success is disabled, and its owner notified.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import flush_unique
from nexus.core.errors import BadRequest, Conflict, NotFound
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.manager.features.audit import service as audit
from nexus.manager.features.events import service as events
from nexus.manager.features.system.models import SystemValue
from nexus.manager.features.system.service import run_leased
from nexus.manager.features.users.models import User
from nexus.manager.features.webhooks import delivery as wire
from nexus.manager.features.webhooks.models import Webhook, WebhookDelivery
from nexus.manager.features.webhooks.schemas import WebhookCreate, WebhookUpdate
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.outbox import Event, type_matches
from nexus.manager.platform.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)

log = get_logger(__name__)

CURSOR_KEY = "webhooks.event_cursor"
CLIENT_KEY = "webhook_http_client"
DISPATCH_BATCH = 500
SEND_BATCH = 20
LOG_KEEP = 20


def snapshot(hook: Webhook) -> dict[str, Any]:
    """The audit view of a webhook (no secret)."""
    return {
        "name": hook.name,
        "url": hook.url,
        "events": hook.events,
        "enabled": hook.enabled,
        "description": hook.description,
    }


async def _check_target(state: ManagerState, url: str) -> None:
    try:
        await wire.resolve(url, state.settings.webhook_allowlist)
    except wire.TargetRefused as exc:
        raise BadRequest(str(exc)) from None


def _check_patterns(patterns: list[str]) -> list[str]:
    try:
        return events.check_patterns(patterns)
    except BadRequest as exc:
        raise BadRequest(exc.detail.replace("type:", "events:", 1)) from None


# --- CRUD ------------------------------------------------------------------------------------


async def create(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: WebhookCreate
) -> tuple[Webhook, str]:
    """Create a webhook; returns it and its secret (shown this once)."""
    ensure_can_create(principal, "webhook.create", "webhook")
    _check_patterns(body.events)
    if body.secret is not None:
        try:
            wire.check_secret(body.secret)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    await _check_target(state, body.url)
    secret = body.secret or wire.new_secret()
    hook = Webhook(
        id=new_id("whk"),
        name=body.name,
        url=body.url,
        events=list(dict.fromkeys(body.events)),
        secret=secret,
        enabled=body.enabled,
        description=body.description,
        created_by_user_id=principal.user_id,
    )
    db_session.add(hook)
    await flush_unique(db_session, f"you already have a webhook named '{body.name}'")
    audit.record(
        db_session,
        actor=principal,
        action="webhook.create",
        resource_type="webhook",
        resource_id=hook.id,
        after=snapshot(hook),
    )
    return hook, secret


async def get(*, db_session: AsyncSession, principal: Principal, webhook_id: str) -> Webhook:
    """A webhook you may see (others' are 404)."""
    return ensure_visible(
        principal, await db_session.get(Webhook, webhook_id), "webhook", webhook_id
    )


async def list_webhooks(
    *, db_session: AsyncSession, principal: Principal, cursor: str | None, limit: int
) -> tuple[list[Webhook], str | None]:
    """Webhooks you may see (admin: all), newest first."""
    q = select(Webhook).order_by(Webhook.id.desc()).limit(limit + 1)
    if not principal.is_admin:
        q = q.where(Webhook.created_by_user_id == principal.user_id)
    if cursor:
        q = q.where(Webhook.id < _cursor(cursor, "whk_"))
    rows = list((await db_session.execute(q)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def _cursor(value: str, prefix: str) -> str:
    if not value.startswith(prefix) or len(value) > 40:
        raise BadRequest("cursor: not a cursor of this listing (pass the previous next_cursor)")
    return value


async def update_webhook(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    webhook_id: str,
    body: WebhookUpdate,
) -> Webhook:
    """Change a webhook; enabling it again clears its failure record."""
    hook = await get(db_session=db_session, principal=principal, webhook_id=webhook_id)
    ensure_can_modify(principal, hook, "webhook", "webhook.update")
    before = snapshot(hook)
    if body.url is not None:
        await _check_target(state, body.url)
        hook.url = body.url
    if body.events is not None:
        hook.events = list(dict.fromkeys(_check_patterns(body.events)))
    if body.name is not None:
        hook.name = body.name
    if body.description is not None:
        hook.description = body.description
    if body.enabled is not None:
        if body.enabled and not hook.enabled:
            hook.disabled_reason = None
            hook.failing_since = None
        hook.enabled = body.enabled
    await flush_unique(db_session, f"you already have a webhook named '{body.name}'")
    audit.record(
        db_session,
        actor=principal,
        action="webhook.update",
        resource_type="webhook",
        resource_id=hook.id,
        before=before,
        after=snapshot(hook),
    )
    return hook


async def delete(*, db_session: AsyncSession, principal: Principal, webhook_id: str) -> None:
    """Delete a webhook and its delivery log (pending deliveries are dropped)."""
    hook = await get(db_session=db_session, principal=principal, webhook_id=webhook_id)
    ensure_can_modify(principal, hook, "webhook", "webhook.delete")
    audit.record(
        db_session,
        actor=principal,
        action="webhook.delete",
        resource_type="webhook",
        resource_id=hook.id,
        before=snapshot(hook),
    )
    await db_session.delete(hook)


async def list_deliveries(
    *,
    db_session: AsyncSession,
    principal: Principal,
    webhook_id: str,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[WebhookDelivery], str | None]:
    """The delivery log of a webhook, newest first."""
    hook = await get(db_session=db_session, principal=principal, webhook_id=webhook_id)
    q = (
        select(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == hook.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit + 1)
    )
    if status:
        q = q.where(WebhookDelivery.status == status)
    if cursor:
        q = q.where(WebhookDelivery.id < _cursor(cursor, "msg_"))
    rows = list((await db_session.execute(q)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


async def redeliver(
    *, db_session: AsyncSession, principal: Principal, webhook_id: str, delivery_id: str
) -> WebhookDelivery:
    """Send a delivery again, now (same ``webhook-id``), whatever its status."""
    hook = await get(db_session=db_session, principal=principal, webhook_id=webhook_id)
    ensure_can_modify(principal, hook, "webhook", "webhook.redeliver")
    d = await db_session.get(WebhookDelivery, delivery_id)
    if d is None or d.webhook_id != hook.id:
        raise NotFound(f"delivery '{delivery_id}' not found for webhook '{hook.id}'")
    if not hook.enabled:
        raise Conflict("the webhook is disabled: enable it first (PATCH enabled=true)")
    d.status = "pending"
    d.next_attempt_at = utcnow()
    d.claimed_until = None
    d.created_at = utcnow()  # a fresh retry window
    audit.record(
        db_session,
        actor=principal,
        action="webhook.redeliver",
        resource_type="webhook",
        resource_id=hook.id,
        after={"delivery_id": d.id},
    )
    return d


async def send_test(
    *, db_session: AsyncSession, principal: Principal, webhook_id: str
) -> WebhookDelivery:
    """Queue a ``webhook.test`` delivery (sent within a second or so)."""
    hook = await get(db_session=db_session, principal=principal, webhook_id=webhook_id)
    ensure_can_modify(principal, hook, "webhook", "webhook.test")
    if not hook.enabled:
        raise Conflict("the webhook is disabled: enable it first (PATCH enabled=true)")
    now = utcnow()
    d = WebhookDelivery(
        id=new_id("msg"),
        webhook_id=hook.id,
        event_id=None,
        event_type="webhook.test",
        body={
            "type": "webhook.test",
            "timestamp": now.isoformat(),
            "data": {"webhook_id": hook.id, "message": "a test delivery from Nexus"},
        },
        status="pending",
        attempts=0,
        created_at=now,
        next_attempt_at=now,
        log=[],
    )
    db_session.add(d)
    audit.record(
        db_session,
        actor=principal,
        action="webhook.test",
        resource_type="webhook",
        resource_id=hook.id,
        after={"delivery_id": d.id},
    )
    return d


# --- dispatch: events -> deliveries ------------------------------------------------------------


def _sees(ev: Event, owner_id: str, owner_is_admin: bool) -> bool:
    if ev.owner_user_id == owner_id:
        return True
    if ev.private:
        return False
    return owner_is_admin or ev.public


def body_of(ev: Event) -> dict[str, Any]:
    """The JSON a webhook receives for an event."""
    return {"type": ev.type, "timestamp": ev.at.isoformat(), "data": events.to_json(ev)}


async def dispatch_once(state: ManagerState) -> int:
    """Turn new events into deliveries; returns how many deliveries were queued."""
    async with state.db.session() as s:
        cur = await s.get(SystemValue, CURSOR_KEY, with_for_update=True)
        seen = await _newest(s)
        if cur is None:  # first run: start from now, not from history
            s.add(SystemValue(key=CURSOR_KEY, value=str(seen)))
            return 0
        cursor = int(cur.value)
        if seen <= cursor:
            return 0
        rows = list(
            (
                await s.execute(
                    select(Event)
                    .where(Event.id > cursor, Event.id <= seen)
                    .order_by(Event.id.asc())
                    .limit(DISPATCH_BATCH)
                )
            ).scalars()
        )
        new_cursor = rows[-1].id if len(rows) == DISPATCH_BATCH else seen
        hooks = list(
            (
                await s.execute(
                    select(Webhook, User.role)
                    .join(User, User.id == Webhook.created_by_user_id)
                    .where(Webhook.enabled.is_(True), User.disabled.is_(False))
                )
            ).all()
        )
        n = 0
        now = utcnow()
        for ev in rows:
            for hook, role in hooks:
                if not type_matches(ev.type, hook.events):
                    continue
                if not _sees(ev, hook.created_by_user_id, role == "admin"):
                    continue
                s.add(
                    WebhookDelivery(
                        id=new_id("msg"),
                        webhook_id=hook.id,
                        event_id=ev.id,
                        event_type=ev.type,
                        body=body_of(ev),
                        status="pending",
                        attempts=0,
                        created_at=now,
                        next_attempt_at=now,
                        log=[],
                    )
                )
                n += 1
        cur.value = str(new_cursor)
    return n


async def _newest(s: AsyncSession) -> int:
    return int((await s.execute(select(func.max(Event.id)))).scalar() or 0)


# --- send: deliveries -> HTTP ------------------------------------------------------------------


def http_client(state: ManagerState) -> httpx.AsyncClient:
    """The replica's client for webhook deliveries (no redirects, no environment proxies)."""
    client = state.extras.get(CLIENT_KEY)
    if client is None:
        client = state.extras[CLIENT_KEY] = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
        )
    assert isinstance(client, httpx.AsyncClient)
    return client


async def _claim(state: ManagerState) -> list[str]:
    now = utcnow()
    hold = now + timedelta(seconds=state.settings.webhook_timeout_s + 30)
    async with state.db.session() as s:
        due = list(
            (
                await s.execute(
                    select(WebhookDelivery.id)
                    .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= now,
                        or_(
                            WebhookDelivery.claimed_until.is_(None),
                            WebhookDelivery.claimed_until < now,
                        ),
                        Webhook.enabled.is_(True),
                    )
                    .order_by(WebhookDelivery.next_attempt_at)
                    .limit(SEND_BATCH)
                )
            ).scalars()
        )
    mine: list[str] = []
    for did in due:
        async with state.db.session() as s:
            res = await s.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == did,
                    WebhookDelivery.status == "pending",
                    or_(
                        WebhookDelivery.claimed_until.is_(None),
                        WebhookDelivery.claimed_until < now,
                    ),
                )
                .values(claimed_by=state.replica_id, claimed_until=hold)
            )
            if res.rowcount:  # type: ignore[attr-defined]
                mine.append(did)
    return mine


def backoff_s(state: ManagerState, attempts: int) -> float:
    """The wait before retry number ``attempts`` (exponential, capped, with jitter)."""
    cfg = state.settings
    base = min(cfg.webhook_retry_max_s, cfg.webhook_retry_base_s * 2 ** max(0, attempts - 1))
    return base * random.uniform(0.75, 1.25)


async def _deliver(state: ManagerState, delivery_id: str) -> None:
    async with state.db.session() as s:
        d = await s.get(WebhookDelivery, delivery_id)
        hook = await s.get(Webhook, d.webhook_id) if d is not None else None
        if d is None or hook is None or d.claimed_by != state.replica_id:
            return
        url, secret, body = hook.url, hook.secret, dict(d.body)
    result = await wire.send(
        http_client(state),
        url=url,
        secret=secret,
        msg_id=delivery_id,
        body=body,
        allowlist=state.settings.webhook_allowlist,
        timeout_s=state.settings.webhook_timeout_s,
    )
    await _record(state, delivery_id, result)


async def _record(state: ManagerState, delivery_id: str, result: wire.Attempt) -> None:
    cfg = state.settings
    now = utcnow()
    async with state.db.session() as s:
        d = await s.get(WebhookDelivery, delivery_id)
        if d is None:
            return
        hook = await s.get(Webhook, d.webhook_id)
        d.attempts += 1
        d.last_attempt_at = now
        d.last_status_code = result.status_code
        d.last_latency_ms = result.latency_ms
        d.last_response = result.response
        d.last_error = result.error
        d.log = [
            *list(d.log or [])[-(LOG_KEEP - 1) :],
            {
                "at": now.isoformat(),
                "status_code": result.status_code,
                "latency_ms": result.latency_ms,
                "error": result.error,
            },
        ]
        d.claimed_by, d.claimed_until = None, None
        if result.ok:
            d.status, d.delivered_at = "succeeded", now
            if hook is not None:
                hook.failing_since = None
            return
        if (now - d.created_at).total_seconds() >= cfg.webhook_retry_window_s:
            d.status = "failed"
        else:
            d.next_attempt_at = now + timedelta(seconds=backoff_s(state, d.attempts))
        if hook is None:
            return
        hook.failing_since = hook.failing_since or now
        failing = (now - hook.failing_since).total_seconds()
        if hook.enabled and failing >= cfg.webhook_disable_after_s:
            hook.enabled = False  # a ``webhook.disabled`` event: the owner is notified
            hook.disabled_reason = (
                f"every delivery failed for {_human(failing)} (since"
                f" {hook.failing_since.isoformat()}); last error: {result.error}"
            )[:1000]
            audit.record(
                s,
                actor=None,
                action="webhook.disable",
                resource_type="webhook",
                resource_id=hook.id,
                after={"reason": hook.disabled_reason},
            )


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


async def send_once(state: ManagerState) -> int:
    """Claim due deliveries and send them concurrently; how many were attempted."""
    ids = await _claim(state)
    if ids:
        await asyncio.gather(*(_deliver(state, i) for i in ids))
    return len(ids)


async def _sender(state: ManagerState) -> None:
    interval = state.settings.webhook_interval_s
    try:
        while True:
            try:
                while await send_once(state) == SEND_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhooks.send_error")
            await asyncio.sleep(interval)
    finally:
        await _close_client(state)


async def _close_client(state: ManagerState) -> None:
    client = state.extras.pop(CLIENT_KEY, None)
    if isinstance(client, httpx.AsyncClient):
        await client.aclose()


async def start(state: ManagerState) -> None:
    """Start-up hook: the dispatcher (one leader) and this replica's sender."""
    state.spawn(
        run_leased(state, "webhook-dispatch", state.settings.webhook_interval_s, dispatch_once),
        name="webhook-dispatch",
    )
    state.spawn(_sender(state), name="webhook-sender")
