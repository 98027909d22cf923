"""``nexus container ...`` and ``nexus container-image ...``: OCI images run as containers,
each in its own microVM."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import Kind, ref_argument, register_kind, resolve_id
from nexus.cli._state import CliError, state
from nexus.cli.commands.vm_guest import terminal

register_kind(Kind("container", "ctr_", "containers"))
register_kind(Kind("container-image", "cimg_", "container_images", label="container image"))

ctr_app = typer.Typer(help="Containers, each in its own microVM.", no_args_is_help=True)
img_app = typer.Typer(help="OCI images for containers.", no_args_is_help=True)

CTR_COLUMNS = [
    Column("id"),
    Column("name"),
    Column("state"),
    Column("exit_code", "EXIT"),
    Column("restart_count", "RESTARTS"),
    Column("image_id", "IMAGE"),
    Column("vm_id", "VM"),
    Column("created_at", "CREATED"),
]
IMG_COLUMNS = [
    Column("id"),
    Column("name"),
    Column("source"),
    Column("digest"),
    Column("size_bytes", "SIZE"),
    Column("created_at", "CREATED"),
]
CTR_ARG = ref_argument("container")
IMG_ARG = ref_argument("container-image")


# --- images ------------------------------------------------------------------------------


@img_app.command("list")
def list_images() -> None:
    """List the container images you may use.

    Example:

        nexus container-image list
    """
    with state().client() as client:
        emit_list(client.container_images.list(), IMG_COLUMNS)


@img_app.command("pull")
def pull_image(
    reference: str = typer.Argument(..., help="Registry reference, e.g. reg:5000/app:1.0."),
    name: str | None = typer.Option(None, "--name", help="Default: the reference."),
    username: str | None = typer.Option(None, "--username", help="Registry user."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the registry password from standard input."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Plain HTTP / unverified TLS (a loopback registry)."
    ),
) -> None:
    """Pull an image from a registry and unpack it (waits for the operation).

    Examples:

        nexus container-image pull registry.example:5000/app:1.0 --name app

        echo "$TOKEN" | nexus container-image pull reg:5000/private:1 --username ci --password-stdin
    """
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    with state().client() as client:
        op = client.container_images.pull(
            reference, name=name, username=username, password=password, tls_verify=not insecure
        )
        done = client.operations.wait(op["id"])
        if done.status != "succeeded":
            raise CliError(f"pull failed: {done.error}")
        emit_one(client.container_images.get((done.result or {})["image_id"]))


@img_app.command("import")
def import_image(
    archive: Path = typer.Argument(..., exists=True, dir_okay=False, help="OCI or docker tar."),
    name: str = typer.Option(..., "--name", help="The image's name."),
) -> None:
    """Import an OCI image layout tar or a docker archive.

    Example:

        nexus container-image import app.tar --name app
    """
    with state().client() as client:
        emit_one(client.container_images.import_archive(archive, name=name))


@img_app.command("delete")
def delete_image(image: str = IMG_ARG, yes: bool = YES) -> None:
    """Delete a container image no container uses.

    Example:

        nexus container-image delete app --yes
    """
    confirm(f"Delete container image {image}?", yes=yes)
    with state().client() as client:
        client.container_images.delete(resolve_id(client, "container-image", image))
    success(f"deleted container image {image}")


# --- containers --------------------------------------------------------------------------


@ctr_app.command("list")
def list_containers() -> None:
    """List your containers.

    Example:

        nexus container list
    """
    with state().client() as client:
        emit_list(client.containers.list(), CTR_COLUMNS)


def _kv(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CliError(f"{what} must be NAME=value, got {item!r}")
        out[k] = v
    return out


def _volume(spec: str) -> dict[str, object]:
    """``VOLUME:/path[:ro|rw]`` as the API's volume mapping."""
    name, sep, rest = spec.partition(":")
    path, mode = rest, "rw"
    if rest.endswith((":ro", ":rw")):
        path, mode = rest[:-3], rest[-2:]
    if not name or not sep or not path.startswith("/"):
        raise CliError(f"bad --volume {spec!r}: VOLUME:/mount/path[:ro]")
    return {"volume": name, "mount_path": path, "read_only": mode == "ro"}


