"""The ``nexus`` command: the root Typer app, global options and error handling.

Each resource lives in one module under :mod:`nexus.cli.commands` exposing
``register(app)``; :data:`nexus.cli.commands.MODULES` lists them in order.
"""

from __future__ import annotations

import sys
from enum import StrEnum

import typer

from nexus.cli._config import ConfigError
from nexus.cli._output import error_line
from nexus.cli._state import CliError, CliState, set_state
from nexus.cli.commands import MODULES
from nexus.client import NexusConnectionError, NexusError


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


app = typer.Typer(
    name="nexus",
    help="Nexus: run and manage microVMs. Start with `nexus login`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold tokens
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    context: str | None = typer.Option(
        None,
        "--context",
        "-c",
        envvar="NEXUS_CONTEXT",
        help="Use this named context instead of the current one.",
    ),
    output: Output | None = typer.Option(
        None, "--output", "-o", help="Output format (default: the context's, else table)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only ids."),
) -> None:
    """Nexus command-line client. Global options may also follow the subcommand."""
    set_state(
        CliState(context_name=context, output_flag=output.value if output else None, quiet=quiet)
    )


for _module in MODULES:
    _module.register(app)

GLOBAL_OPTIONS_EPILOG = (
    "Global options (before or after the command): -o/--output table|json|yaml, "
    "-q/--quiet (ids only), --context NAME (-c only before it). Environment: NEXUS_URL, "
    "NEXUS_TOKEN, NEXUS_CONTEXT. See: nexus --help."
)


def document_global_options(typer_app: typer.Typer) -> None:
    """Put the global options in the ``--help`` of every command (modules registered later
    are covered too: this runs once every module is registered)."""
    for info in typer_app.registered_commands:
        if not info.epilog:
            info.epilog = GLOBAL_OPTIONS_EPILOG
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            document_global_options(group.typer_instance)


document_global_options(app)

# Global options that may appear anywhere on the command line (kubectl-style) are moved in
# front of the subcommand before Typer parses. So no subcommand may define -o, -q, --output,
# --quiet or --context itself; `-c` works only before the subcommand; arguments after `--`
# are never touched.
_GLOBAL_WITH_VALUE = ("--context", "--output", "-o")
_GLOBAL_FLAGS = ("--quiet", "-q")


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options found after the subcommand to the front of ``argv``."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _GLOBAL_FLAGS:
            front.append(arg)
        elif arg in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front.extend(argv[i : i + 2])
            i += 1
        elif arg.startswith(("--context=", "--output=")):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: expected errors are one red line and exit code 1."""
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args, prog_name="nexus")
    except NexusConnectionError as e:
        error_line(e.detail)
        sys.exit(1)
    except NexusError as e:
        msg = e.detail
        if e.request_id:
            msg += f" (request id {e.request_id})"
        error_line(msg)
        sys.exit(1)
    except (CliError, ConfigError) as e:
        error_line(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
