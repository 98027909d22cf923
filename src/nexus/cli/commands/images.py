"""``nexus image ...``: guest images."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, finish_operation, success
from nexus.cli._resolve import KINDS, pick_by_name, ref_argument
from nexus.cli._state import state
from nexus.client import Client, Image, Operation

image_app = typer.Typer(help="Guest images (kernel + initrd + ext4 rootfs).", no_args_is_help=True)

COLUMNS = [
    Column("id"),
    Column("name"),
    Column("source"),
    Column("public"),
    Column("kernel_version", "KERNEL"),
    Column("rootfs_size_mib", "ROOTFS MiB"),
    Column("created_at", "CREATED"),
]


def resolve(client: Client, ref: str) -> Image:
    """An image by id or name (the newest of that name: images are listed newest first)."""
    if ref.startswith(KINDS["image"].prefix):
        return client.images.get(ref)
    matches = [img for img in client.images.list() if img.name == ref]
    return pick_by_name(client, "image", ref, matches[:1])


IMAGE_ARG = ref_argument("image")


@image_app.command("list")
def list_images() -> None:
    """List images you may use.

    Example:

        nexus image list
    """
    with state().client() as client:
        emit_list(client.images.list(), COLUMNS)


@image_app.command("get")
def get_image(image: str = IMAGE_ARG) -> None:
    """Show one image.

    Example:

        nexus image get default -o json
    """
    with state().client() as client:
        emit_one(resolve(client, image))


@image_app.command("build")
def build(
    name: str = typer.Argument("default", help="default (debootstrap + python3) or test"),
    force: bool = typer.Option(
        False, "--force", help="Rebuild even if cached (admin: clears the shared build cache)."
    ),
    public: bool | None = typer.Option(
        None,
        "--public/--private",
        help="Visible to every user (admin only); default: public for an admin, private "
        "(yours) for an operator.",
    ),
    no_wait: bool = typer.Option(
        False, "--no-wait", help="Print the operation id and return at once."
    ),
    timeout: float = typer.Option(1800.0, "--timeout", help="Seconds to wait for the build."),
) -> None:
    """Build a Nexus image from Debian packages (an operation; cached by content).

    Example:

        nexus image build default
    """
    if name not in ("default", "test"):
        raise typer.BadParameter("choose 'default' or 'test'")
    with state().client() as client:
        op = client.images.build(name, force=force, public=public, wait=False)  # type: ignore[arg-type]
        if isinstance(op, Operation):
            op = finish_operation(
                client, op, wait=not no_wait, timeout=timeout, message=f"building {name}"
            )
            if not no_wait:
                emit_one(client.images.get(str((op.result or {})["image_id"])))


@image_app.command("import")
def import_image(
    name: str = typer.Argument(..., help="Name of the new image."),
    kernel: str = typer.Option(..., "--kernel", help="Path on the manager's machine."),
    rootfs: str = typer.Option(..., "--rootfs", help="ext4 image path on the manager."),
    initrd: str | None = typer.Option(
        None, "--initrd", help="Initramfs path on the manager (optional)."
    ),
    description: str = typer.Option("", "--description", help="Free text."),
    public: bool = typer.Option(False, "--public", help="Visible to every user."),
) -> None:
    """Register files already on the manager's machine (admin).

    Example:

        nexus image import custom --kernel /srv/img/vmlinuz --rootfs /srv/img/root.ext4
    """
    with state().client() as client:
        emit_one(
            client.images.import_(
                name,
                kernel_path=kernel,
                rootfs_path=rootfs,
                initrd_path=initrd,
                description=description,
                public=public,
            )
        )


@image_app.command("upload")
def upload(
    name: str = typer.Argument(..., help="Name of the new image."),
    kernel: Path = typer.Option(
        ..., "--kernel", exists=True, dir_okay=False, help="Local kernel file (vmlinux/bzImage)."
    ),
    rootfs: Path = typer.Option(
        ..., "--rootfs", exists=True, dir_okay=False, help="Local ext4 root filesystem image."
    ),
    initrd: Path | None = typer.Option(
        None, "--initrd", exists=True, dir_okay=False, help="Local initramfs (optional)."
    ),
    description: str = typer.Option("", "--description", help="Free text."),
) -> None:
    """Upload local files (streamed; checksums verified by the server).

    Example:

        nexus image upload my-img --kernel ./vmlinuz --rootfs ./root.ext4
    """
    with state().client() as client:
        emit_one(
            client.images.upload(
                name, kernel=kernel, rootfs=rootfs, initrd=initrd, description=description
            )
        )


@image_app.command("update")
def update_image(
    image: str = IMAGE_ARG,
    description: str | None = typer.Option(None, "--description", "-d", help="New description."),
    public: bool | None = typer.Option(
        None, "--public/--private", help="Visible to every user, or to its owner only."
    ),
) -> None:
    """Change an image's description or visibility (owner or admin).

    Example:

        nexus image update tiny --public -d "busybox test image"
    """
    if description is None and public is None:
        raise typer.BadParameter("give --description and/or --public/--private")
    with state().client() as client:
        target = resolve(client, image)
        emit_one(client.images.update(target.id, description=description, public=public))


@image_app.command("delete")
def delete_image(image: str = IMAGE_ARG, yes: bool = YES) -> None:
    """Delete an image (refused while a VM uses it; asks first on a terminal).

    Example:

        nexus image delete my-img --yes
    """
    with state().client() as client:
        target = resolve(client, image)
        confirm(f"Delete image {target.name} ({target.id})?", yes=yes)
        client.images.delete(target.id)
    success(f"deleted image {target.name} ({target.id})")


def register(app: typer.Typer) -> None:
    """Add the ``image`` group."""
    app.add_typer(image_app, name="image")
