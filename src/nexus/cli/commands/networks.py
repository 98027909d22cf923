"""``nexus network ...``: guest networks (private IPv4, NAT or isolated)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import typer

from nexus.cli import _resolve
from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import ref_argument
from nexus.cli._state import state
from nexus.client import Client, Network, Resource

network_app = typer.Typer(
    help="Guest networks (private IPv4, NAT or isolated).", no_args_is_help=True
)

COLUMNS = [
    Column("id"),
    Column("name"),
    Column("cidr", "CIDR"),
    Column("gateway"),
    Column("nat", "NAT"),
    Column("isolated"),
    Column("shared"),
    Column("created_at", "CREATED"),
]

R = TypeVar("R", bound=Resource)


def pick_by_name(client: Client, kind: str, ref: str, matches: Sequence[R]) -> R:
    """The one item named ``ref`` (kept for callers; see :mod:`nexus.cli._resolve`)."""
    return _resolve.pick_by_name(client, kind, ref, matches)


NETWORK_ARG = ref_argument("network")


def resolve(client: Client, ref: str) -> Network:
    """A network by id (``net_...``) or by name."""
    if ref.startswith("net_"):
        return client.networks.get(ref)
    return pick_by_name(
        client, "network", ref, [n for n in client.networks.list() if n.name == ref]
    )


@network_app.command("list")
def list_networks() -> None:
    """List networks you may see (your own and shared ones such as `default`).

    Example:

        nexus network list
    """
    with state().client() as client:
        emit_list(client.networks.list(), COLUMNS)


@network_app.command("get")
def get_network(network: str = NETWORK_ARG) -> None:
    """Show one network.

    Example:

        nexus network get lab -o json
    """
    with state().client() as client:
        emit_one(resolve(client, network))


@network_app.command("create")
def create_network(
    name: str = typer.Argument(..., help="DNS label: a-z 0-9 -"),
    cidr: str | None = typer.Option(
        None,
        "--cidr",
        help="Private IPv4 network, /16 to /29, e.g. 10.50.0.0/24; omit to get a free one "
        "from the admin's network pool.",
    ),
    nat: bool = typer.Option(
        True, "--nat/--no-nat", help="Masquerade guest traffic leaving the host."
    ),
    isolated: bool = typer.Option(
        False, "--isolated", help="Guests reach only their own network and the host."
    ),
    description: str | None = typer.Option(None, "--description", "-d", help="Free text."),
) -> None:
    """Create a network; the bridge on each host takes the CIDR's first address.

    Examples:

        nexus network create lab --cidr 10.50.0.0/24

        nexus network create scratch            # a free range from the network pool

        nexus network create sandbox --cidr 10.60.0.0/24 --isolated

        nexus network create routed --cidr 10.70.0.0/24 --no-nat
    """
    with state().client() as client:
        emit_one(
            client.networks.create(name, cidr, nat=nat, isolated=isolated, description=description)
        )


@network_app.command("update")
def update_network(
    network: str = NETWORK_ARG,
    name: str | None = typer.Option(None, "--name", help="New name."),
    description: str | None = typer.Option(None, "--description", "-d", help="New description."),
    nat: bool | None = typer.Option(None, "--nat/--no-nat", help="Masquerade outbound traffic."),
    isolated: bool | None = typer.Option(
        None, "--isolated/--not-isolated", help="Confine guests to their network and the host."
    ),
) -> None:
    """Rename or describe a network; --nat/--isolated changes are re-applied on every host.

    Example:

        nexus network update lab --no-nat --isolated
    """
    if name is None and description is None and nat is None and isolated is None:
        raise typer.BadParameter(
            "nothing to change: give --name, --description, --nat/--no-nat or --isolated"
        )
    with state().client() as client:
        target = resolve(client, network)
        emit_one(
            client.networks.update(
                target.id, name=name, description=description, nat=nat, isolated=isolated
            )
        )


@network_app.command("delete")
def delete_network(
    network: str = NETWORK_ARG,
    yes: bool = YES,
) -> None:
    """Delete a network (refused while VMs are attached, and for `default`). Asks first on a
    terminal.

    Example:

        nexus network delete lab --yes
    """
    with state().client() as client:
        target = resolve(client, network)
        confirm(f"Delete network {target.name} ({target.id})?", yes=yes)
        client.networks.delete(target.id)
    success(f"deleted network {target.name} ({target.id})")


def register(app: typer.Typer) -> None:
    """Add the ``network`` group."""
    app.add_typer(network_app, name="network")
