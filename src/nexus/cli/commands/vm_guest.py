"""``nexus vm exec | ssh | metrics`` (and the ``--follow`` of ``nexus vm console``): inside the
guest, over the manager's REST and WebSocket API. Attaches to :data:`vms.vm_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._state import CliError, state
from nexus.cli.commands.vms import VM_ARG, resolve, vm_app
from nexus.client import Client


@vm_app.command(
    "exec",
    context_settings={"ignore_unknown_options": True},
)
def exec_cmd(
    vm: str = VM_ARG,
    command: list[str] = typer.Argument(..., help="The command and its arguments (after --)."),
    timeout: float = typer.Option(60.0, "--timeout", "-t", help="Kill it after N seconds."),
    cwd: str | None = typer.Option(None, "--cwd", help="Working directory in the guest."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE (repeatable)."),
    stdin: bool = typer.Option(False, "--stdin", "-i", help="Send this process's stdin."),
    max_output: int | None = typer.Option(None, "--max-output", help="Bytes per stream."),
) -> None:
    """Run a command in the guest and exit with its exit code.

    Examples:

        nexus vm exec web -- uname -a

        echo hello | nexus vm exec web --stdin -- tee /tmp/hello
    """
    env_map: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--env {item!r}: expected KEY=VALUE")
        env_map[key] = value
    data = sys.stdin.buffer.read() if stdin else None
    with state().client() as client:
        target = resolve(client, vm)
        res = client.vms.exec(
            target.id,
            command,
            env=env_map or None,
            cwd=cwd,
            stdin=data,
            timeout_s=timeout,
            max_output_bytes=max_output,
        )
    if state().output != "table":
        emit_one(res)
    else:
        sys.stdout.buffer.write(res.stdout_bytes)
        sys.stdout.flush()
        sys.stderr.buffer.write(res.stderr_bytes)
        if res.timed_out:
            sys.stderr.write(f"nexus: command timed out after {timeout:g} s (killed)\n")
        if res.truncated:
            sys.stderr.write("nexus: output truncated\n")
        sys.stderr.flush()
    raise typer.Exit(res.exit_code)


@vm_app.command("ssh")
def ssh_cmd(
    vm: str = VM_ARG,
    command: str | None = typer.Option(
        None, "--command", "-c", help="Run this command line instead of a login shell."
    ),
) -> None:
    """An interactive terminal in the guest (a PTY over the shell WebSocket; no sshd
    needed). Exits with the remote shell's exit code.

    Examples:

        nexus vm ssh web

        nexus vm ssh web -c top
    """
    with state().client() as client:
        target = resolve(client, vm)  # also refreshes an expired session token
        url, headers = client.vms.ws_target(target.id, "shell")
    code = asyncio.run(terminal(url, headers, command))
    raise typer.Exit(code)


def _term_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return 80, 24


async def terminal(url: str, headers: dict[str, str], command: str | None) -> int:
    """Bridge this terminal (raw mode when a TTY) to a shell WebSocket; the exit code."""
    import termios
    import tty
    from urllib.parse import urlencode

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    interactive = os.isatty(fd_in)
    cols, rows = _term_size(fd_out if os.isatty(fd_out) else fd_in)
    query: dict[str, Any] = {"cols": cols, "rows": rows}
    if command:
        query["command"] = command
    try:
        ws = await connect(f"{url}?{urlencode(query)}", additional_headers=headers, max_size=None)
    except InvalidStatus as exc:
        detail = ""
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(exc.response.body or b"{}").get("detail", "")
        raise CliError(f"shell refused ({exc.response.status_code}): {detail}") from None
    except OSError as exc:
        raise CliError(f"cannot connect: {exc}") from None
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | tuple[int, int]] = asyncio.Queue()
    saved = termios.tcgetattr(fd_in) if interactive else None
    exit_code: int | None = None

    def on_stdin() -> None:
        try:
            data = os.read(fd_in, 65536)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd_in)
        queue.put_nowait(data)

    def on_winch() -> None:
        queue.put_nowait(_term_size(fd_out if os.isatty(fd_out) else fd_in))

    async def up() -> None:
        while True:
            item = await queue.get()
            if isinstance(item, tuple):
                await ws.send(json.dumps({"type": "resize", "cols": item[0], "rows": item[1]}))
            elif item:
                await ws.send(item)
            else:  # stdin ended: end the shell's input like a terminal would
                await ws.send(b"\x04")
                return

    async def down() -> None:
        nonlocal exit_code
        async for msg in ws:
            if isinstance(msg, bytes):
                view = memoryview(msg)
                while view:
                    n = os.write(fd_out, view)
                    view = view[n:]
            else:
                with contextlib.suppress(ValueError, AttributeError):
                    ctl = json.loads(msg)
                    if ctl.get("type") == "exit":
                        exit_code = ctl.get("exit_code")

    try:
        if interactive:
            tty.setraw(fd_in)
        loop.add_reader(fd_in, on_stdin)
        loop.add_signal_handler(signal.SIGWINCH, on_winch)
        down_task = asyncio.ensure_future(down())
        up_task = asyncio.ensure_future(up())
        with contextlib.suppress(ConnectionClosed):
            await down_task
        up_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await up_task
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(fd_in)
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGWINCH)
        if saved is not None:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        await ws.close()
    return 255 if exit_code is None else int(exit_code)


def follow_console(vm_ref: str, tail: int) -> None:
    """``nexus vm console VM --follow``: print the console as it is written (Ctrl-C ends)."""
    with state().client() as client:
        target = resolve(client, vm_ref)
        url, headers = client.vms.ws_target(target.id, "console")

    async def run() -> None:
        from websockets.asyncio.client import connect

        async with connect(f"{url}?tail={tail}", additional_headers=headers) as ws:
            async for msg in ws:
                text = msg.decode(errors="replace") if isinstance(msg, bytes) else msg
                sys.stdout.write(text)
                sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@vm_app.command("console")
def console(
    vm: str = VM_ARG,
    tail: int = typer.Option(
        100, "--tail", "-n", min=1, max=10000, help="How many of the last lines to print."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output."),
) -> None:
    """Print the last lines of the VM's serial console (``--follow``: live, Ctrl-C ends).

    Example:

        nexus vm console web --follow
    """
    if follow:
        return follow_console(vm, tail)
    with state().client() as client:
        sys.stdout.write(client.vms.console(resolve(client, vm).id, tail=tail))


HISTORY_COLUMNS = [
    Column("sampled_at", "TIME"),
    Column("cpu_percent", "CPU %"),
    Column("rss_bytes", "RSS"),
    Column("load1", "LOAD"),
    Column("mem_used_bytes", "MEM USED"),
    Column("mem_total_bytes", "MEM TOTAL"),
    Column("disk_used_bytes", "DISK USED"),
]


@vm_app.command("metrics")
def metrics_cmd(
    vm: str = VM_ARG,
    history: bool = typer.Option(False, "--history", help="Show stored samples."),
    since: int = typer.Option(3600, "--since", help="History: seconds back."),
    step: int = typer.Option(60, "--step", help="History: bucket width in seconds."),
) -> None:
    """Latest metrics: VMM CPU, RSS, disk, network (host side); load, memory, disk usage
    (guest side). ``--history`` lists averaged samples.

    Examples:

        nexus vm metrics web

        nexus vm metrics web --history --since 7200 --step 300
    """
    with state().client() as client:
        target = resolve(client, vm)
        if history:
            start = datetime.now(UTC) - timedelta(seconds=since)
            hist = client.vms.metrics_history(target.id, since=start, step=step)
            emit_list(hist.points, HISTORY_COLUMNS, id_field="sampled_at")
        else:
            emit_one(client.vms.metrics(target.id))


# `nexus vm cp`: files in and out through the guest agent's exec (no sshd, no network).
# Requests are JSON with the data base64-encoded and the manager caps request bodies
# (max_body_bytes, 1 MiB by default), so uploads go in chunks appended in the guest; downloads
# read chunks with dd, each well under the exec output cap.
UPLOAD_CHUNK = 512 * 1024
DOWNLOAD_CHUNK = 4 * 1024 * 1024


def _split_remote(arg: str) -> tuple[str, str] | None:
    """``VM:PATH`` -> (vm, path); a local path (no colon before the first slash) -> None."""
    head, sep, path = arg.partition(":")
    if not sep or "/" in head or not head or not path:
        return None
    return head, path


def _guest(client: Client, vm_id: str, argv: list[str], stdin: bytes | None = None) -> bytes:
    res = client.vms.exec(vm_id, argv, stdin=stdin, timeout_s=120)
    if res.truncated:
        raise CliError("the guest's answer was truncated (the manager's exec output cap)")
    if res.exit_code != 0 or res.timed_out:
        msg = res.stderr_bytes.decode(errors="replace").strip() or f"exit code {res.exit_code}"
        raise CliError(f"in the guest: {msg}")
    return res.stdout_bytes


def _upload(client: Client, vm_id: str, data: bytes, path: str, mode: str | None) -> None:
    write = ["sh", "-c", 'cat > "$1"', "sh", path]
    append = ["sh", "-c", 'cat >> "$1"', "sh", path]
    _guest(client, vm_id, write, data[:UPLOAD_CHUNK])
    for off in range(UPLOAD_CHUNK, len(data), UPLOAD_CHUNK):
        _guest(client, vm_id, append, data[off : off + UPLOAD_CHUNK])
    if mode:
        _guest(client, vm_id, ["chmod", mode, path])


def _download(client: Client, vm_id: str, path: str) -> bytes:
    size = int(_guest(client, vm_id, ["sh", "-c", 'wc -c < "$1"', "sh", path]).strip() or 0)
    out = bytearray()
    block = 64 * 1024
    per = DOWNLOAD_CHUNK // block
    while len(out) < size:
        skip = len(out) // block
        chunk = _guest(
            client,
            vm_id,
            ["sh", "-c", f'dd if="$1" bs={block} skip={skip} count={per} 2>/dev/null', "sh", path],
        )
        if not chunk:
            break
        out += chunk
    return bytes(out)


@vm_app.command("cp")
def cp_cmd(
    source: str = typer.Argument(
        ..., help="What to copy: a local path, '-' (standard input) or VM:PATH."
    ),
    dest: str = typer.Argument(
        ..., help="Where to: VM:PATH, or a local path or '-' (standard output)."
    ),
    mode: str | None = typer.Option(
        None, "--mode", help="Uploads: chmod the guest file to this mode, e.g. 600."
    ),
) -> None:
    """Copy a file into or out of a VM through the guest agent (one side is VM:PATH).

    Examples:

        nexus vm cp ./app.py web:/srv/app.py

        nexus vm cp web:/var/log/app.log ./app.log

        nexus vm cp ~/.ssh/id_ed25519.pub web:/root/.ssh/authorized_keys --mode 600
    """
    src, dst = _split_remote(source), _split_remote(dest)
    if bool(src) == bool(dst):
        raise typer.BadParameter("exactly one of SOURCE and DEST must be VM:PATH")
    with state().client() as client:
        if dst:
            vm_ref, path = dst
            data = sys.stdin.buffer.read() if source == "-" else _read_local(source)
            target = resolve(client, vm_ref)
            _upload(client, target.id, data, path, mode)
            success(f"copied {len(data)} bytes to {target.name}:{path}")
        elif src:
            vm_ref, path = src
            target = resolve(client, vm_ref)
            data = _download(client, target.id, path)
            if dest == "-":
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                out = os.path.expanduser(dest)
                if os.path.isdir(out):
                    out = os.path.join(out, os.path.basename(path))
                with open(out, "wb") as f:
                    f.write(data)
                success(f"copied {len(data)} bytes from {target.name}:{path} to {out}")


def _read_local(path: str) -> bytes:
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None


def register(app: typer.Typer) -> None:
    """The commands attach to ``nexus vm`` when this module is imported."""
