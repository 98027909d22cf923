"""Destructive commands confirm first: the one ``--yes`` option and the one prompt.

Convention (checked by ``tests/unit/test_cli_tree.py``): a command that deletes, removes,
revokes, restores or otherwise destroys something takes ``yes: bool = YES`` and calls
:func:`confirm` after resolving what it will destroy::

    from nexus.cli._confirm import YES, confirm

    def delete_vm(vm: str = ref_argument("vm"), yes: bool = YES) -> None:
        target = resolve(client, "vm", vm)
        confirm(f"Delete VM {target.name} ({target.id})?", yes=yes)

On a terminal it asks (default: no). When standard input is not a terminal (scripts, CI) it
does not block: the command goes ahead, as ``--yes`` would.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

YES: Any = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def confirm(question: str, *, yes: bool) -> None:
    """Ask ``question`` on a terminal unless ``yes``; abort (exit 1) on anything but yes."""
    if yes or not sys.stdin.isatty():
        return
    typer.confirm(question, abort=True)
