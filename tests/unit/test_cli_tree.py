"""The CLI's conventions, checked on the whole Typer command tree (commands added later too).

* every option and argument has a help text;
* every command's docstring ends with an ``Example:`` block whose lines run that command
  (``nexus <group> <command> ...``), or one inline ``Example: nexus ...`` line — the CLI
  reference (docs) and ``--help`` show it;
* every destructive command (delete, remove, revoke, restore, ...) takes ``--yes``
  (``nexus.cli._confirm.YES``) and asks first on a terminal;
* every command's ``--help`` names the global options (its epilog, set in ``main.py``);
* no subcommand defines a global option (``-o``, ``-q``, ``--output``, ``--quiet``,
  ``--context``);
* every argument that names a resource completes names (``nexus.cli._resolve``).

How to write a command that passes: docs/cli.md, "Writing commands".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer

from nexus.cli.main import app

DESTRUCTIVE = {"delete", "remove", "rm", "revoke", "restore", "purge", "destroy", "wipe", "reset"}
GLOBAL = {"-o", "-q", "--output", "--quiet", "--context"}
TYPER_BUILTIN = {"help", "install_completion", "show_completion"}


def examples_of(text: str) -> list[str]:
    """The example lines of a help text: an ``Example:``/``Examples:`` block (the lines
    after it), or one inline ``Example: nexus ...`` line."""
    lines = [ln.strip() for ln in text.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        head, sep, rest = lines[i].partition(":")
        if sep and head in ("Example", "Examples"):
            return [rest.strip()] if rest.strip() else [ln for ln in lines[i + 1 :] if ln]
    return []


def _walk(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            if not getattr(sub, "hidden", False):
                yield from _walk(sub, [*path, name])
    else:
        yield " ".join(path), cmd


ROOT = typer.main.get_command(app)
COMMANDS = dict(_walk(ROOT, ["nexus"]))


def test_the_tree_is_walked() -> None:
    assert {"nexus vm create", "nexus vm list", "nexus login"} <= set(COMMANDS)


def test_global_options_have_help() -> None:
    for p in ROOT.params:
        assert (getattr(p, "help", None) or "").strip(), p.name


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_parameter_has_help(path: str) -> None:
    missing = [
        p.name
        for p in COMMANDS[path].params
        if p.name not in TYPER_BUILTIN and not (getattr(p, "help", None) or "").strip()
    ]
    assert not missing, f"`{path}`: no help for {missing}"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_an_example(path: str) -> None:
    examples = examples_of(COMMANDS[path].help or "")
    assert examples, f"`{path}`: no 'Example:' block"
    for ex in examples:  # e.g. "nexus vm create web" or "echo pw | nexus login ..."
        assert path + " " in ex + " ", f"`{path}`: example does not run the command: {ex!r}"
    assert (COMMANDS[path].help or "").split("\n")[0].strip(), f"`{path}`: no description"


@pytest.mark.parametrize("path", sorted(p for p in COMMANDS if p.split()[-1] in DESTRUCTIVE))
def test_destructive_commands_confirm(path: str) -> None:
    opts = {o for p in COMMANDS[path].params for o in getattr(p, "opts", [])}
    assert "--yes" in opts, f"`{path}` destroys something: it needs --yes (nexus.cli._confirm)"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_no_subcommand_redefines_a_global_option(path: str) -> None:
    opts = {o for p in COMMANDS[path].params for o in getattr(p, "opts", [])}
    assert not opts & GLOBAL, f"`{path}` defines global options {opts & GLOBAL}"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_global_options_are_documented_on_every_command(path: str) -> None:
    assert "--output" in (COMMANDS[path].epilog or ""), f"`{path}`: no global options in --help"


REF_ARGS = {
    "vm", "image", "network", "volume", "snapshot", "template", "host", "user", "token",
    "schedule", "group", "webhook",
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_resource_arguments_complete_names(path: str) -> None:
    for p in COMMANDS[path].params:
        if p.param_type_name == "argument" and p.name in REF_ARGS:
            assert getattr(p, "_custom_shell_complete", None) is not None, (
                f"`{path}`: argument {p.name} has no completion (use nexus.cli._resolve)"
            )
