"""``nexus template ...``: reusable VM specs."""

from __future__ import annotations

import typer

from nexus.cli._output import Column, emit_list, emit_one, success
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
def list_templates(limit: int | None = typer.Option(None, "--limit", "-n", min=1)) -> None:
    """Your templates and public ones."""
    with state().client() as client:
        emit_list(client.templates.list(limit=limit), COLUMNS)


@template_app.command("get")
def get_template(template: str = typer.Argument(..., help="Template id or name.")) -> None:
    """Show one template."""
    with state().client() as client:
        emit_one(client.templates.get(template))


@template_app.command("create")
def create_template(
    name: str = typer.Argument(...),
    image: str = typer.Option("default", "--image", "-i"),
    vcpus: int = typer.Option(1, "--vcpus", "-c", min=1),
    memory: int = typer.Option(256, "--memory", "-m", help="MiB", min=128),
    disk: int | None = typer.Option(None, "--disk", help="Root disk size in MiB."),
    label: list[str] = typer.Option([], "--label", "-l", help="key=value (repeatable)"),
    description: str = typer.Option("", "--description", "-d"),
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
    template: str = typer.Argument(..., help="Template id or name."),
    name: str = typer.Argument(..., help="Name of the new VM."),
    vcpus: int | None = typer.Option(None, "--vcpus", "-c", min=1),
    memory: int | None = typer.Option(None, "--memory", "-m", help="MiB", min=128),
    no_start: bool = typer.Option(False, "--no-start"),
) -> None:
    """Create a VM from a template; waits until it runs."""
    overrides = {k: v for k, v in {"vcpus": vcpus, "memory_mib": memory}.items() if v}
    with state().client() as client:
        emit_one(
            client.templates.instantiate(
                template, name, overrides=overrides or None, start=not no_start
            )
        )


@template_app.command("update")
def update_template(
    template: str = typer.Argument(..., help="Template id or name."),
    name: str | None = typer.Option(None, "--name", help="New name."),
    description: str | None = typer.Option(None, "--description", "-d"),
    public: bool | None = typer.Option(
        None, "--public/--private", help="Visible to every user, or to its owner only."
    ),
) -> None:
    """Rename a template, change its description or visibility (owner or admin)."""
    fields = {"name": name, "description": description, "public": public}
    fields = {k: v for k, v in fields.items() if v is not None}
    if not fields:
        raise typer.BadParameter("give --name, --description and/or --public/--private")
    with state().client() as client:
        emit_one(client.templates.update(template, **fields))


@template_app.command("delete")
def delete_template(template: str = typer.Argument(..., help="Template id or name.")) -> None:
    """Delete a template (VMs made from it stay)."""
    with state().client() as client:
        client.templates.delete(template)
    success(f"deleted template {template}")


def register(app: typer.Typer) -> None:
    """Add the ``template`` group."""
    app.add_typer(template_app, name="template")
