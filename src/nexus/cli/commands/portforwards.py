"""``nexus port-forward ...``: guest ports published on the VM's host."""

from __future__ import annotations

from enum import StrEnum

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import ref_argument
from nexus.cli._state import CliError, state
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


VM_ARG = ref_argument("vm")


@pf_app.command("list")
def list_port_forwards(vm: str = VM_ARG) -> None:
    """List a VM's published ports.

    Example:

        nexus port-forward list web
    """
    with state().client() as client:
        target = vms.resolve(client, vm)
        emit_list(client.port_forwards.list(target.id), COLUMNS)


@pf_app.command("create")
def create_port_forward(
    vm: str = VM_ARG,
    guest_port: int = typer.Option(
        ..., "--guest-port", "-g", min=1, max=65535, help="Port inside the guest."
    ),
    host_port: int | None = typer.Option(
        None,
        "--host-port",
        "-p",
        min=1,
        max=65535,
        help="Default: one from the manager's port_forward_range.",
    ),
    protocol: ProtocolChoice = typer.Option(ProtocolChoice.tcp, "--protocol", help="tcp or udp."),
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
    pf_id: str = typer.Argument(
        ..., help="Port forward id (pf_...), or the published host port, e.g. 8080."
    ),
    yes: bool = YES,
) -> None:
    """Unpublish a port. Asks first on a terminal.

    Example:

        nexus port-forward delete web 8080 --yes
    """
    with state().client() as client:
        target = vms.resolve(client, vm)
        if not pf_id.startswith("pf_"):
            by_port = [p for p in client.port_forwards.list(target.id) if str(p.host_port) == pf_id]
            if len(by_port) != 1:
                raise CliError(
                    f"no single port forward of vm {target.name} on host port {pf_id} "
                    f"(see: nexus port-forward list {target.name})"
                )
            pf_id = by_port[0].id
        confirm(f"Unpublish port forward {pf_id} of vm {target.name}?", yes=yes)
        client.port_forwards.delete(target.id, pf_id)
    success(f"deleted port forward {pf_id} of vm {target.name}")


def register(app: typer.Typer) -> None:
    """Add the ``port-forward`` group."""
    app.add_typer(pf_app, name="port-forward")
