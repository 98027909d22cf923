"""Names or ids: the one place the CLI turns what a person typed into a resource.

Every command that takes a resource takes its **name or its id**. Use these helpers instead
of writing a lookup per module::

    from nexus.cli._resolve import ref_argument, resolve

    @vm_app.command("stop")
    def stop(vm: str = ref_argument("vm")) -> None:        # help text + name completion
        with state().client() as client:
            target = resolve(client, "vm", vm)               # an SDK model (Vm)

A kind is registered once in :data:`KINDS` (``register_kind``): its id prefix, the
``Client`` attribute of its collection and the field holding its name. An argument that
starts with the prefix is fetched by id; anything else is looked up by name among what the
caller may see. Several matches: the caller's own one, else an error asking for the id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import typer

from nexus.cli._state import CliError, state
from nexus.client import Client

R = TypeVar("R")


@dataclass(frozen=True)
class Kind:
    """How to find one kind of resource by id or name."""

    name: str  # the word people read: "vm", "network", "snapshot"
    prefix: str  # id prefix, e.g. "vm_"
    collection: str  # attribute of nexus.client.Client, e.g. "vms"
    name_field: str = "name"
    label: str = ""  # for help texts ("VM"); default: name
    group: str = ""  # the CLI group that lists them ("auth token"); default: name

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def list_command(self) -> str:
        return f"nexus {self.group or self.name} list"


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Make ``kind`` known to :func:`resolve`, :func:`complete` and :func:`ref_argument`."""
    KINDS[kind.name] = kind
    return kind


for _k in (
    Kind("vm", "vm_", "vms", label="VM"),
    Kind("image", "img_", "images"),
    Kind("network", "net_", "networks"),
    Kind("volume", "vol_", "volumes"),
    Kind("snapshot", "snap_", "snapshots"),
    Kind("template", "tpl_", "templates"),
    Kind("host", "host_", "hosts"),
    Kind("user", "usr_", "users", name_field="username"),
    Kind("token", "tok_", "tokens", label="API token", group="auth token"),
    Kind("operation", "op_", "operations", name_field="id"),
    Kind("schedule", "sch_", "schedules"),
    Kind("group", "grp_", "groups", label="instance group"),
    Kind("webhook", "whk_", "webhooks"),
):
    register_kind(_k)


def pick_by_name(
    client: Client, kind: str, ref: str, matches: Sequence[R], *, hint: str | None = None
) -> R:
    """The one item named ``ref``: if several share the name, the caller's own one."""
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = KINDS.get(kind)
        hint = hint or (known.list_command if known else None)
        raise CliError(f"{kind} '{ref}' not found" + (f" (see: {hint})" if hint else ""))
    me = client.me().user.id
    own = [m for m in matches if getattr(m, "created_by_user_id", None) == me]
    if len(own) == 1:
        return own[0]
    ids = ", ".join(str(getattr(m, "id", "?")) for m in matches[:5])
    raise CliError(f"several {kind}s are named '{ref}' ({ids}); use the id")


def resolve(client: Client, kind: str, ref: str, *, among: Iterable[Any] | None = None) -> Any:
    """The resource of ``kind`` whose id or name is ``ref`` (``among``: search these instead
    of listing the collection)."""
    k = KINDS[kind]
    coll = getattr(client, k.collection)
    if ref.startswith(k.prefix) and among is None:
        return coll.get(ref)
    items = coll.list() if among is None else among
    matches = [x for x in items if ref in (getattr(x, k.name_field, None), getattr(x, "id", None))]
    return pick_by_name(client, k.title, ref, matches, hint=k.list_command)


def resolve_id(client: Client, kind: str, ref: str) -> str:
    """The id of the resource of ``kind`` named ``ref`` (an id is returned unchanged, unfetched)."""
    if ref.startswith(KINDS[kind].prefix):
        return ref
    return str(resolve(client, kind, ref).id)


def complete(kind: str) -> Callable[[str], list[str]]:
    """A Typer ``autocompletion`` callback: the names (then ids) of ``kind`` that start with
    what was typed. Silent on any error (no manager, not logged in): completion never fails."""

    def _complete(incomplete: str) -> list[str]:
        k = KINDS[kind]
        try:
            with state().client() as client:
                out: list[str] = []
                for item in getattr(client, k.collection).list(limit=200):
                    for value in (getattr(item, k.name_field, None), getattr(item, "id", None)):
                        if isinstance(value, str) and value.startswith(incomplete):
                            out.append(value)
                    if len(out) >= 200:
                        break
                return list(dict.fromkeys(out))
        except Exception:  # completion must never print a traceback into the shell
            return []

    return _complete


def ref_argument(kind: str, help: str | None = None, *, required: bool = True) -> Any:
    """A positional argument naming one resource of ``kind``: help text and completion."""
    k = KINDS[kind]
    return typer.Argument(
        ... if required else None,
        help=help or f"{k.title} name or id.",
        autocompletion=complete(kind),
        show_default=False,
    )


def ref_option(kind: str, *names: str, help: str | None = None) -> Any:
    """An option naming one resource of ``kind`` (default ``None``): help and completion."""
    k = KINDS[kind]
    return typer.Option(
        None,
        *(names or (f"--{kind}",)),
        help=help or f"{k.title} name or id.",
        autocompletion=complete(kind),
    )
