"""``nexus vm extend``, ``nexus schedule ...`` and ``nexus group ...``: VM lifetimes,
cron-timed actions and instance groups. (``nexus quota`` lives in ``quotas.py``.)"""

from __future__ import annotations

import json
from typing import Any

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import ref_argument, resolve
from nexus.cli._state import CliError, state
from nexus.cli.commands.vms import parse_duration, vm_app
from nexus.cli.commands.vms import resolve as resolve_vm
from nexus.client import Client, Group

schedule_app = typer.Typer(
    help="Schedules: start, stop, restart, snapshot or delete a VM (or scale a group) on a "
    "cron timetable.",
    no_args_is_help=True,
)
group_app = typer.Typer(
    help="Instance groups: N VMs from one template, kept running and scaled on CPU.",
    no_args_is_help=True,
)

SCHEDULE_COLUMNS = [
    Column("id"),
    Column("name"),
    Column("resource_type", "ON"),
    Column("resource_id", "RESOURCE"),
    Column("action"),
    Column("cron"),
    Column("timezone", "TZ"),
    Column("enabled"),
    Column("next_run_at", "NEXT RUN"),
    Column("disabled_reason", "DISABLED BECAUSE"),
]
RUN_COLUMNS = [
    Column("scheduled_for", "DUE"),
    Column("status"),
    Column("missed"),
    Column("operation_id", "OPERATION"),
    Column("error"),
    Column("detail"),
]
GROUP_COLUMNS = [
    Column("id"),
    Column("name"),
    Column("min"),
    Column("desired"),
    Column("max"),
    Column("running"),
    Column("members", "MEMBERS", fmt=lambda v: str(len(v or []))),
    Column("state_reason", "NOTE"),
]


# --- vm extend ------------------------------------------------------------------------------


@vm_app.command("extend")
def extend_vm(
    vm: str = ref_argument("vm"),
    ttl: str | None = typer.Option(None, "--ttl", help="Expire this long from now (2h, 1d)."),
    by: str | None = typer.Option(None, "--by", help="Add this to the current expiry (30m)."),
    clear: bool = typer.Option(False, "--clear", help="Remove the expiry: the VM lives on."),
) -> None:
    """Move (or remove) a VM's expiry; its owner is warned again before the new one.

    Examples:

        nexus vm extend scratch --by 1h

        nexus vm extend scratch --ttl 1d

        nexus vm extend scratch --clear
    """
    if sum(x is not None for x in (ttl, by)) + int(clear) != 1:
        raise typer.BadParameter("give exactly one of --ttl, --by or --clear")
    with state().client() as client:
        target = resolve_vm(client, vm)
        emit_one(
            client.vms.extend(
                target.id,
                ttl_s=parse_duration(ttl, "--ttl") if ttl else None,
                by_s=parse_duration(by, "--by") if by else None,
                clear=clear,
            )
        )


# --- schedules ------------------------------------------------------------------------------


def _args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"--arg {item!r}: expected key=value")
        try:
            out[k] = json.loads(v)  # numbers, true/false
        except ValueError:
            out[k] = v
    return out


def _resource_id(client: Client, resource_type: str, ref: str) -> str:
    if resource_type == "group":
        return _group(client, ref).id
    return resolve_vm(client, ref).id


