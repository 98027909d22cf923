"""``nexus quota ...``: per-user limits and usage."""

from __future__ import annotations

import sys

import typer

from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import ref_argument
from nexus.cli._state import state
from nexus.client import Quota

quota_app = typer.Typer(
    help="Quotas: your limits and usage; admins set anyone's.", no_args_is_help=True
)

LIMIT_NAMES = (
    "vms",
    "vcpus",
    "memory_mib",
    "disk_mib",
    "volumes",
    "networks",
    "snapshots",
    "images",
    "api_tokens",
)
COLUMNS = [Column("limit"), Column("usage"), Column("max", "LIMIT"), Column("source")]


def _limit(n: int | None) -> str:
    return "unlimited" if n is None or n < 0 else str(n)


def _show(q: Quota) -> None:
    if state().output != "table" or state().quiet:
        emit_one(q, id_field="user_id")
        return
    sys.stderr.write(f"quota of {q.username} ({q.user_id}, role {q.role})\n")
    rows = [
        {
            "limit": name,
            "usage": q.usage.get(name, 0),
            "max": _limit(q.limits.get(name)),
            "source": "override" if name in q.overrides else "role default",
        }
        for name in LIMIT_NAMES
    ]
    emit_list(rows, COLUMNS, id_field="limit")


@quota_app.command("show")
def show(
    user: str | None = ref_argument(
        "user", "User id or username (admin); default: yourself.", required=False
    ),
) -> None:
    """Show limits and usage (disk_mib: root disks + volumes; -1/unlimited: no limit).

    Examples:

        nexus quota show

        nexus quota show alice          # admin
    """
    with state().client() as client:
        _show(client.quotas.get(user) if user else client.quotas.me())


@quota_app.command("set")
def set_quota(
    user: str = ref_argument("user"),
    limits: list[str] = typer.Argument(
        ...,
        help="LIMIT=N pairs (N=-1 or 'unlimited': no limit; N='default': the role default). "
        f"Limits: {', '.join(LIMIT_NAMES)}.",
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Drop the user's other overrides (default: keep them)."
    ),
) -> None:
    """Set a user's quota overrides (admin).

    Examples:

        nexus quota set alice vms=5 memory_mib=8192

        nexus quota set alice vcpus=unlimited disk_mib=default
    """
    values: dict[str, int | None] = {}
    for item in limits:
        name, sep, raw = item.partition("=")
        if not sep or name not in LIMIT_NAMES:
            raise typer.BadParameter(
                f"{item!r}: expected LIMIT=N with LIMIT one of {', '.join(LIMIT_NAMES)}"
            )
        if raw == "default":
            values[name] = None
        elif raw == "unlimited":
            values[name] = -1
        else:
            try:
                values[name] = int(raw)
            except ValueError:
                raise typer.BadParameter(
                    f"{item!r}: N is a number, 'unlimited' or 'default'"
                ) from None
    with state().client() as client:
        current = {} if replace else dict(client.quotas.get(user).overrides)
        merged: dict[str, int | None] = {**current, **values}
        q = client.quotas.set(user, **merged)
    success(f"quota of {q.username} updated")
    _show(q)


def register(app: typer.Typer) -> None:
    """Add the ``quota`` group."""
    app.add_typer(quota_app, name="quota")
