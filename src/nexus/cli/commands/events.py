"""``nexus events``, ``nexus notification ...`` and ``nexus webhook ...``: being told."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import typer
from rich.markup import escape

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, console, emit_list, emit_one, fmt_value, success
from nexus.cli._resolve import ref_argument, resolve
from nexus.cli._state import state
from nexus.client import Client, Event

EVENT_COLUMNS = [
    Column("id"),
    Column("at"),
    Column("type"),
    Column("resource_name", "RESOURCE"),
    Column("resource_id", "ID"),
    Column("actor_username", "ACTOR"),
]
NOTIFICATION_COLUMNS = [
    Column("id"),
    Column("created_at", "AT"),
    Column("kind"),
    Column("title"),
    Column("read_at", "READ"),
]
WEBHOOK_COLUMNS = [
    Column("id"),
    Column("name"),
    Column("url"),
    Column("events"),
    Column("enabled"),
    Column("failing_since", "FAILING SINCE"),
]
DELIVERY_COLUMNS = [
    Column("id"),
    Column("event_type", "EVENT"),
    Column("status"),
    Column("attempts"),
    Column("last_status_code", "HTTP"),
    Column("last_latency_ms", "MS"),
    Column("created_at", "CREATED"),
    Column("last_error", "ERROR"),
]

TYPES = typer.Option(
    [], "--type", "-t", help="Event type pattern, repeatable: vm.started, vm.*, *.failed."
)


def event_line(ev: Event) -> str:
    """One event as one human line."""
    who = ev.actor_username or "system"
    what = ev.resource_name or ev.resource_id or ""
    extra = ""
    if "state" in ev.payload:
        extra = f" ({ev.payload.get('previous_state')} -> {ev.payload['state']})"
    elif ev.type == "operation.updated" and "progress" in ev.payload:
        extra = f" ({ev.payload['progress']}% {ev.payload.get('message') or ''})".rstrip()
    return f"{ev.id:>8}  {fmt_value(ev.at.isoformat())}  {ev.type:<24} {what}{extra}  by {who}"


def print_event(ev: Event) -> None:
    """Print one streamed event: a line for people, one JSON object per line otherwise."""
    st = state()
    if st.quiet:
        sys.stdout.write(f"{ev.id}\n")
    elif st.output == "table":
        console.print(escape(event_line(ev)), highlight=False)
    else:
        sys.stdout.write(json.dumps(ev.to_dict(), default=str) + "\n")
    sys.stdout.flush()


def follow(
    client: Client,
    *,
    types: Iterable[str] = (),
    resource_id: str | None = None,
    after: int | None = None,
    until: Callable[[Event], bool] | None = None,
    on_event: Callable[[Event], None] = print_event,
) -> None:
    """Stream events until ``until`` says stop (or Ctrl-C)."""
    try:
        for ev in client.events.stream(after=after, types=list(types), resource_id=resource_id):
            on_event(ev)
            if until is not None and until(ev):
                return
    except KeyboardInterrupt:
        return


def events_cmd(
    follow_: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events live."),
    types: list[str] = TYPES,
    resource: str | None = typer.Option(
        None, "--resource", "-r", help="Only events of this resource id."
    ),
    after: int | None = typer.Option(
        None, "--after", help="Start after this event id (oldest first)."
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="How many (without --follow)."),
) -> None:
    """Show events: every change of what you may see (admins: everything).

    Without --follow: the newest first (or oldest first from --after). With --follow: the
    last few, then live until Ctrl-C; a dropped connection is resumed without a gap.

    Example: nexus events -f -t 'vm.*' -t '*.failed'
    """
    with state().client() as client:
        if not follow_:
            emit_list(
                client.events.list(types=types, resource_id=resource, after=after, limit=limit),
                EVENT_COLUMNS,
            )
            return
        start = after
        if start is None:
            recent = list(client.events.list(types=types, resource_id=resource, limit=10))
            for ev in reversed(recent):
                print_event(ev)
            start = recent[0].id if recent else None
        follow(client, types=types, resource_id=resource, after=start)


# --- notifications -----------------------------------------------------------------------------

notification_app = typer.Typer(help="Your notifications.", no_args_is_help=True)


@notification_app.command("list")
def list_notifications(
    unread: bool = typer.Option(False, "--unread", "-u", help="Only unread ones."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most this many."),
) -> None:
    """List your notifications, newest first.

    Example: nexus notification list --unread
    """
    with state().client() as client:
        emit_list(client.notifications.list(unread=unread, limit=limit), NOTIFICATION_COLUMNS)


@notification_app.command("read")
def read_notifications(
    ids: list[str] = typer.Argument(None, help="Notification ids (ntf_...)."),
    all_: bool = typer.Option(False, "--all", "-a", help="Mark every unread one read."),
    unread: bool = typer.Option(False, "--unread", help="Mark them unread again instead."),
) -> None:
    """Mark notifications read (or unread again).

    Example: nexus notification read --all
    """
    with state().client() as client:
        if all_:
            n = client.notifications.read_all()
            success(f"marked {n} notification(s) read")
            return
        if not ids:
            raise typer.BadParameter("give notification ids, or --all")
        for nid in ids:
            client.notifications.read(nid, read=not unread)
        success(f"marked {len(ids)} notification(s) {'unread' if unread else 'read'}")


@notification_app.command("prefs")
def notification_prefs(
    mute: bool | None = typer.Option(
        None, "--mute/--unmute", help="Silence every notification (or not)."
    ),
    disable: list[str] = typer.Option([], "--disable", help="A kind to stop (repeatable)."),
    enable: list[str] = typer.Option([], "--enable", help="A kind to receive again."),
) -> None:
    """Show or change which notifications you receive.

    Example: nexus notification prefs --disable operation_succeeded
    """
    with state().client() as client:
        prefs = client.notifications.preferences()
        if mute is not None or disable or enable:
            kinds = (set(prefs.disabled_kinds) | set(disable)) - set(enable)
            prefs = client.notifications.set_preferences(muted=mute, disabled_kinds=sorted(kinds))
        emit_one(prefs)


# --- webhooks ----------------------------------------------------------------------------------

webhook_app = typer.Typer(help="Webhooks: your events POSTed to your URL.", no_args_is_help=True)
WEBHOOK_ARG = ref_argument("webhook")


def resolve_webhook(client: Client, ident: str) -> Any:
    """A webhook by id or by name."""
    return resolve(client, "webhook", ident)


@webhook_app.command("create")
def create_webhook(
    name: str = typer.Argument(..., help="DNS label: a-z 0-9 -"),
    url: str = typer.Argument(..., help="The http(s) URL that receives the POSTs."),
    events: list[str] = typer.Option(
        [], "--event", "-e", help="Event type pattern, repeatable (default: every event)."
    ),
    secret: str | None = typer.Option(
        None, "--secret", help="Your own whsec_... secret (default: generated)."
    ),
    disabled: bool = typer.Option(False, "--disabled", help="Create it disabled."),
    description: str = typer.Option("", "--description", "-d", help="Free text."),
) -> None:
    """Create a webhook; prints its signing secret once.

    Example: nexus webhook create ci https://ci.example/hook -e 'vm.*' -e '*.failed'
    """
    with state().client() as client:
        hook = client.webhooks.create(
            name,
            url,
            events=events or ["*"],
            secret=secret,
            enabled=not disabled,
            description=description,
        )
    emit_one(hook)
    success("store the secret now: it is not shown again")


@webhook_app.command("list")
def list_webhooks(
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most this many."),
) -> None:
    """List your webhooks (admins: everyone's).

    Example: nexus webhook list
    """
    with state().client() as client:
        emit_list(client.webhooks.list(limit=limit), WEBHOOK_COLUMNS)


@webhook_app.command("get")
def get_webhook(webhook: str = WEBHOOK_ARG) -> None:
    """Show one webhook.

    Example: nexus webhook get ci
    """
    with state().client() as client:
        emit_one(resolve_webhook(client, webhook))


@webhook_app.command("update")
def update_webhook(
    webhook: str = WEBHOOK_ARG,
    url: str | None = typer.Option(None, "--url", help="A new target URL."),
    events: list[str] = typer.Option([], "--event", "-e", help="Replace the patterns."),
    enable: bool | None = typer.Option(
        None, "--enable/--disable", help="Enable (clears a failure record) or disable."
    ),
    description: str | None = typer.Option(None, "--description", "-d", help="Free text."),
) -> None:
    """Change a webhook.

    Example: nexus webhook update ci --enable
    """
    with state().client() as client:
        hook = resolve_webhook(client, webhook)
        changes: dict[str, Any] = {"url": url, "enabled": enable, "description": description}
        if events:
            changes["events"] = events
        emit_one(client.webhooks.update(hook.id, **changes))


@webhook_app.command("deliveries")
def list_deliveries(
    webhook: str = WEBHOOK_ARG,
    status: str | None = typer.Option(None, "--status", "-s", help="pending, succeeded or failed."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most this many."),
) -> None:
    """Show a webhook's delivery log, newest first.

    Example: nexus webhook deliveries ci --status failed
    """
    with state().client() as client:
        hook = resolve_webhook(client, webhook)
        emit_list(client.webhooks.deliveries(hook.id, status=status, limit=limit), DELIVERY_COLUMNS)


@webhook_app.command("redeliver")
def redeliver(
    webhook: str = WEBHOOK_ARG,
    delivery_id: str = typer.Argument(..., help="Delivery id (msg_...)."),
) -> None:
    """Send a delivery again now (same webhook-id).

    Example: nexus webhook redeliver ci msg_01...
    """
    with state().client() as client:
        hook = resolve_webhook(client, webhook)
        emit_one(client.webhooks.redeliver(hook.id, delivery_id))


@webhook_app.command("test")
def test_webhook(webhook: str = WEBHOOK_ARG) -> None:
    """Queue a webhook.test delivery; see it with `nexus webhook deliveries`.

    Example: nexus webhook test ci
    """
    with state().client() as client:
        hook = resolve_webhook(client, webhook)
        emit_one(client.webhooks.test(hook.id))


@webhook_app.command("delete")
def delete_webhook(
    webhook: str = WEBHOOK_ARG,
    yes: bool = YES,
) -> None:
    """Delete a webhook and its delivery log.

    Example: nexus webhook delete ci --yes
    """
    with state().client() as client:
        hook = resolve_webhook(client, webhook)
        confirm(f"Delete webhook {hook.name} ({hook.id})?", yes=yes)
        client.webhooks.delete(hook.id)
    success(f"deleted webhook {hook.name}")


def register(app: typer.Typer) -> None:
    """Add ``events``, ``notification`` and ``webhook``."""
    app.command("events")(events_cmd)
    app.add_typer(notification_app, name="notification")
    app.add_typer(webhook_app, name="webhook")
