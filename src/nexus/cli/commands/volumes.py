"""``nexus volume ...``: persistent volumes and their attachment to VMs."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import ref_argument, ref_option
from nexus.cli._resolve import resolve as resolve_ref
from nexus.cli._state import state
from nexus.cli.commands import vms
from nexus.client import Client, Volume

volume_app = typer.Typer(
    help="Persistent volumes (block devices attached to stopped VMs).", no_args_is_help=True
)


def _attached(att: Any) -> str:
    if not att:
        return "-"
    ro = " (ro)" if att.get("read_only") else ""
    return f"{att.get('vm_id')}:{att.get('device')}{ro}"


COLUMNS = [
    Column("id"),
    Column("name"),
    Column("size_mib", "SIZE MiB"),
    Column("filesystem", "FS"),
    Column("attachment", "ATTACHED", _attached),
    Column("host_id", "HOST"),
    Column("created_at", "CREATED"),
]
ATTACHMENT_COLUMNS = [
    Column("device"),
    Column("volume_id", "VOLUME"),
    Column("read_only", "RO"),
    Column("position"),
    Column("vm_id", "VM"),
]

_SIZE = re.compile(r"^\s*(\d+)\s*([mgt]i?b?)?\s*$", re.IGNORECASE)
_FACTOR = {"m": 1, "g": 1024, "t": 1024 * 1024}


def parse_size(text: str) -> int:
    """MiB from ``512``, ``512M``, ``2G``, ``2GiB``, ``1T`` (a bare number is MiB)."""
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r}: expected MiB or a size like 512M, 2G, 1T")
    unit = (m.group(2) or "m")[0].lower()
    return int(m.group(1)) * _FACTOR[unit]


class FsChoice(StrEnum):
    ext4 = "ext4"
    raw = "raw"


SIZE_HELP = "Size: MiB, or with a unit (512M, 2G, 1T)."


def resolve(client: Client, ref: str) -> Volume:
    """A volume by id (``vol_...``) or by name (see :mod:`nexus.cli._resolve`)."""
    volume: Volume = resolve_ref(client, "volume", ref)
    return volume


VOLUME_ARG = ref_argument("volume")


@volume_app.command("list")
def list_volumes(
    vm: str | None = ref_option(
        "vm", help="Only the volumes attached to this VM (id or name), in device order."
    ),
) -> None:
    """List volumes you may see (or, with --vm, one VM's attachments).

    Example:

        nexus volume list --vm web
    """
    with state().client() as client:
        if vm is not None:
            target = vms.resolve(client, vm)
            emit_list(
                client.volumes.list_for_vm(target.id), ATTACHMENT_COLUMNS, id_field="volume_id"
            )
            return
        emit_list(client.volumes.list(), COLUMNS)


@volume_app.command("get")
def get_volume(volume: str = VOLUME_ARG) -> None:
    """Show one volume.

    Example:

        nexus volume get data
    """
    with state().client() as client:
        emit_one(resolve(client, volume))


@volume_app.command("create")
def create_volume(
    name: str = typer.Argument(..., help="DNS label: a-z 0-9 -"),
    size: str = typer.Option(..., "--size", "-s", help=SIZE_HELP),
    filesystem: FsChoice = typer.Option(
        FsChoice.ext4, "--filesystem", "--fs", help="ext4 (formatted) or raw (empty)."
    ),
    description: str | None = typer.Option(None, "--description", "-d", help="Free text."),
) -> None:
    """Create a volume; its file is made on the host of the first VM it is attached to.

    Examples:

        nexus volume create data --size 2G

        nexus volume create scratch --size 512 --filesystem raw
    """
    size_mib = parse_size(size)
    with state().client() as client:
        emit_one(
            client.volumes.create(
                name,
                size_mib,
                filesystem="raw" if filesystem is FsChoice.raw else "ext4",
                description=description,
            )
        )


@volume_app.command("grow")
def grow_volume(
    volume: str = VOLUME_ARG,
    size: str = typer.Option(..., "--size", "-s", help="New size (larger). " + SIZE_HELP),
) -> None:
    """Grow a detached volume (ext4 is resized offline; volumes never shrink).

    Example:

        nexus volume grow data --size 4G
    """
    size_mib = parse_size(size)
    with state().client() as client:
        target = resolve(client, volume)
        emit_one(client.volumes.grow(target.id, size_mib))


@volume_app.command("delete")
def delete_volume(
    volume: str = VOLUME_ARG,
    yes: bool = YES,
) -> None:
    """Delete a volume and its data (refused while attached). Asks first on a terminal.

    Example:

        nexus volume delete data --yes
    """
    with state().client() as client:
        target = resolve(client, volume)
        confirm(f"Delete volume {target.name} ({target.id}) and its data?", yes=yes)
        client.volumes.delete(target.id)
    success(f"deleted volume {target.name} ({target.id})")


@volume_app.command("attach")
def attach_volume(
    vm: str = ref_argument("vm", "VM name or id (stopped)."),
    volume: str = VOLUME_ARG,
    read_only: bool = typer.Option(False, "--read-only", help="Attach read-only."),
) -> None:
    """Attach a volume to a stopped VM; it appears at the next boot (/dev/vdb, /dev/vdc, ...).

    Example:

        nexus volume attach web data --read-only
    """
    with state().client() as client:
        target_vm = vms.resolve(client, vm)
        target = resolve(client, volume)
        att = client.volumes.attach(target_vm.id, target.id, read_only=read_only)
    emit_one(att, id_field="volume_id")


@volume_app.command("detach")
def detach_volume(
    vm: str = ref_argument("vm", "VM name or id (stopped)."),
    volume: str = VOLUME_ARG,
) -> None:
    """Detach a volume from a stopped VM; its data stays.

    Example:

        nexus volume detach web data
    """
    with state().client() as client:
        target_vm = vms.resolve(client, vm)
        target = resolve(client, volume)
        client.volumes.detach(target_vm.id, target.id)
    success(f"detached volume {target.name} from vm {target_vm.name}")


def register(app: typer.Typer) -> None:
    """Add the ``volume`` group."""
    app.add_typer(volume_app, name="volume")
