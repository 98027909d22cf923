"""``nexus function ...``: serverless handlers in microVMs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import Kind, ref_argument, register_kind, resolve
from nexus.cli._state import CliError, state
from nexus.client import Function

register_kind(Kind("function", "fn_", "functions"))

function_app = typer.Typer(
    help="Functions: Python handlers run in microVMs, cold starts restored from a snapshot.",
    no_args_is_help=True,
)

FUNCTION_COLUMNS = [
    Column("id"),
    Column("name"),
    Column("latest_version", "VERSION"),
    Column("version", "STATE", fmt=lambda v: str((v or {}).get("state", ""))),
    Column("concurrency"),
    Column("min_warm", "MIN WARM"),
    Column("warm"),
]
INVOCATION_COLUMNS = [
    Column("id"),
    Column("version"),
    Column("mode"),
    Column("status"),
    Column("cold_start", "COLD"),
    Column("duration_ms", "MS"),
    Column("created_at", "AT"),
]


def _code(code: Path | None, zip_file: Path | None) -> dict[str, Any]:
    if code is not None and zip_file is not None:
        raise typer.BadParameter("give --code or --zip, not both")
    if zip_file is not None:
        return {"zip_path": zip_file}
    if code is not None:
        try:
            return {"source": code.read_text(encoding="utf-8")}
        except OSError as exc:
            raise CliError(f"cannot read {code}: {exc.strerror}") from exc
    return {}


def _env(items: list[str]) -> dict[str, str] | None:
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"--env {item!r}: expected NAME=value")
        out[k] = v
    return out


CODE_OPT: Any = typer.Option(None, "--code", help="Python source file (the handler's module).")
ZIP_OPT: Any = typer.Option(None, "--zip", help="A zip of the code tree.")
ENV_OPT: Any = typer.Option([], "--env", "-e", help="NAME=value for the handler (repeatable).")


@function_app.command("list")
def list_functions() -> None:
    """List functions you may see.

    Example: nexus function list
    """
    with state().client() as client:
        emit_list(client.functions.list(), FUNCTION_COLUMNS)


@function_app.command("create")
def create_function(
    name: str = typer.Argument(..., help="Function name (DNS label)."),
    code: Path | None = CODE_OPT,
    zip_file: Path | None = ZIP_OPT,
    handler: str = typer.Option("main.handler", "--handler", help="module.func to call."),
    env: list[str] = ENV_OPT,
    memory: int | None = typer.Option(None, "--memory", help="MiB of guest memory."),
    timeout: int | None = typer.Option(None, "--timeout", help="Seconds per invocation."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Invocations at once."),
    min_warm: int | None = typer.Option(None, "--min-warm", help="VMs kept warm (0: none)."),
    max_instances: int | None = typer.Option(None, "--max-instances", help="VMs at most."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return while version 1 builds."),
) -> None:
    """Create a function; waits until version 1 is built (VM boot, handler import, memory
    snapshot at "ready").

    Example:

        nexus function create double --code main.py --handler main.handler
    """
    body = _code(code, zip_file)
    if not body:
        raise typer.BadParameter("give the code: --code FILE or --zip FILE")
    with state().client() as client:
        fn = client.functions.create(
            name,
            handler=handler,
            env=_env(env),
            memory_mib=memory,
            timeout_s=timeout,
            concurrency=concurrency,
            min_warm=min_warm,
            max_instances=max_instances,
            wait=not no_wait,
            **body,
        )
        _report(fn)


def _report(fn: Function) -> None:
    emit_one(fn)
    v = fn.version
    if v is not None and v.state == "failed":
        raise CliError(f"version {v.version} failed: {v.state_reason}")


@function_app.command("deploy")
def deploy_function(
    function: str = ref_argument("function"),
    code: Path | None = CODE_OPT,
    zip_file: Path | None = ZIP_OPT,
    handler: str | None = typer.Option(None, "--handler", help="module.func to call."),
    env: list[str] = ENV_OPT,
    memory: int | None = typer.Option(None, "--memory", help="MiB of guest memory."),
    timeout: int | None = typer.Option(None, "--timeout", help="Seconds per invocation."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Invocations at once."),
    min_warm: int | None = typer.Option(None, "--min-warm", help="VMs kept warm (0: none)."),
    max_instances: int | None = typer.Option(None, "--max-instances", help="VMs at most."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return while the version builds."),
) -> None:
    """Deploy new code or settings: a code or runtime change is a new immutable version
    (`latest` moves to it once built; invocations in flight finish on the old one).

    Example:

        nexus function deploy double --code main.py
    """
    with state().client() as client:
        target = resolve(client, "function", function)
        fn = client.functions.update(
            target.id,
            handler=handler,
            env=_env(env),
            memory_mib=memory,
            timeout_s=timeout,
            concurrency=concurrency,
            min_warm=min_warm,
            max_instances=max_instances,
            wait=not no_wait,
            **_code(code, zip_file),
        )
        _report(fn)


@function_app.command("invoke")
def invoke_function(
    function: str = ref_argument("function"),
    event_file: str | None = typer.Option(
        None, "--event", help="JSON file with the event ('-': standard input)."
    ),
    data: str | None = typer.Option(None, "--data", "-d", help="The event as inline JSON."),
    version: int | None = typer.Option(None, "--version", help="Run this version."),
    alias: str | None = typer.Option(None, "--alias", help="Run this alias's version."),
    asynchronous: bool = typer.Option(False, "--async", help="Queue it; print its id."),
) -> None:
    """Invoke a function with a JSON event from a file, standard input or --data. Prints
    the result (or the invocation with -o json); exits 1 when the handler failed.

    Examples:

        nexus function invoke double --data '{"x": 21}'

        echo '{"x": 21}' | nexus function invoke double --event -
    """
    if event_file is not None and data is not None:
        raise typer.BadParameter("give --event or --data, not both")
    raw = data
    if event_file == "-":
        raw = sys.stdin.read()
    elif event_file is not None:
        try:
            raw = Path(event_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read {event_file}: {exc.strerror}") from exc
    try:
        event = json.loads(raw) if raw and raw.strip() else None
    except ValueError as exc:
        raise CliError(f"the event is not JSON: {exc}") from exc
    st = state()
    with st.client() as client:
        target = resolve(client, "function", function)
        inv = client.functions.invoke(
            target.id, event, version=version, alias=alias, asynchronous=asynchronous
        )
    if st.output != "table" or st.quiet or asynchronous:
        emit_one(inv)
        return
    if inv.status == "succeeded":
        typer.echo(json.dumps(inv.result))
        return
    err = inv.error or {}
    typer.echo(err.get("traceback") or "", err=True)
    raise CliError(f"{inv.status}: {err.get('type', '')}: {err.get('message', '')}")


@function_app.command("logs")
def function_logs(
    function: str = ref_argument("function"),
    invocation: str | None = typer.Argument(
        None, help="Invocation id (default: list the latest invocations)."
    ),
    limit: int = typer.Option(20, "--limit", help="How many invocations to list."),
) -> None:
    """An invocation's captured output, or the latest invocations.

    Examples:

        nexus function logs double

        nexus function logs double inv_01j...
    """
    with state().client() as client:
        target = resolve(client, "function", function)
        if invocation is None:
            emit_list(client.functions.invocations(target.id, limit=limit), INVOCATION_COLUMNS)
            return
        typer.echo(client.functions.logs(target.id, invocation), nl=False)


@function_app.command("delete")
def delete_function(function: str = ref_argument("function"), yes: bool = YES) -> None:
    """Delete a function, its VMs, snapshots and invocation records.

    Example: nexus function delete double --yes
    """
    with state().client() as client:
        target = resolve(client, "function", function)
        confirm(f"Delete function {target.name} ({target.id})?", yes=yes)
        client.functions.delete(target.id)
    success(f"deleted function {target.name}")


def register(app: typer.Typer) -> None:
    """Add the ``function`` group."""
    app.add_typer(function_app, name="function")
