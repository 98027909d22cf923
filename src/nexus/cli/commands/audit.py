"""``nexus audit list``: the audit log, newest first."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import typer

from nexus.cli._output import Column, emit_list
from nexus.cli._state import state

audit_app = typer.Typer(help="The audit log: who did what, when.", no_args_is_help=True)

# People read names: the actor's username and the resource's name (from the row's after/
# before state), the id beside it. JSON/YAML keep every field, plus ``resource_name``.
COLUMNS = [
    Column("at", "TIME"),
    Column("actor_username", "ACTOR"),
    Column("action"),
    Column("resource_type", "TYPE"),
    Column("resource_name", "NAME"),
    Column("resource_id", "RESOURCE ID"),
    Column("outcome"),
    Column("source_ip", "FROM"),
]


def resource_name(row: dict[str, Any]) -> str | None:
    """The name of the row's resource as recorded in its after (else before) state."""
    for state_ in (row.get("after"), row.get("before")):
        if isinstance(state_, dict):
            for key in ("name", "username"):
                if isinstance(state_.get(key), str):
                    return str(state_[key])
    return None


def with_names(events: Any) -> list[dict[str, Any]]:
    rows = []
    for ev in events:
        row = ev.to_dict()
        row["resource_name"] = resource_name(row)
        rows.append(row)
    return rows


class OutcomeChoice(StrEnum):
    success = "success"
    denied = "denied"
    failure = "failure"


@audit_app.command("list")
def list_events(
    actor: str | None = typer.Option(None, "--actor", help="User id or username."),
    resource_type: str | None = typer.Option(None, "--resource-type", help="e.g. user, vm."),
    resource_id: str | None = typer.Option(
        None, "--resource-id", help="Only events on this resource (its id)."
    ),
    action: str | None = typer.Option(None, "--action", help="e.g. user.create."),
    outcome: OutcomeChoice | None = typer.Option(
        None, "--outcome", help="success, denied (403/401) or failure."
    ),
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
        emit_list(with_names(events), COLUMNS)


def register(app: typer.Typer) -> None:
    """Add the ``audit`` group."""
    app.add_typer(audit_app, name="audit")
