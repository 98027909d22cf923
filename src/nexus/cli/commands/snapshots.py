"""``nexus snapshot ...`` and ``nexus vm clone``: snapshots, restores and clones."""

from __future__ import annotations

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import ref_argument, ref_option
from nexus.cli._resolve import resolve as resolve_ref
from nexus.cli._state import state
from nexus.cli.commands.vms import VM_ARG, resolve, vm_app
from nexus.client import Client, Snapshot

snapshot_app = typer.Typer(help="VM snapshots (memory + disk, or disk only).", no_args_is_help=True)
SNAPSHOT_ARG = ref_argument(
    "snapshot", "Snapshot name or id (names are unique per VM: use the id if two VMs share one)."
)


def resolve_snapshot(client: Client, ref: str) -> Snapshot:
    """A snapshot by id (``snap_...``) or by name (see :mod:`nexus.cli._resolve`)."""
    snap: Snapshot = resolve_ref(client, "snapshot", ref)
    return snap


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
    vm: str | None = ref_option("vm", help="Only snapshots of this VM (id or name)."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="At most N snapshots."),
) -> None:
    """List snapshots you may see.

    Example:

        nexus snapshot list --vm web
    """
    with state().client() as client:
        filters = {"vm_id": resolve(client, vm).id} if vm else {}
        emit_list(client.snapshots.list(limit=limit, **filters), COLUMNS)  # type: ignore[arg-type]


@snapshot_app.command("create")
def create_snapshot(
    vm: str = VM_ARG,
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
def get_snapshot(snapshot: str = SNAPSHOT_ARG) -> None:
    """Show one snapshot (files with sha256, timings).

    Example:

        nexus snapshot get before-upgrade -o yaml
    """
    with state().client() as client:
        emit_one(resolve_snapshot(client, snapshot))


@snapshot_app.command("restore")
def restore_snapshot(snapshot: str = SNAPSHOT_ARG, yes: bool = YES) -> None:
    """Roll the snapshot's VM back to it (a full snapshot resumes where it was). What the VM
    holds now is lost: asks first on a terminal.

    Example:

        nexus snapshot restore before-upgrade --yes
    """
    with state().client() as client:
        snap = resolve_snapshot(client, snapshot)
        confirm(f"Roll VM {snap.vm_name} back to snapshot {snap.name} ({snap.id})?", yes=yes)
        emit_one(client.snapshots.restore(snap.id))


@snapshot_app.command("delete")
def delete_snapshot(snapshot: str = SNAPSHOT_ARG, yes: bool = YES) -> None:
    """Delete a snapshot and its files. Asks first on a terminal.

    Example:

        nexus snapshot delete before-upgrade --yes
    """
    with state().client() as client:
        snap = resolve_snapshot(client, snapshot)
        confirm(f"Delete snapshot {snap.name} of VM {snap.vm_name} ({snap.id})?", yes=yes)
        client.snapshots.delete(snap.id)
    success(f"deleted snapshot {snap.name} ({snap.id})")


@vm_app.command("clone")
def clone_vm(
    vm: str = ref_argument("vm", "Source VM name or id."),
    name: str = typer.Argument(..., help="Name of the clone."),
    vcpus: int | None = typer.Option(
        None, "--vcpus", "-c", min=1, help="Virtual CPUs (default: the source's)."
    ),
    memory: int | None = typer.Option(
        None, "--memory", "-m", help="MiB (default: the source's)", min=128
    ),
    network: str | None = typer.Option(None, "--network", help="Network for the clone."),
    no_start: bool = typer.Option(False, "--no-start", help="Leave the clone stopped."),
) -> None:
    """Clone a VM: copy-on-write root disk, fresh identity, independent afterwards.

    Example:

        nexus vm clone web web-2 --memory 512
    """
    overrides = {
        k: v for k, v in {"vcpus": vcpus, "memory_mib": memory, "network": network}.items() if v
    }
    with state().client() as client:
        src = resolve(client, vm)
        emit_one(client.vms.clone(src.id, name, start=not no_start, overrides=overrides or None))


def register(app: typer.Typer) -> None:
    """Add the ``snapshot`` group (``vm clone`` attaches to the ``vm`` group on import)."""
    app.add_typer(snapshot_app, name="snapshot")
