"""``nexus version``: client and server versions."""

from __future__ import annotations

import typer

from nexus import __version__
from nexus.cli._output import emit_one
from nexus.cli._state import CliError, state
from nexus.client import NexusError


def version() -> None:
    """Print the client version and, if a manager is configured and reachable, its version.

    Example:

        nexus version -o json
    """
    st = state()
    data: dict[str, str | None] = {"client": __version__, "server": None, "url": None}
    try:
        url = st.url()
    except CliError:
        url = None
    if url:
        data["url"] = url
        try:
            with st.client(authenticated=False) as client:
                data["server"] = client.version().server
        except NexusError as e:
            data["server_error"] = e.detail
    emit_one(data, id_field="client")


def register(app: typer.Typer) -> None:
    """Add ``version``."""
    app.command("version")(version)
