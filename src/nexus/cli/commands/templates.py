"""``nexus template ...``: reusable VM specs."""

from __future__ import annotations

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import ref_argument, resolve
from nexus.cli._state import state

template_app = typer.Typer(help="VM templates.", no_args_is_help=True)
COLUMNS = [
    Column("id"),
    Column("name"),
    Column("public"),
    Column("description"),
    Column("created_at", "CREATED"),
]


@template_app.command("list")
def list_templates(
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="At most N templates."),
) -> None:
    """Your templates and public ones.

    Example:

        nexus template list
    """
    with state().client() as client:
        emit_list(client.templates.list(limit=limit), COLUMNS)


@template_app.command("get")
def get_template(template: str = ref_argument("template")) -> None:
    """Show one template.

    Example:

        nexus template get small -o yaml
    """
    with state().client() as client:
        emit_one(resolve(client, "template", template))


@template_app.command("create")
def create_template(
    name: str = typer.Argument(..., help="Name of the new template."),
    image: str = typer.Option("default", "--image", "-i", help="Image name or id."),
    vcpus: int = typer.Option(1, "--vcpus", "-c", min=1, help="Virtual CPUs."),
    memory: int = typer.Option(256, "--memory", "-m", help="MiB", min=128),
    disk: int | None = typer.Option(None, "--disk", help="Root disk size in MiB."),
    label: list[str] = typer.Option([], "--label", "-l", help="key=value (repeatable)"),
    description: str = typer.Option("", "--description", "-d", help="Free text."),
    public: bool = typer.Option(False, "--public", help="Visible to every user."),
) -> None:
    """Create a template.

    Example:

        nexus template create small --image default --memory 256 --public
    """
    labels = dict(item.partition("=")[::2] for item in label)
    spec = {"image": image, "vcpus": vcpus, "memory_mib": memory, "labels": labels}
    if disk:
        spec["disk_size_mib"] = disk
    with state().client() as client:
        emit_one(client.templates.create(name, spec, description=description, public=public))


@template_app.command("instantiate")
def instantiate(
    template: str = ref_argument("template"),
    name: str = typer.Argument(..., help="Name of the new VM."),
    vcpus: int | None = typer.Option(
        None, "--vcpus", "-c", min=1, help="Virtual CPUs (default: the template's)."
    ),
    memory: int | None = typer.Option(
        None, "--memory", "-m", help="MiB (default: the template's)", min=128
    ),
    no_start: bool = typer.Option(False, "--no-start", help="Create the VM stopped."),
) -> None:
    """Create a VM from a template; waits until it runs.

    Example:

        nexus template instantiate small web3 --memory 512
    """
    overrides = {k: v for k, v in {"vcpus": vcpus, "memory_mib": memory}.items() if v}
    with state().client() as client:
        tpl = resolve(client, "template", template)
        emit_one(
            client.templates.instantiate(
                tpl.id, name, overrides=overrides or None, start=not no_start
            )
        )


@template_app.command("update")
def update_template(
    template: str = ref_argument("template"),
    name: str | None = typer.Option(None, "--name", help="New name."),
    description: str | None = typer.Option(None, "--description", "-d", help="New description."),
    public: bool | None = typer.Option(
        None, "--public/--private", help="Visible to every user, or to its owner only."
    ),
) -> None:
    """Rename a template, change its description or visibility (owner or admin).

    Example:

        nexus template update small --name small-web --public
    """
    fields = {"name": name, "description": description, "public": public}
    fields = {k: v for k, v in fields.items() if v is not None}
    if not fields:
        raise typer.BadParameter("give --name, --description and/or --public/--private")
    with state().client() as client:
        emit_one(client.templates.update(resolve(client, "template", template).id, **fields))


@template_app.command("delete")
def delete_template(template: str = ref_argument("template"), yes: bool = YES) -> None:
    """Delete a template (VMs made from it stay; asks first on a terminal).

    Example:

        nexus template delete small --yes
    """
    with state().client() as client:
        target = resolve(client, "template", template)
        confirm(f"Delete template {target.name} ({target.id})?", yes=yes)
        client.templates.delete(target.id)
    success(f"deleted template {target.name} ({target.id})")


def register(app: typer.Typer) -> None:
    """Add the ``template`` group."""
    app.add_typer(template_app, name="template")
