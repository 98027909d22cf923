"""``nexus vm ...``: virtual machines — create, list, lifecycle, console.

Other VM commands (exec, ssh, metrics, clone, ...) live in their own modules and attach to
:data:`vm_app`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, console, emit_list, emit_one, finish_operation, success
from nexus.cli._resolve import ref_argument
from nexus.cli._resolve import resolve as resolve_ref
from nexus.cli._state import state
from nexus.client import Client, NexusError, Operation, Vm

vm_app = typer.Typer(help="Virtual machines.", no_args_is_help=True)

# Tables show names where people read them: image and host names (looked up once per
# listing), the first NIC's IP. JSON/YAML keep the API's fields (ids), plus the same names.
COLUMNS = [
    Column("id"),
    Column("name"),
    Column("state"),
    Column("vcpus", "CPU"),
    Column("memory_mib", "MEM MiB"),
    Column("image_name", "IMAGE"),
    Column("host_name", "HOST"),
    Column("ip", "IP"),
    Column("created_at", "CREATED"),
]
NO_WAIT = typer.Option(False, "--no-wait", help="Print the operation id and return at once.")
TIMEOUT = typer.Option(600.0, "--timeout", help="Seconds to wait for the operation.")
VM_ARG = ref_argument("vm")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, option: str) -> int:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h``, ``1d``, ``1w`` (also ``1h30m``)."""
    total, num = 0, ""
    for ch in text.strip().lower():
        if ch.isdigit():
            num += ch
        elif ch in _UNITS and num:
            total, num = total + int(num) * _UNITS[ch], ""
        else:
            raise typer.BadParameter(f"{option} {text!r}: expected e.g. 90s, 30m, 2h, 1d")
    if num:
        total += int(num)
    if total <= 0:
        raise typer.BadParameter(f"{option} {text!r}: expected e.g. 90s, 30m, 2h, 1d")
    return total


def resolve(client: Client, ref: str) -> Vm:
    """A VM by id (``vm_...``) or by name (see :mod:`nexus.cli._resolve`)."""
    vm: Vm = resolve_ref(client, "vm", ref)
    return vm


def _names(client: Client, collection: str) -> dict[str, str]:
    """id -> name of a collection the caller may list (empty if it may not, e.g. hosts)."""
    try:
        return {x.id: x.name for x in getattr(client, collection).list()}
    except NexusError:
        return {}


def with_names(client: Client, vms: list[Vm]) -> list[dict[str, Any]]:
    """VM rows with ``image_name``, ``host_name`` and ``ip`` (the first NIC's) added."""
    images = _names(client, "images") if vms else {}
    hosts = _names(client, "hosts") if any(v.host_id for v in vms) else {}
    rows = []
    for vm in vms:
        row = vm.to_dict()
        row["image_name"] = images.get(vm.image_id, vm.image_id)
        row["host_name"] = hosts.get(vm.host_id, vm.host_id) if vm.host_id else None
        nics = row.get("nics") or []
        row["ip"] = ",".join(str(n["ip"]) for n in nics if n.get("ip")) or None
        rows.append(row)
    return rows


def _finish(client: Client, result: Vm | Operation, *, no_wait: bool, timeout: float) -> None:
    if isinstance(result, Operation):
        finish_operation(client, result, wait=not no_wait, timeout=timeout)
        return
    emit_one(result)


@vm_app.command("list")
def list_vms(
    state_filter: str | None = typer.Option(
        None, "--state", help="Only VMs in this state (running, stopped, paused, error, ...)."
    ),
    label: str | None = typer.Option(
        None, "--label", "-l", help="Only VMs with this label: key or key=value."
    ),
    search: str | None = typer.Option(
        None, "--search", "-s", help="Only VMs whose name contains this (any case)."
    ),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="At most N VMs."),
    watch: bool = typer.Option(
        False, "--watch", "-w", help="Print the list again whenever a VM changes (Ctrl-C ends)."
    ),
) -> None:
    """List VMs you may see: name, state, size, image, host and IP.

    Examples:

        nexus vm list --state running -l team=blue

        nexus vm list --search web

        nexus vm list --watch
    """
    filters: dict[str, str] = {
        k: v for k, v in {"state": state_filter, "label": label, "q": search}.items() if v
    }
    with state().client() as client:
        vms = list(client.vms.list(limit=limit, **filters))  # type: ignore[arg-type]
        emit_list(with_names(client, vms), COLUMNS)
        if not watch:
            return
        from nexus.cli.commands.events import follow

        def redraw(ev: Any) -> None:
            if console.is_terminal:
                console.clear()
            console.print(f"[dim]{ev.type} {ev.resource_name or ev.resource_id}[/dim]")
            again = list(client.vms.list(limit=limit, **filters))  # type: ignore[arg-type]
            emit_list(with_names(client, again), COLUMNS)

        newest = next(iter(client.events.list(limit=1)), None)
        follow(client, types=["vm.*"], after=newest.id if newest else None, on_event=redraw)


