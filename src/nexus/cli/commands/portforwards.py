"""``nexus port-forward ...``: guest ports published on the VM's host."""

from __future__ import annotations

from enum import StrEnum

import typer

from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._state import state
from nexus.cli.commands import vms

pf_app = typer.Typer(help="Publish guest ports on the VM's host.", no_args_is_help=True)

COLUMNS = [
    Column("id"),
    Column("host_port", "HOST PORT"),
    Column("protocol", "PROTO"),
    Column("guest_ip", "GUEST IP"),
    Column("guest_port", "GUEST PORT"),
    Column("host_id", "HOST"),
    Column("created_at", "CREATED"),
]


class ProtocolChoice(StrEnum):
    tcp = "tcp"
    udp = "udp"


VM_ARG = typer.Argument(..., help="VM id or name.")


@pf_app.command("list")
def list_port_forwards(vm: str = VM_ARG) -> None:
    """List a VM's published ports."""
    with state().client() as client:
        target = vms.resolve(client, vm)
        emit_list(client.port_forwards.list(target.id), COLUMNS)


@pf_app.command("create")
def create_port_forward(
    vm: str = VM_ARG,
    guest_port: int = typer.Option(..., "--guest-port", "-g", min=1, max=65535),
    host_port: int | None = typer.Option(
        None,
        "--host-port",
        "-p",
        min=1,
        max=65535,
        help="Default: one from the manager's port_forward_range.",
    ),
    protocol: ProtocolChoice = typer.Option(ProtocolChoice.tcp, "--protocol"),
) -> None:
    """Publish a guest port of the VM's first NIC on every address of its host.

    Examples:

        nexus port-forward create web --guest-port 80 --host-port 8080

        nexus port-forward create web --guest-port 22          # host port picked

        nexus port-forward create dns --guest-port 53 --protocol udp
    """
    with state().client() as client:
        target = vms.resolve(client, vm)
        emit_one(
            client.port_forwards.create(
                target.id,
                guest_port,
                host_port=host_port,
                protocol="udp" if protocol is ProtocolChoice.udp else "tcp",
            )
        )


@pf_app.command("delete")
def delete_port_forward(
    vm: str = VM_ARG,
    pf_id: str = typer.Argument(..., help="Port forward id (pf_...)."),
) -> None:
    """Unpublish a port."""
    with state().client() as client:
        target = vms.resolve(client, vm)
        client.port_forwards.delete(target.id, pf_id)
    success(f"deleted port forward {pf_id} of vm {target.name}")


def register(app: typer.Typer) -> None:
    """Add the ``port-forward`` group."""
    app.add_typer(pf_app, name="port-forward")
