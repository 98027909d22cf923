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

from nexus.cli._output import Column, emit_list, emit_one
from nexus.cli._state import CliError, state
from nexus.cli.commands.vms import resolve, vm_app


@vm_app.command(
    "exec",
    context_settings={"ignore_unknown_options": True},
)
def exec_cmd(
    vm: str = typer.Argument(..., help="VM id or name."),
    command: list[str] = typer.Argument(..., help="The command and its arguments (after --)."),
    timeout: float = typer.Option(60.0, "--timeout", "-t", help="Kill it after N seconds."),
    cwd: str | None = typer.Option(None, "--cwd", help="Working directory in the guest."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE (repeatable)."),
    stdin: bool = typer.Option(False, "--stdin", "-i", help="Send this process's stdin."),
    max_output: int | None = typer.Option(None, "--max-output", help="Bytes per stream."),
) -> None:
    """Run a command in the guest and exit with its exit code.

    Example: nexus vm exec web -- uname -a
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
    vm: str = typer.Argument(..., help="VM id or name."),
    command: str | None = typer.Option(None, "--command", "-c", help="Run this instead."),
) -> None:
    """An interactive terminal in the guest (a PTY over the shell WebSocket; no sshd
    needed). Exits with the remote shell's exit code."""
    with state().client() as client:
        target = resolve(client, vm)  # also refreshes an expired session token
        url, headers = client.vms.ws_target(target.id, "shell")
    code = asyncio.run(_terminal(url, headers, command))
    raise typer.Exit(code)


def _term_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return 80, 24


async def _terminal(url: str, headers: dict[str, str], command: str | None) -> int:
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
    vm: str = typer.Argument(...),
    tail: int = typer.Option(100, "--tail", "-n", min=1, max=10000),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output."),
) -> None:
    """Print the last lines of the VM's serial console (``--follow``: live, Ctrl-C ends)."""
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
    vm: str = typer.Argument(..., help="VM id or name."),
    history: bool = typer.Option(False, "--history", help="Show stored samples."),
    since: int = typer.Option(3600, "--since", help="History: seconds back."),
    step: int = typer.Option(60, "--step", help="History: bucket width in seconds."),
) -> None:
    """Latest metrics: VMM CPU, RSS, disk, network (host side); load, memory, disk usage
    (guest side). ``--history`` lists averaged samples."""
    with state().client() as client:
        target = resolve(client, vm)
        if history:
            start = datetime.now(UTC) - timedelta(seconds=since)
            hist = client.vms.metrics_history(target.id, since=start, step=step)
            emit_list(hist.points, HISTORY_COLUMNS, id_field="sampled_at")
        else:
            emit_one(client.vms.metrics(target.id))


def register(app: typer.Typer) -> None:
    """The commands attach to ``nexus vm`` when this module is imported."""
