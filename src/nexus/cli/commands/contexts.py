"""``nexus context ...``: named contexts (manager URL + credentials), kubectl-style."""

from __future__ import annotations

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, success
from nexus.cli._state import CliError, state

ctx_app = typer.Typer(
    help="Named contexts: which manager and which credentials.", no_args_is_help=True
)


@ctx_app.command("list")
def list_contexts() -> None:
    """List contexts; the current one is marked with *.

    Example:

        nexus context list
    """
    cfg = state().config
    rows = [
        {
            "current": name == cfg.current_context,
            "name": name,
            "url": ctx.url,
            "user": ctx.username,
            "auth": "api_token" if ctx.token else ("session" if ctx.access_token else None),
            "output": ctx.output,
        }
        for name, ctx in sorted(cfg.contexts.items())
    ]
    emit_list(
        rows,
        [
            Column("current", " ", lambda v: "*" if v else ""),
            Column("name"),
            Column("url"),
            Column("user"),
            Column("auth"),
            Column("output"),
        ],
        id_field="name",
    )


def _context_names(incomplete: str) -> list[str]:
    try:
        return [n for n in state().config.contexts if n.startswith(incomplete)]
    except Exception:  # completion never fails
        return []


@ctx_app.command("use")
def use_context(
    name: str = typer.Argument(..., help="Context name.", autocompletion=_context_names),
) -> None:
    """Make NAME the current context.

    Example:

        nexus context use prod
    """
    cfg = state().config
    if name not in cfg.contexts:
        raise CliError(f"no context named '{name}' (see: nexus context list)")
    cfg.current_context = name
    cfg.save()
    success(f"switched to context '{name}'")


@ctx_app.command("delete")
def delete_context(
    name: str = typer.Argument(..., help="Context name.", autocompletion=_context_names),
    yes: bool = YES,
) -> None:
    """Forget a context and its credentials (does not log out on the server). Asks first on
    a terminal.

    Example:

        nexus context delete old-lab --yes
    """
    cfg = state().config
    if name not in cfg.contexts:
        raise CliError(f"no context named '{name}'")
    confirm(f"Forget context '{name}' and its credentials?", yes=yes)
    del cfg.contexts[name]
    if cfg.current_context == name:
        cfg.current_context = None
    cfg.save()
    success(f"deleted context '{name}'")


def register(app: typer.Typer) -> None:
    """Add the ``context`` group."""
    app.add_typer(ctx_app, name="context")
