#!/usr/bin/env python3
"""Generate the reference pages of the docs site from the code (run by ``make docs``).

* ``docs/reference/cli.md``: every ``nexus`` command, walked from the Typer command tree —
  its help, arguments, options and example. Nothing is written by hand.
* ``docs/reference/openapi.json``: the manager's OpenAPI document, from the app itself (and
  ``openapi.js``, the same as a script for the page).
* ``docs/reference/redoc.standalone.js``: the ReDoc bundle shipped in ``fastapi-offline``
  (no CDN: the API page works offline).

The generated files are not committed (see ``.gitignore``); ``mkdocs build`` needs them, so
``make docs`` and ``tests/unit/test_docs_site.py`` run this script first.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "reference"


def _param_rows(cmd: Any) -> tuple[list[str], list[str]]:
    args: list[str] = []
    opts: list[str] = []
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        help_text = (getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
        if p.param_type_name == "argument":
            req = "required" if p.required else "optional"
            args.append(
                f"| `{(p.human_readable_name or p.name or '').upper()}` | {req} | {help_text} |"
            )
        else:
            names = ", ".join(f"`{n}`" for n in [*p.opts, *p.secondary_opts])
            default = ""
            if not p.is_flag and p.default not in (None, (), [], "") and not callable(p.default):
                default = f" (default: `{p.default}`)"
            opts.append(f"| {names} | {help_text}{default} |")
    return args, opts


def _doc_sections(text: str) -> tuple[str, str]:
    """Split a command's help into its description and its example block."""
    lines = (text or "").strip("\n").splitlines()
    for i, line in enumerate(lines):
        head, sep, rest = line.strip().partition(":")
        if sep and head.lower() in ("example", "examples"):
            desc = "\n".join(lines[:i]).strip()
            if rest.strip():  # one inline "Example: nexus ..." line
                return desc, rest.strip()
            example = "\n".join(ln.strip() for ln in lines[i + 1 :] if ln.strip())
            return desc, example
    return "\n".join(lines).strip(), ""


def _walk(cmd: Any, path: list[str], out: list[str], level: int) -> None:
    name = " ".join(path)
    if hasattr(cmd, "commands"):  # a group (Typer vendors click: duck-typed)
        if level > 1:
            out.append(f"{'#' * min(level, 3)} `{name}`\n")
            out.append(((cmd.help or "").strip().split("\n\n")[0]) + "\n")
        for sub_name in sorted(cmd.commands):
            sub = cmd.commands[sub_name]
            if getattr(sub, "hidden", False):
                continue
            _walk(sub, [*path, sub_name], out, level + 1)
        return
    anchor = name.replace(" ", "-")
    out.append(f"#### `{name}` {{#{anchor}}}\n")
    desc, example = _doc_sections(cmd.help or "")
    out.append(desc + "\n")
    usage = " ".join(cmd.collect_usage_pieces(cmd.context_class(cmd)))
    usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), usage)  # {name} -> NAME
    out.append(f"```\n{name} {usage}\n```\n")
    args, opts = _param_rows(cmd)
    if args:
        out.append("| argument | | description |\n|---|---|---|")
        out.extend(args)
        out.append("")
    if opts:
        out.append("| option | description |\n|---|---|")
        out.extend(opts)
        out.append("")
    if example:
        out.append(f"Example:\n\n```\n{example}\n```\n")


def cli_reference() -> str:
    """The CLI reference page, in Markdown."""
    from nexus.cli.main import app

    root = typer.main.get_command(app)
    out = [
        "# CLI reference",
        "",
        "Generated from the `nexus` command tree by `scripts/gen_docs.py` (run by `make docs`);",
        "every command's `--help` says the same. Conventions for writing commands: "
        "[CLI conventions](../cli.md#writing-commands).",
        "",
        "## Global options",
        "",
        "These may come before the subcommand or anywhere after it "
        "(`nexus vm list -o json` = `nexus -o json vm list`); `-c` only before it.",
        "",
    ]
    _args, opts = _param_rows(root)
    out.append("| option | description |\n|---|---|")
    out.extend(opts)
    out.append("")
    out.append(
        "Environment: `NEXUS_URL` (manager URL), `NEXUS_TOKEN` (an API token; overrides the "
        "context's credentials), `NEXUS_CONTEXT` (as `--context`), `NEXUS_CLI_CONFIG` (the "
        "config file) or `NEXUS_CONFIG_DIR` (its directory; default `~/.nexus`).\n"
    )
    out.append("## Commands\n")
    _walk(root, ["nexus"], out, 1)
    return "\n".join(out) + "\n"


def openapi_document() -> dict[str, object]:
    """The manager's OpenAPI document, built from the app (nothing is started)."""
    from nexus.core.settings import Settings
    from nexus.manager.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp), embedded_agent=False, log_json=True)
        return create_app(settings).openapi()


def redoc_bundle() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="directory to write into")
    parser.add_argument(
        "--openapi-only",
        type=Path,
        metavar="FILE",
        help="write only the OpenAPI document, to FILE (the web console's build reads it)",
    )
    ns = parser.parse_args(argv)
    if ns.openapi_only:
        ns.openapi_only.write_text(json.dumps(openapi_document(), indent=1) + "\n")
        return 0
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "cli.md").write_text(cli_reference())
    spec = openapi_document()
    (ns.out / "openapi.json").write_text(json.dumps(spec, indent=1) + "\n")
    # the same document as a script, so the page also renders opened from disk (file://,
    # where a browser refuses to fetch openapi.json)
    (ns.out / "openapi.js").write_text(f"window.NEXUS_OPENAPI = {json.dumps(spec)};\n")
    shutil.copyfile(redoc_bundle(), ns.out / "redoc.standalone.js")
    print(f"wrote cli.md, openapi.json, openapi.js and redoc.standalone.js into {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
