"""``nexus vm ...``: virtual machines — create, list, lifecycle, console.

Other VM commands (exec, ssh, metrics, clone, ...) live in their own modules and attach to
:data:`vm_app`.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from nexus.cli._output import Column, console, emit_list, emit_one, finish_operation, success
from nexus.cli._state import CliError, state
from nexus.client import Client, Operation, Vm

vm_app = typer.Typer(help="Virtual machines.", no_args_is_help=True)

COLUMNS = [
    Column("id"),
    Column("name"),
    Column("state"),
    Column("vcpus", "CPU"),
    Column("memory_mib", "MEM MiB"),
    Column("image_id", "IMAGE"),
    Column("host_id", "HOST"),
    Column("created_at", "CREATED"),
]
NO_WAIT = typer.Option(False, "--no-wait", help="Print the operation id and return at once.")
TIMEOUT = typer.Option(600.0, "--timeout", help="Seconds to wait for the operation.")


def resolve(client: Client, ref: str) -> Vm:
    """A VM by id (``vm_...``) or by name."""
    if ref.startswith("vm_"):
        return client.vms.get(ref)
    matches = [v for v in client.vms.list() if v.name == ref]
    if not matches:
        raise CliError(f"vm '{ref}' not found")
    if len(matches) > 1:
        raise CliError(f"several VMs are named '{ref}'; use the id")
    return matches[0]


def _finish(client: Client, result: Vm | Operation, *, no_wait: bool, timeout: float) -> None:
    if isinstance(result, Operation):
        finish_operation(client, result, wait=not no_wait, timeout=timeout)
        return
    emit_one(result)


@vm_app.command("list")
def list_vms(
    state_filter: str | None = typer.Option(None, "--state", help="Only VMs in this state."),
    label: str | None = typer.Option(None, "--label", "-l", help="key or key=value"),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1),
    watch: bool = typer.Option(
        False, "--watch", "-w", help="Print the list again whenever a VM changes (Ctrl-C ends)."
    ),
) -> None:
    """List VMs you may see.

    Example: nexus vm list --state running --watch
    """
    filters: dict[str, str] = {
        k: v for k, v in {"state": state_filter, "label": label}.items() if v
    }
    with state().client() as client:
        emit_list(client.vms.list(limit=limit, **filters), COLUMNS)  # type: ignore[arg-type]
        if not watch:
            return
        from nexus.cli.commands.events import follow

        def redraw(ev: Any) -> None:
            if console.is_terminal:
                console.clear()
            console.print(f"[dim]{ev.type} {ev.resource_name or ev.resource_id}[/dim]")
            emit_list(client.vms.list(limit=limit, **filters), COLUMNS)  # type: ignore[arg-type]

        newest = next(iter(client.events.list(limit=1)), None)
        follow(client, types=["vm.*"], after=newest.id if newest else None, on_event=redraw)


@vm_app.command("get")
def get_vm(vm: str = typer.Argument(..., help="VM id or name.")) -> None:
    """Show one VM."""
    with state().client() as client:
        emit_one(resolve(client, vm))


@vm_app.command("create")
def create_vm(
    name: str = typer.Argument(..., help="DNS label: a-z 0-9 -"),
    image: str = typer.Option("default", "--image", "-i", help="Image id or name."),
    vcpus: int | None = typer.Option(None, "--vcpus", "-c", min=1),
    memory: int | None = typer.Option(None, "--memory", "-m", help="MiB", min=128),
    disk: int | None = typer.Option(None, "--disk", help="Root disk size in MiB."),
    label: list[str] = typer.Option([], "--label", "-l", help="key=value (repeatable)"),
    no_start: bool = typer.Option(False, "--no-start", help="Create it stopped."),
    from_template: str | None = typer.Option(
        None, "--from-template", help="Template id or name (its spec; flags override)."
    ),
    from_snapshot: str | None = typer.Option(
        None, "--from-snapshot", help="Snapshot id: a new VM restored from it."
    ),
    no_wait: bool = NO_WAIT,
    timeout: float = TIMEOUT,
) -> None:
    """Create a VM; waits until it runs (guest agent answered) unless --no-wait.

    Examples:

        nexus vm create web --image default --memory 512 -l team=blue

        nexus vm create web2 --from-template small-web

        nexus vm create twin --from-snapshot snap_01...
    """
    if from_template and from_snapshot:
        raise typer.BadParameter("give --from-template or --from-snapshot, not both")
    labels = {}
    for item in label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"--label {item!r}: expected key=value")
        labels[k] = v
    with state().client() as client:
        if from_template:
            overrides = {
                k: v
                for k, v in {"vcpus": vcpus, "memory_mib": memory, "labels": labels}.items()
                if v
            }
            result = client.templates.instantiate(
                from_template, name, overrides=overrides or None, start=not no_start, wait=False
            )
        else:
            extra: dict[str, Any] = {"from_snapshot": from_snapshot} if from_snapshot else {}
            result = client.vms.create(
                name,
                image=image,
                vcpus=vcpus,
                memory_mib=memory,
                disk_size_mib=disk,
                labels=labels or None,
                start=not no_start,
                wait=False,
                **extra,
            )
        if isinstance(result, Operation) and not no_wait:
            op = finish_operation(
                client, result, wait=True, timeout=timeout, message=f"creating {name}"
            )
            emit_one(client.vms.get(str(op.resource_id)))
            return
        _finish(client, result, no_wait=no_wait, timeout=timeout)


def _action(action: str, vm: str, no_wait: bool, timeout: float, **kw: bool) -> None:
    with state().client() as client:
        target = resolve(client, vm)
        method = getattr(client.vms, action)
        result = method(target.id, wait=False, **kw)
        if isinstance(result, Operation) and not no_wait:
            finish_operation(
                client, result, wait=True, timeout=timeout, message=f"{action} {target.name}"
            )
            emit_one(client.vms.get(target.id))
            return
        _finish(client, result, no_wait=no_wait, timeout=timeout)


@vm_app.command("start")
def start_vm(
    vm: str = typer.Argument(...), no_wait: bool = NO_WAIT, timeout: float = TIMEOUT
) -> None:
    """Boot a stopped VM."""
    _action("start", vm, no_wait, timeout)


@vm_app.command("stop")
def stop_vm(
    vm: str = typer.Argument(...),
    force: bool = typer.Option(False, "--force", "-f", help="Kill instead of ACPI shutdown."),
    no_wait: bool = NO_WAIT,
    timeout: float = TIMEOUT,
) -> None:
    """Shut a VM down (ACPI, then force after the server's timeout)."""
    _action("stop", vm, no_wait, timeout, force=force)


@vm_app.command("reboot")
def reboot_vm(
    vm: str = typer.Argument(...), no_wait: bool = NO_WAIT, timeout: float = TIMEOUT
) -> None:
    """Reboot a running VM."""
    _action("reboot", vm, no_wait, timeout)


@vm_app.command("pause")
def pause_vm(
    vm: str = typer.Argument(...), no_wait: bool = NO_WAIT, timeout: float = TIMEOUT
) -> None:
    """Freeze a running VM."""
    _action("pause", vm, no_wait, timeout)


@vm_app.command("resume")
def resume_vm(
    vm: str = typer.Argument(...), no_wait: bool = NO_WAIT, timeout: float = TIMEOUT
) -> None:
    """Continue a paused VM."""
    _action("resume", vm, no_wait, timeout)


@vm_app.command("delete")
def delete_vm(
    vm: str = typer.Argument(...),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    no_wait: bool = NO_WAIT,
    timeout: float = TIMEOUT,
) -> None:
    """Delete a VM and everything of it on its host."""
    with state().client() as client:
        target = resolve(client, vm)
        if not yes and sys.stdin.isatty():
            typer.confirm(f"Delete VM {target.name} ({target.id})?", abort=True)
        op = client.vms.delete(target.id, wait=False)
        if isinstance(op, Operation):
            finish_operation(client, op, wait=not no_wait, timeout=timeout, message="deleting")
    if not no_wait:
        success(f"deleted vm {target.name} ({target.id})")


def register(app: typer.Typer) -> None:
    """Add the ``vm`` group."""
    app.add_typer(vm_app, name="vm")
