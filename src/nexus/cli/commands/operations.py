"""``nexus operation ...``: long-running tasks (list, get, wait, cancel)."""

from __future__ import annotations

from enum import StrEnum

import typer

from nexus.cli._output import Column, emit_list, emit_one, wait_with_progress
from nexus.cli._state import state
from nexus.client import OperationFailed

op_app = typer.Typer(help="Long-running operations.", no_args_is_help=True)

COLUMNS = [
    Column("id"),
    Column("kind"),
    Column("status"),
    Column("progress", "%"),
    Column("resource_id", "RESOURCE"),
    Column("message"),
    Column("created_at", "CREATED"),
]


class StatusChoice(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


@op_app.command("list")
def list_ops(
    status: StatusChoice | None = typer.Option(None, "--status", help="Only in this status."),
    resource_id: str | None = typer.Option(
        None, "--resource-id", help="Only operations on this resource (its id)."
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most N operations."),
) -> None:
    """List operations you may see, newest first.

    Example:

        nexus operation list --status failed
    """
    with state().client() as client:
        ops = client.operations.list(
            status=status.value if status else None, resource_id=resource_id, limit=limit
        )
        emit_list(ops, COLUMNS)


@op_app.command("get")
def get_op(
    op_id: str = typer.Argument(..., help="Operation id (op_...)."),
    watch: bool = typer.Option(
        False, "--watch", "-w", help="Then print its progress live until it ends."
    ),
) -> None:
    """Show one operation (status, progress, message, error); --watch follows it.

    Examples:

        nexus operation get op_01jd...

        nexus operation get op_01jd... --watch
    """
    with state().client() as client:
        newest = next(iter(client.events.list(limit=1)), None) if watch else None
        op = client.operations.get(op_id)
        emit_one(op)
        if not watch or op.done:
            return
        from nexus.cli.commands.events import follow

        follow(
            client,
            resource_id=op_id,
            after=newest.id if newest else None,
            until=lambda ev: ev.payload.get("state") in ("succeeded", "failed", "cancelled"),
        )


@op_app.command("wait")
def wait_op(
    op_id: str = typer.Argument(..., help="Operation id (op_...)."),
    timeout: float | None = typer.Option(None, "--timeout", "-t", help="Seconds (default: none)."),
) -> None:
    """Wait until an operation ends (a progress bar on a terminal); exit 1 unless it succeeded.

    Example:

        nexus operation wait op_01jd... --timeout 300
    """
    with state().client() as client:
        op = wait_with_progress(client, op_id, timeout=timeout, message=f"waiting for {op_id}")
    emit_one(op)
    if op.status != "succeeded":
        raise OperationFailed(op)


@op_app.command("cancel")
def cancel_op(op_id: str = typer.Argument(..., help="Operation id (op_...).")) -> None:
    """Cancel a pending or running operation.

    Example:

        nexus operation cancel op_01jd...
    """
    with state().client() as client:
        emit_one(client.operations.cancel(op_id))


def register(app: typer.Typer) -> None:
    """Add the ``operation`` group."""
    app.add_typer(op_app, name="operation")