@vm_app.command("get")
def get_vm(vm: str = VM_ARG) -> None:
    """Show one VM (with its image and host names and its IPs).

    Example:

        nexus vm get web -o json
    """
    with state().client() as client:
        emit_one(with_names(client, [resolve(client, vm)])[0])


def _read_ssh_key(value: str) -> list[str]:
    """``--ssh-key``: a public key itself, or the path of a .pub file holding one or more."""
    text = value.strip()
    if text.split(" ", 1)[0].startswith(("ssh-", "ecdsa-", "sk-")):
        return [text]
    path = Path(value).expanduser()
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except OSError as exc:
        raise typer.BadParameter(
            f"{value!r} is neither a public key nor a readable file ({exc.strerror})",
            param_hint="--ssh-key",
        ) from exc
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    if not keys:
        raise typer.BadParameter(f"{value}: no public key in it", param_hint="--ssh-key")
    return keys


def _read_user_data(value: str) -> str:
    """``--user-data``: a file, or ``-`` for stdin."""
    if value == "-":
        return sys.stdin.read()
    try:
        return Path(value).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {value}: {exc}", param_hint="--user-data") from exc


@vm_app.command("create")
def create_vm(
    name: str = typer.Argument(..., help="Name of the new VM (DNS label: a-z 0-9 -)."),
    image: str = typer.Option("default", "--image", "-i", help="Image id or name."),
    vcpus: int | None = typer.Option(
        None, "--vcpus", "-c", min=1, help="Virtual CPUs (default: the server's, 1)."
    ),
    memory: int | None = typer.Option(
        None, "--memory", "-m", help="Memory in MiB (default: the server's).", min=128
    ),
    disk: int | None = typer.Option(None, "--disk", help="Root disk size in MiB."),
    label: list[str] = typer.Option([], "--label", "-l", help="key=value (repeatable)"),
    network: list[str] = typer.Option(
        [],
        "--network",
        help="Network name or id to join, one NIC each, in order (repeatable; default: "
        "your 'default' network).",
    ),
    ssh_key: list[str] = typer.Option(
        [],
        "--ssh-key",
        help="OpenSSH public key for root, added at first boot: the key itself or a path "
        "to a .pub file (repeatable).",
    ),
    user_data: str | None = typer.Option(
        None,
        "--user-data",
        help="File (or - for stdin) written to /var/lib/nexus/user-data at first boot; "
        "run once as root if it starts with #!.",
    ),
    no_start: bool = typer.Option(False, "--no-start", help="Create it stopped."),
    from_template: str | None = typer.Option(
        None, "--from-template", help="Template id or name (its spec; flags override)."
    ),
    from_snapshot: str | None = typer.Option(
        None, "--from-snapshot", help="Snapshot name or id: a new VM restored from it."
    ),
    ttl: str | None = typer.Option(
        None,
        "--ttl",
        help="Delete the VM after this long: 90s, 30m, 2h, 1d (at least 60 s); see "
        "`nexus vm extend`.",
    ),
    no_wait: bool = NO_WAIT,
    timeout: float = TIMEOUT,
) -> None:
    """Create a VM; waits until it runs (guest agent answered) unless --no-wait.

    Examples:

        nexus vm create web --image default --memory 512 -l team=blue

        nexus vm create app --network frontend --network backend

        nexus vm create web2 --from-template small-web

        nexus vm create twin --from-snapshot before-upgrade

        nexus vm create scratch --ttl 2h

        nexus vm create box --ssh-key ~/.ssh/id_ed25519.pub --user-data setup.sh
    """
    keys = [key for k in ssh_key for key in _read_ssh_key(k)]
    user_data_text = _read_user_data(user_data) if user_data is not None else None
    if (keys or user_data_text is not None) and (from_template or from_snapshot):
        raise typer.BadParameter(
            "--ssh-key/--user-data apply at first boot: not with --from-template or "
            "--from-snapshot",
        )
    if from_template and from_snapshot:
        raise typer.BadParameter("give --from-template or --from-snapshot, not both")
    if ttl and from_template:
        raise typer.BadParameter("--ttl with --from-template: create, then `nexus vm extend`")
    ttl_s = parse_duration(ttl, "--ttl") if ttl else None
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
            extra: dict[str, Any] = {}
            if from_snapshot:
                extra["from_snapshot"] = resolve_ref(client, "snapshot", from_snapshot).id
            if network:
                extra["networks"] = network  # names or ids: the manager resolves them
            if ttl_s is not None:
                extra["ttl_s"] = ttl_s
            result = client.vms.create(
                name,
                image=image,
                vcpus=vcpus,
                memory_mib=memory,
                disk_size_mib=disk,
                labels=labels or None,
                start=not no_start,
                ssh_keys=keys or None,
                user_data=user_data_text,
                wait=False,
                **extra,
            )
        if isinstance(result, Operation) and not no_wait:
            op = finish_operation(
                client, result, wait=True, timeout=timeout, message=f"creating {name}"
            )
            emit_one(with_names(client, [client.vms.get(str(op.resource_id))])[0])
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
def start_vm(vm: str = VM_ARG, no_wait: bool = NO_WAIT, timeout: float = TIMEOUT) -> None:
    """Boot a stopped VM.

    Example:

        nexus vm start web
    """
    _action("start", vm, no_wait, timeout)


