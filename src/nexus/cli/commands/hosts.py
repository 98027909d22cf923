"""``nexus host ...``: the machines that run VMs."""

from __future__ import annotations

from typing import Any

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import ref_argument
from nexus.cli._resolve import resolve as resolve_ref
from nexus.cli._state import state
from nexus.client import Client, Host

host_app = typer.Typer(help="Hosts (agents) and join tokens.", no_args_is_help=True)

COLUMNS = [
    Column("id"),
    Column("name"),
    Column("status"),
    Column("driver"),
    Column("accel"),
    Column("vm_count", "VMS"),
    Column("vcpus", "CPU"),
    Column("memory_mib", "MEM MiB"),
    Column("allocated_memory_mib", "ALLOC MiB"),
    Column("last_heartbeat_at", "HEARTBEAT"),
]


LEADER_COLUMNS = [
    Column("loop"),
    Column("holder", "REPLICA"),
    Column("live"),
    Column("this_replica", "ANSWERED"),
    Column("expires_at", "EXPIRES"),
]


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value} MiB"


def _vm_counts(value: Any) -> str:
    counts = {k: v for k, v in (value or {}).items() if v}
    return " ".join(f"{k}={v}" for k, v in counts.items()) or "0"


def _uptime(value: Any) -> str:
    if value is None:
        return "-"
    s = int(value)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m"


def _load(value: Any) -> str:
    return "-" if not value else " ".join(f"{x:.2f}" for x in value)


METRIC_FIELDS = [
    Column("host_id", "id"),
    Column("name"),
    Column("status"),
    Column("sampled_at", "sampled at"),
    Column("load_avg", "load 1/5/15", _load),
    Column("uptime_s", "uptime", _uptime),
    Column("vcpus", "vcpus"),
    Column("allocated_vcpus", "allocated vcpus"),
    Column("vcpu_limit", "vcpu limit"),
    Column("memory_mib", "memory", _mib),
    Column("mem_available_mib", "memory available", _mib),
    Column("allocated_memory_mib", "allocated memory", _mib),
    Column("vmm_rss_mib", "vmm rss", _mib),
    Column("disk_free_mib", "disk free", _mib),
    Column("disk_total_mib", "disk total", _mib),
    Column("vm_counts", "vms", _vm_counts),
]


def resolve(client: Client, ref: str) -> Host:
    """A host by id or name (see :mod:`nexus.cli._resolve`)."""
    host: Host = resolve_ref(client, "host", ref)
    return host


HOST_ARG = ref_argument("host")


@host_app.command("list")
def list_hosts(
    status: str | None = typer.Option(
        None, "--status", help="Only hosts in this state: healthy, unhealthy or draining."
    ),
    name: str | None = typer.Option(None, "--name", help="Only hosts whose name contains this."),
    driver: str | None = typer.Option(
        None, "--driver", help="Only hosts with this VMM driver (qemu, firecracker)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="At most this many hosts."),
) -> None:
    """List hosts with health and capacity, filtered on the manager (cheap on a big fleet).

    Example:

        nexus host list --status unhealthy
    """
    filters: dict[str, Any] = {
        k: v for k, v in {"status": status, "name": name, "driver": driver}.items() if v
    }
    with state().client() as client:
        emit_list(client.hosts.list(limit=limit, **filters), COLUMNS)


@host_app.command("leaders")
def leaders() -> None:
    """Which manager replica runs each background loop (admin).

    Example:

        nexus host leaders
    """
    with state().client() as client:
        emit_list(client.hosts.leaders(), LEADER_COLUMNS)


@host_app.command("get")
def get_host(host: str = HOST_ARG) -> None:
    """Show one host (including KVM/TCG mode and its warning).

    Example:

        nexus host get node1
    """
    with state().client() as client:
        emit_one(resolve(client, host))


@host_app.command("metrics")
def metrics(host: str = HOST_ARG) -> None:
    """Live host metrics from the last heartbeat: load, memory, disk, uptime, VMM resident
    memory, VMs by state and allocation against the vCPU limit.

    Example:

        nexus host metrics node1 -o json
    """
    with state().client() as client:
        emit_one(client.hosts.metrics(resolve(client, host).id), METRIC_FIELDS, id_field="host_id")


@host_app.command("join-token")
def join_token(
    expires_in: int = typer.Option(3600, "--expires-in", help="Seconds the token is valid."),
) -> None:
    """Mint a single-use join token (admin): nexus-agent --manager URL --join-token TOKEN.

    Example:

        nexus host join-token --expires-in 600
    """
    with state().client() as client:
        tok = client.hosts.join_token(expires_in_s=expires_in)
    st = state()
    if st.quiet or st.output == "table":
        typer.echo(tok.token)
    else:
        emit_one(tok)


@host_app.command("drain")
def drain(host: str = HOST_ARG) -> None:
    """Stop placing new VMs on a host (admin).

    Example:

        nexus host drain node1
    """
    with state().client() as client:
        emit_one(client.hosts.drain(resolve(client, host).id))


@host_app.command("undrain")
def undrain(host: str = HOST_ARG) -> None:
    """Place VMs on a host again (admin).

    Example:

        nexus host undrain node1
    """
    with state().client() as client:
        emit_one(client.hosts.undrain(resolve(client, host).id))


@host_app.command("delete")
def delete_host(host: str = HOST_ARG, yes: bool = YES) -> None:
    """Forget a host (admin); refused while it has VMs. Asks first on a terminal.

    Example:

        nexus host delete node1 --yes
    """
    with state().client() as client:
        target = resolve(client, host)
        confirm(f"Forget host {target.name} ({target.id})?", yes=yes)
        client.hosts.delete(target.id)
    success(f"deleted host {target.name}")


def register(app: typer.Typer) -> None:
    """Add the ``host`` group."""
    app.add_typer(host_app, name="host")