@schedule_app.command("create")
def create_schedule(
    resource: str = typer.Argument(..., help="VM (or with --group, group) id or name."),
    action: str = typer.Argument(
        ..., help="start | stop | restart | snapshot | delete (VMs); scale | delete (groups)"
    ),
    cron: str = typer.Argument(..., help="Five-field cron, e.g. '0 19 * * 1-5' (quote it)."),
    timezone: str = typer.Option("UTC", "--tz", help="IANA time zone, e.g. Europe/Berlin."),
    group: bool = typer.Option(False, "--group", help="RESOURCE is an instance group."),
    arg: list[str] = typer.Option(
        [], "--arg", help="key=value: desired=N (scale), keep=N (snapshot), force=true (stop)."
    ),
    name: str | None = typer.Option(None, "--name", help="A name for the schedule."),
    disabled: bool = typer.Option(False, "--disabled", help="Create it switched off."),
) -> None:
    """Run an action on a cron timetable (in --tz, DST-correct).

    Examples:

        nexus schedule create web stop '0 19 * * 1-5' --tz Europe/Berlin

        nexus schedule create web snapshot '0 3 * * *' --arg keep=7

        nexus schedule create workers scale '0 8 * * 1-5' --group --arg desired=4
    """
    resource_type = "group" if group else "vm"
    with state().client() as client:
        rid = _resource_id(client, resource_type, resource)
        emit_one(
            client.schedules.create(
                rid,
                action,  # type: ignore[arg-type]
                cron,
                resource_type=resource_type,  # type: ignore[arg-type]
                timezone=timezone,
                enabled=not disabled,
                args=_args(arg) or None,
                name=name,
            )
        )


@schedule_app.command("list")
def list_schedules(
    resource: str | None = typer.Option(None, "--resource", help="Only this VM's/group's id."),
) -> None:
    """List schedules you may see.

    Example: nexus schedule list --resource vm_01...
    """
    filters: dict[str, Any] = {"resource_id": resource} if resource else {}
    with state().client() as client:
        emit_list(client.schedules.list(**filters), SCHEDULE_COLUMNS)


@schedule_app.command("get")
def get_schedule(schedule: str = ref_argument("schedule")) -> None:
    """Show one schedule.

    Example: nexus schedule get nightly-stop
    """
    with state().client() as client:
        emit_one(resolve(client, "schedule", schedule))


@schedule_app.command("update")
def update_schedule(
    schedule: str = ref_argument("schedule"),
    cron: str | None = typer.Option(None, "--cron", help="A new five-field cron expression."),
    timezone: str | None = typer.Option(None, "--tz", help="A new IANA time zone."),
    action: str | None = typer.Option(None, "--action", help="A new action."),
    enabled: bool | None = typer.Option(
        None, "--enable/--disable", help="Switch it on (its resource must exist) or off."
    ),
    arg: list[str] = typer.Option([], "--arg", help="key=value (replaces all args)."),
    name: str | None = typer.Option(None, "--name", help="A new name."),
) -> None:
    """Change a schedule; --enable turns a self-disabled one on again (if its resource
    exists).

    Example:

        nexus schedule update sch_01... --cron '30 18 * * 1-5' --enable
    """
    fields: dict[str, Any] = {
        k: v
        for k, v in {
            "cron": cron,
            "timezone": timezone,
            "action": action,
            "enabled": enabled,
            "name": name,
            "args": _args(arg) if arg else None,
        }.items()
        if v is not None
    }
    if not fields:
        raise typer.BadParameter("nothing to change")
    with state().client() as client:
        emit_one(client.schedules.update(resolve(client, "schedule", schedule).id, **fields))


@schedule_app.command("delete")
def delete_schedule(schedule: str = ref_argument("schedule"), yes: bool = YES) -> None:
    """Delete a schedule (and its run history).

    Example: nexus schedule delete nightly-stop --yes
    """
    with state().client() as client:
        target = resolve(client, "schedule", schedule)
        confirm(f"Delete schedule {target.name or target.id} ({target.id})?", yes=yes)
        client.schedules.delete(target.id)
    success(f"deleted schedule {target.name or target.id}")


@schedule_app.command("runs")
def schedule_runs(
    schedule: str = ref_argument("schedule"),
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="At most this many runs."),
) -> None:
    """A schedule's runs, newest first (MISSED: due times folded into one run after
    downtime).

    Example: nexus schedule runs nightly-stop -n 5
    """
    with state().client() as client:
        target = resolve(client, "schedule", schedule)
        emit_list(client.schedules.runs(target.id, limit=limit), RUN_COLUMNS)


# --- groups ---------------------------------------------------------------------------------


def _group(client: Client, ref: str) -> Group:
    if ref.startswith("grp_"):
        return client.groups.get(ref)
    matches = [g for g in client.groups.list() if g.name == ref]
    if len(matches) != 1:
        raise CliError(f"group '{ref}' not found" if not matches else f"several groups '{ref}'")
    return matches[0]