@ctr_app.command("deploy")
def deploy(
    name: str = typer.Argument(..., help="The container's name (a DNS label)."),
    image: str = typer.Option(..., "--image", "-i", help="Container image name or id."),
    env: list[str] = typer.Option([], "--env", "-e", help="NAME=value (repeatable)."),
    port: list[str] = typer.Option(
        [], "--port", "-p", help="CONTAINER_PORT[:HOST_PORT][/udp] (repeatable)."
    ),
    volume: list[str] = typer.Option(
        [], "--volume", "-v", help="VOLUME:/mount/path[:ro] (repeatable): a Nexus volume."
    ),
    restart: str = typer.Option("no", "--restart", help="no | always | on-failure[:max]."),
    memory: int = typer.Option(256, "--memory", help="MiB of guest memory."),
    command: list[str] = typer.Option([], "--command", help="Replaces the entrypoint."),
    user: str | None = typer.Option(None, "--user", help="User[:group] to run as."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return while it is being created."),
) -> None:
    """Run a container image in a microVM of its own.

    Examples:

        nexus container deploy web --image app --port 8080 --restart on-failure:5

        nexus container deploy job --image app --command /bin/sh --command -c --command "echo hi"

        nexus container deploy db --image app --volume data:/var/lib/db --volume seed:/seed:ro
    """
    ports = []
    for p in port:
        spec, _, proto = p.partition("/")
        cport, _, hport = spec.partition(":")
        try:
            mapping: dict[str, object] = {"container_port": int(cport), "protocol": proto or "tcp"}
            if hport:
                mapping["host_port"] = int(hport)
        except ValueError:
            raise CliError(f"bad --port {p!r}: CONTAINER_PORT[:HOST_PORT][/udp]") from None
        ports.append(mapping)
    fields: dict[str, object] = {"env": _kv(env, "--env"), "ports": ports,
                                 "restart_policy": restart, "memory_mib": memory,
                                 "volumes": [_volume(v) for v in volume]}  # fmt: skip
    if command:
        fields["command"] = command
    if user:
        fields["user"] = user
    with state().client() as client:
        c = client.containers.create(name, image, **fields)
        if not no_wait:
            c = client.containers.wait_running(c.id)
        emit_one(c)


@ctr_app.command("logs")
def logs(
    container: str = CTR_ARG,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    tail: int | None = typer.Option(None, "--tail", "-n", help="Only the last N lines."),
) -> None:
    """Print a container's output with timestamps.

    Examples:

        nexus container logs web --tail 50

        nexus container logs web -f
    """
    with state().client() as client:
        cid = resolve_id(client, "container", container)
        lines = client.containers.logs(cid)
        for line in lines[-tail:] if tail else lines:
            typer.echo(f"{line.time.isoformat()} {line.stream} {line.line}")
        seen = len(lines)
        live = ("running", "creating", "restarting")
        while follow and client.containers.get(cid).state in live:
            time.sleep(1)
            lines = client.containers.logs(cid)
            for line in lines[seen:]:
                typer.echo(f"{line.time.isoformat()} {line.stream} {line.line}")
            seen = len(lines)


@ctr_app.command("exec")
def exec_(
    container: str = CTR_ARG,
    command: list[str] = typer.Argument(..., help="The command and its arguments."),
    user: str | None = typer.Option(None, "--user", help="Run as this user[:group]."),
) -> None:
    """Run a command inside a running container (exits with its exit code).

    Example:

        nexus container exec web -- cat /etc/os-release
    """
    with state().client() as client:
        res = client.containers.exec(resolve_id(client, "container", container), command,
                                     user=user)  # fmt: skip
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    raise typer.Exit(res.exit_code)


@ctr_app.command("shell")
def shell(
    container: str = CTR_ARG,
    command: str | None = typer.Option(
        None, "--command", "-c", help="Run this command line instead of a login shell."
    ),
) -> None:
    """An interactive terminal inside the running container (a PTY over the container's
    shell WebSocket): the image user's login shell in the container's root, with its env.
    Exits with the remote shell's exit code.

    Examples:

        nexus container shell web

        nexus container shell web -c 'ls /'

        echo 'id -u; ls /' | nexus container shell web
    """
    with state().client() as client:
        cid = resolve_id(client, "container", container)  # also refreshes the session token
        url, headers = client.containers.ws_target(cid)
    raise typer.Exit(asyncio.run(terminal(url, headers, command)))


def _action(name: str, doc: str) -> None:
    def run(container: str = CTR_ARG) -> None:
        with state().client() as client:
            cid = resolve_id(client, "container", container)
            emit_one(getattr(client.containers, name)(cid))

    run.__doc__ = doc
    ctr_app.command(name)(run)


_action(
    "start", "Start a container's entrypoint again.\n\nExample:\n\n    nexus container start web\n"
)
_action("stop", "SIGTERM the entrypoint, SIGKILL after 10 s.\n\nExample:\n\n"
                "    nexus container stop web\n")  # fmt: skip
_action("restart", "Stop and start the entrypoint.\n\nExample:\n\n"
                   "    nexus container restart web\n")  # fmt: skip


@ctr_app.command("delete")
def delete(container: str = CTR_ARG, yes: bool = YES) -> None:
    """Delete a container and its microVM.

    Example:

        nexus container delete web --yes
    """
    confirm(f"Delete container {container}?", yes=yes)
    with state().client() as client:
        client.containers.delete(resolve_id(client, "container", container))
    success(f"deleting container {container}")


@ctr_app.command("show")
def show(container: str = CTR_ARG) -> None:
    """Show a container: state, exit code, restarts, last error, what it runs.

    Example:

        nexus container show web
    """
    with state().client() as client:
        c = client.containers.get(resolve_id(client, "container", container))
        if state().output == "table":
            typer.echo(json.dumps(c.model_dump(mode="json"), indent=2))
        else:
            emit_one(c)


def register(app: typer.Typer) -> None:
    """Add the ``container`` and ``container-image`` groups."""
    app.add_typer(ctr_app, name="container")
    app.add_typer(img_app, name="container-image")
