"""Rendering: Rich tables on a terminal, JSON/YAML for scripts, ids with ``--quiet``;
errors as one red line on stderr; a progress bar for waits (on a TTY only)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nexus.cli._state import state
from nexus.client import Client, Operation, OperationFailed, OperationTimeout, Resource

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)


@dataclass(frozen=True)
class Column:
    """A table column: the API field, its header and an optional formatter."""

    field: str
    header: str | None = None
    fmt: Callable[[Any], str] | None = None

    def render(self, row: dict[str, Any]) -> str:
        value = row.get(self.field)
        if self.fmt is not None:
            return self.fmt(value)
        return fmt_value(value)


def fmt_value(value: Any) -> str:
    """Human rendering of one value in a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(fmt_value(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
        try:
            return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return value
    return str(value)


def _dump(data: Any) -> None:
    fmt = state().output
    if fmt == "yaml":
        import yaml  # only when asked for: keeps start-up fast

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _rows(items: Iterable[Resource | dict[str, Any]]) -> list[dict[str, Any]]:
    return [x.to_dict() if isinstance(x, Resource) else dict(x) for x in items]


def emit_list(
    items: Iterable[Resource | dict[str, Any]], columns: Sequence[Column], *, id_field: str = "id"
) -> None:
    """Print a listing: table, JSON/YAML array, or ids (``--quiet``)."""
    rows = _rows(items)
    st = state()
    if st.quiet:
        for r in rows:
            sys.stdout.write(f"{r.get(id_field)}\n")
        return
    if st.output != "table":
        _dump(rows)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for c in columns:
        table.add_column(c.header or c.field.upper().replace("_", " "), overflow="fold")
    for r in rows:
        table.add_row(*(escape(c.render(r)) for c in columns))
    console.print(table)


def emit_one(
    item: Resource | dict[str, Any], fields: Sequence[Column] | None = None, *, id_field: str = "id"
) -> None:
    """Print one object: a key/value table, JSON/YAML object, or its id (``--quiet``)."""
    row = _rows([item])[0]
    st = state()
    if st.quiet:
        sys.stdout.write(f"{row.get(id_field)}\n")
        return
    if st.output != "table":
        _dump(row)
        return
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    cols = fields or [Column(k) for k in row]
    for c in cols:
        table.add_row(c.header or c.field, escape(c.render(row)))
    console.print(table)


def success(message: str) -> None:
    """A confirmation line for humans (suppressed by --quiet and non-table outputs)."""
    st = state()
    if not st.quiet and st.output == "table":
        err_console.print(f"[green]✓[/green] {escape(message)}")


def error_line(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[red]Error:[/red] {escape(message)}", highlight=False)


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr when it is a terminal; nothing at all when piped."""
    cm = err_console.status(message) if err_console.is_terminal else nullcontext()
    with cm:
        yield


POLL_S = 0.5


def wait_with_progress(
    client: Client, op_id: str, *, timeout: float | None, message: str | None = None
) -> Operation:
    """Wait for an operation to end. On a terminal: a progress bar fed by the operation's
    ``progress`` (0-100) and ``message``, polled twice a second; piped: the server's long
    poll, printing nothing. Returns the operation in whatever terminal status it reached."""
    if not err_console.is_terminal:
        return client.operations.wait(op_id, timeout=timeout)
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    deadline = None if timeout is None else time.monotonic() + timeout
    label = message or f"waiting for {op_id}"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=100)
        while True:
            op = client.operations.get(op_id)
            desc = f"{label}: {op.message}" if op.message else label
            bar.update(task, completed=op.progress or 0, description=escape(desc))
            if op.done:
                return op
            if deadline is not None and time.monotonic() >= deadline:
                raise OperationTimeout(op, timeout or 0)
            time.sleep(POLL_S)


def finish_operation(
    client: Client,
    op: Operation,
    *,
    wait: bool,
    timeout: float | None,
    message: str | None = None,
) -> Operation:
    """For commands whose API call returns an operation (``--no-wait`` support).

    With ``wait=False`` prints the operation id and returns. Otherwise waits (a progress bar
    on a TTY: :func:`wait_with_progress`) and raises :class:`OperationFailed` unless it
    succeeded. Resource commands use it as::

        op = client.request("POST", f"/v1/vms/{id}/start")   # or a collection's wait=False
        op = finish_operation(client, Operation.model_validate(op), wait=not no_wait, ...)
    """
    if not wait:
        sys.stdout.write(f"{op.id}\n")
        return op
    op = wait_with_progress(
        client, op.id, timeout=timeout, message=message or f"{op.kind} ({op.id})"
    )
    if op.status != "succeeded":
        raise OperationFailed(op)
    return op