@group_app.command("create")
def create_group(
    name: str = typer.Argument(..., help="DNS label; members are <name>-1, <name>-2, ..."),
    image: str = typer.Option("default", "--image", "-i", help="Image id or name of members."),
    vcpus: int = typer.Option(1, "--vcpus", "-c", min=1, help="vCPUs of each member."),
    memory: int = typer.Option(256, "--memory", "-m", help="MiB", min=128),
    min_size: int = typer.Option(1, "--min", min=0, help="Fewest members."),
    max_size: int = typer.Option(1, "--max", min=1, help="Most members."),
    desired: int | None = typer.Option(None, "--desired", min=0, help="Default: --min."),
    cpu_target: float | None = typer.Option(
        None, "--cpu-target", help="Scale on CPU: target percent per vCPU (e.g. 60)."
    ),
    window: int = typer.Option(60, "--window", help="Seconds of CPU samples to average."),
    cooldown: int = typer.Option(120, "--cooldown", help="Seconds between scale changes."),
) -> None:
    """Create an instance group: the manager keeps its members running.

    Examples:

        nexus group create web --min 2 --max 2

        nexus group create workers --min 1 --max 5 --cpu-target 60 --memory 512
    """
    rule = None
    if cpu_target is not None:
        rule = {
            "metric": "cpu",
            "target_percent": cpu_target,
            "window_s": window,
            "cooldown_s": cooldown,
        }
    template = {"image": image, "vcpus": vcpus, "memory_mib": memory}
    with state().client() as client:
        emit_one(
            client.groups.create(
                name, template, min=min_size, max=max_size, desired=desired, scale_rule=rule
            )
        )


@group_app.command("list")
def list_groups() -> None:
    """List instance groups you may see.

    Example: nexus group list
    """
    with state().client() as client:
        emit_list(client.groups.list(), GROUP_COLUMNS)


@group_app.command("get")
def get_group(group: str = ref_argument("group")) -> None:
    """Show one group and its members.

    Example: nexus group get workers
    """
    with state().client() as client:
        emit_one(_group(client, group))


@group_app.command("scale")
def scale_group(
    group: str = ref_argument("group"),
    desired: int = typer.Argument(..., min=0, help="How many members to run."),
) -> None:
    """Set the number of members (clamped to min..max).

    Example: nexus group scale workers 3
    """
    with state().client() as client:
        emit_one(client.groups.scale(_group(client, group).id, desired))


@group_app.command("update")
def update_group(
    group: str = ref_argument("group"),
    min_size: int | None = typer.Option(None, "--min", min=0, help="New fewest members."),
    max_size: int | None = typer.Option(None, "--max", min=1, help="New most members."),
    no_rule: bool = typer.Option(False, "--no-scale-rule", help="Stop scaling on CPU."),
) -> None:
    """Change a group's bounds or drop its scale rule.

    Example: nexus group update workers --max 8
    """
    fields: dict[str, Any] = {k: v for k, v in {"min": min_size, "max": max_size}.items() if v}
    if no_rule:
        fields["scale_rule"] = None
    if not fields:
        raise typer.BadParameter("nothing to change")
    with state().client() as client:
        g = _group(client, group)
        resp = client.request("PATCH", f"/v1/groups/{g.id}", json=fields)
        emit_one(Group.model_validate(resp))


@group_app.command("delete")
def delete_group(
    group: str = ref_argument("group"),
    yes: bool = YES,
) -> None:
    """Delete a group; its member VMs are deleted within a policy pass.

    Example: nexus group delete workers --yes
    """
    with state().client() as client:
        g = _group(client, group)
        confirm(f"Delete group {g.name} and its {len(g.members)} VMs?", yes=yes)
        client.groups.delete(g.id)
    success(f"deleted group {g.name} ({g.id})")


def register(app: typer.Typer) -> None:
    """Add the ``schedule`` and ``group`` groups (``vm extend`` attaches to ``vm``)."""
    app.add_typer(schedule_app, name="schedule")
    app.add_typer(group_app, name="group")
