"""``nexus audit list``: the audit log, newest first."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import typer

from nexus.cli._output import Column, emit_list
from nexus.cli._state import state

audit_app = typer.Typer(help="The audit log: who did what, when.", no_args_is_help=True)

COLUMNS = [
    Column("at", "TIME"),
    Column("actor_username", "ACTOR"),
    Column("action"),
    Column("resource_type", "TYPE"),
    Column("resource_id", "RESOURCE"),
    Column("outcome"),
    Column("source_ip", "FROM"),
]


class OutcomeChoice(StrEnum):
    success = "success"
    denied = "denied"
    failure = "failure"


@audit_app.command("list")
def list_events(
    actor: str | None = typer.Option(None, "--actor", help="User id or username."),
    resource_type: str | None = typer.Option(None, "--resource-type", help="e.g. user, vm."),
    resource_id: str | None = typer.Option(None, "--resource-id"),
    action: str | None = typer.Option(None, "--action", help="e.g. user.create."),
    outcome: OutcomeChoice | None = typer.Option(None, "--outcome"),
    since: datetime | None = typer.Option(None, "--since", help="ISO time, e.g. 2025-01-31."),
    until: datetime | None = typer.Option(None, "--until", help="ISO time."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most N events."),
) -> None:
    """List audit events matching all filters (admins: everyone's; others: their own).

    Example:

        nexus audit list --action user.create --outcome success -o json
    """
    with state().client() as client:
        events = client.audit.list(
            actor=actor,
            resource_type=resource_type,
            resource_id=resource_id,
            action=action,
            outcome=outcome.value if outcome else None,
            since=since,
            until=until,
            limit=limit,
        )
        emit_list(events, COLUMNS)


def register(app: typer.Typer) -> None:
    """Add the ``audit`` group."""
    app.add_typer(audit_app, name="audit")