@vm_app.command("stop")
def stop_vm(
    vm: str = VM_ARG,
    force: bool = typer.Option(False, "--force", "-f", help="Kill instead of ACPI shutdown."),
    no_wait: bool = NO_WAIT,
    timeout: float = TIMEOUT,
) -> None:
    """Shut a VM down (ACPI, then force after the server's timeout).

    Example:

        nexus vm stop web --force
    """
    _action("stop", vm, no_wait, timeout, force=force)


@vm_app.command("reboot")
def reboot_vm(vm: str = VM_ARG, no_wait: bool = NO_WAIT, timeout: float = TIMEOUT) -> None:
    """Reboot a running VM.

    Example:

        nexus vm reboot web
    """
    _action("reboot", vm, no_wait, timeout)


@vm_app.command("pause")
def pause_vm(vm: str = VM_ARG, no_wait: bool = NO_WAIT, timeout: float = TIMEOUT) -> None:
    """Freeze a running VM.

    Example:

        nexus vm pause web
    """
    _action("pause", vm, no_wait, timeout)


@vm_app.command("resume")
def resume_vm(vm: str = VM_ARG, no_wait: bool = NO_WAIT, timeout: float = TIMEOUT) -> None:
    """Continue a paused VM.

    Example:

        nexus vm resume web
    """
    _action("resume", vm, no_wait, timeout)


@vm_app.command("delete")
def delete_vm(
    vm: str = VM_ARG,
    yes: bool = YES,
    no_wait: bool = NO_WAIT,
    timeout: float = TIMEOUT,
) -> None:
    """Delete a VM and everything of it on its host (asks first on a terminal).

    Example:

        nexus vm delete web --yes
    """
    with state().client() as client:
        target = resolve(client, vm)
        confirm(f"Delete VM {target.name} ({target.id}) and its disk?", yes=yes)
        op = client.vms.delete(target.id, wait=False)
        if isinstance(op, Operation):
            finish_operation(client, op, wait=not no_wait, timeout=timeout, message="deleting")
    if not no_wait:
        success(f"deleted vm {target.name} ({target.id})")


def register(app: typer.Typer) -> None:
    """Add the ``vm`` group."""
    app.add_typer(vm_app, name="vm")
