"""``nexus snapshot ...`` and ``nexus vm clone``: snapshots, restores and clones."""

from __future__ import annotations

import typer

from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._state import state
from nexus.cli.commands.vms import resolve, vm_app

snapshot_app = typer.Typer(help="VM snapshots (memory + disk, or disk only).", no_args_is_help=True)
COLUMNS = [
    Column("id"),
    Column("name"),
    Column("vm_name", "VM"),
    Column("kind"),
    Column("state"),
    Column("size_bytes", "BYTES"),
    Column("created_at", "CREATED"),
]


@snapshot_app.command("list")
def list_snapshots(
    vm: str | None = typer.Option(None, "--vm", help="Only snapshots of this VM (id or name)."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1),
) -> None:
    """List snapshots you may see."""
    with state().client() as client:
        filters = {"vm_id": resolve(client, vm).id} if vm else {}
        emit_list(client.snapshots.list(limit=limit, **filters), COLUMNS)  # type: ignore[arg-type]


@snapshot_app.command("create")
def create_snapshot(
    vm: str = typer.Argument(..., help="VM id or name."),
    name: str = typer.Argument(..., help="Snapshot name (unique per VM)."),
    disk_only: bool = typer.Option(False, "--disk-only", help="No memory state."),
) -> None:
    """Snapshot a VM (a running VM: memory + device state + disk).

    Example:

        nexus snapshot create web before-upgrade
    """
    with state().client() as client:
        target = resolve(client, vm)
        emit_one(client.snapshots.create(target.id, name, include_memory=not disk_only))


@snapshot_app.command("get")
def get_snapshot(snapshot: str = typer.Argument(..., help="Snapshot id.")) -> None:
    """Show one snapshot (files with sha256, timings)."""
    with state().client() as client:
        emit_one(client.snapshots.get(snapshot))


@snapshot_app.command("restore")
def restore_snapshot(snapshot: str = typer.Argument(..., help="Snapshot id.")) -> None:
    """Roll the snapshot's VM back to it (a full snapshot resumes where it was)."""
    with state().client() as client:
        emit_one(client.snapshots.restore(snapshot))


@snapshot_app.command("delete")
def delete_snapshot(snapshot: str = typer.Argument(..., help="Snapshot id.")) -> None:
    """Delete a snapshot and its files."""
    with state().client() as client:
        client.snapshots.delete(snapshot)
    success(f"deleted snapshot {snapshot}")


@vm_app.command("clone")
def clone_vm(
    vm: str = typer.Argument(..., help="Source VM id or name."),
    name: str = typer.Argument(..., help="Name of the clone."),
    vcpus: int | None = typer.Option(None, "--vcpus", "-c", min=1),
    memory: int | None = typer.Option(None, "--memory", "-m", help="MiB", min=128),
    network: str | None = typer.Option(None, "--network", help="Network for the clone."),
    no_start: bool = typer.Option(False, "--no-start", help="Leave the clone stopped."),
) -> None:
    """Clone a VM: copy-on-write root disk, fresh identity, independent afterwards."""
    overrides = {
        k: v for k, v in {"vcpus": vcpus, "memory_mib": memory, "network": network}.items() if v
    }
    with state().client() as client:
        src = resolve(client, vm)
        emit_one(client.vms.clone(src.id, name, start=not no_start, overrides=overrides or None))


def register(app: typer.Typer) -> None:
    """Add the ``snapshot`` group (``vm clone`` attaches to the ``vm`` group on import)."""
    app.add_typer(snapshot_app, name="snapshot")
