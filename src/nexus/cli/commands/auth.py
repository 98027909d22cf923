"""``nexus login``, ``nexus logout``, ``nexus auth status`` and ``nexus auth token ...``."""

from __future__ import annotations

import os
import sys
from enum import StrEnum

import typer

from nexus.cli._config import Context
from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, err_console, success
from nexus.cli._resolve import ref_argument, resolve
from nexus.cli._state import CliError, state
from nexus.client import Client, Unauthorized

auth_app = typer.Typer(help="Authentication: session status and API tokens.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (nxs_...) for scripts and CI.", no_args_is_help=True)
auth_app.add_typer(token_app, name="token")

TOKEN_COLUMNS = [
    Column("id"),
    Column("name"),
    Column("prefix"),
    Column("scopes"),
    Column("expires_at", "EXPIRES"),
    Column("last_used_at", "LAST USED"),
    Column("revoked_at", "REVOKED"),
]


class TokenScope(StrEnum):
    read = "read"
    write = "write"


def _read_stdin_secret(what: str) -> str:
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise CliError(f"no {what} on standard input")
    return value


def login(
    url: str | None = typer.Option(None, "--url", help="Manager URL, e.g. http://127.0.0.1:8080."),
    username: str | None = typer.Option(None, "--username", "-u", help="User name."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input."
    ),
    token_stdin: bool = typer.Option(
        False, "--token-stdin", help="Store an API token (nxs_...) read from stdin instead."
    ),
) -> None:
    """Log in and save the session in the current context (or the one named by --context).

    Prompts for anything missing. The access and refresh tokens are stored in the config file
    (mode 0600); the access token is refreshed automatically when it expires.

    Examples:

        nexus login --url http://127.0.0.1:8080 --username admin

        echo "$PASSWORD" | nexus login --username admin --password-stdin

        echo "$NXS_TOKEN" | nexus login --context ci --url https://nexus.example --token-stdin
    """
    st = state()
    cfg = st.config
    ctx = cfg.context(st.context_name) or Context(
        name=st.context_name or cfg.current_context or "default"
    )
    if password_stdin and token_stdin:
        raise typer.BadParameter("use either --password-stdin or --token-stdin")
    url = url or os.environ.get("NEXUS_URL") or ctx.url
    if not url:
        # Standard input holds a secret (or is not a person): never read the URL from it.
        if password_stdin or token_stdin or not sys.stdin.isatty():
            raise CliError(
                f"context '{ctx.name}' has no manager URL: give --url URL (or set NEXUS_URL)"
            )
        url = typer.prompt("Manager URL", default="http://127.0.0.1:8080")
    with Client(url, token=None) as client:
        if token_stdin:
            client.token = _read_stdin_secret("token")
            me = client.me()
            ctx.token, ctx.access_token, ctx.refresh_token = client.token, None, None
        else:
            if not username:
                if password_stdin:
                    raise typer.BadParameter("--password-stdin needs --username")
                username = typer.prompt("Username", default=ctx.username or None)
            password = (
                _read_stdin_secret("password")
                if password_stdin
                else typer.prompt("Password", hide_input=True)
            )
            pair = client.login_with_password(username, password)
            me = client.me()
            ctx.token = None
            ctx.access_token, ctx.refresh_token = pair.access_token, pair.refresh_token
    ctx.url = url
    ctx.username = me.user.username
    cfg.contexts[ctx.name] = ctx
    cfg.current_context = ctx.name
    cfg.save()
    success(f"logged in to {url} as {me.user.username} ({me.user.role}); context '{ctx.name}'")


def logout() -> None:
    """End the session on the server and remove the credentials from the context.

    An API token stored with --token-stdin is only forgotten locally (revoke it with
    `nexus auth token delete NAME`).

    Example:

        nexus logout
    """
    st = state()
    ctx = st.context(required=True)
    if not ctx.logged_in:
        raise CliError(f"not logged in (context '{ctx.name}')")
    if ctx.access_token or ctx.refresh_token:
        try:
            with st.client() as client:
                client.logout()
        except Unauthorized:
            pass  # the session was already over; forget it anyway
    st.config.contexts[ctx.name].token = None
    st.config.contexts[ctx.name].access_token = None
    st.config.contexts[ctx.name].refresh_token = None
    st.config.save()
    success(f"logged out (context '{ctx.name}')")


@auth_app.command("status")
def status() -> None:
    """Show who you are on the selected context's manager (exit 1 if not logged in).

    Example:

        nexus auth status
    """
    st = state()
    with st.client() as client:
        me = client.me()
        url = client.url
    ctx_name = "(environment)" if os.environ.get("NEXUS_TOKEN") else st.context().name
    data = {
        "context": ctx_name,
        "url": url,
        **me.to_dict(),
    }
    if st.quiet:
        sys.stdout.write(me.user.id + "\n")
        return
    if st.output != "table":
        emit_one(data)
        return
    emit_one(
        {
            "context": ctx_name,
            "url": url,
            "user": me.user.username,
            "user_id": me.user.id,
            "role": me.user.role,
            "auth": me.auth,
            "scopes": me.scopes,
            "token_id": me.token_id,
        }
    )


@token_app.command("create")
def token_create(
    name: str = typer.Argument(..., help="A name to recognise the token by."),
    scope: list[TokenScope] | None = typer.Option(
        None, "--scope", "-s", help="read or write; repeat for both (default: both)."
    ),
    expires_in_days: int = typer.Option(
        90, "--expires-in-days", min=1, max=3650, help="Days until the token stops working."
    ),
) -> None:
    """Mint an API token. The secret is printed once; store it now.
    With --quiet only the secret is printed, for scripts
    (export NEXUS_TOKEN=$(nexus -q auth token create ci)).

    Example:

        nexus auth token create ci --scope read --expires-in-days 30
    """
    st = state()
    scopes = [s.value for s in scope] if scope else ["read", "write"]
    with st.client() as client:
        created = client.tokens.create(name, scopes=scopes, expires_in_days=expires_in_days)  # type: ignore[arg-type]
    if st.quiet:
        sys.stdout.write(created.token + "\n")
        return
    emit_one(created, [*TOKEN_COLUMNS[:5], Column("token", "TOKEN")])
    if st.output == "table":
        err_console.print("[yellow]Store the token now: it is not shown again.[/yellow]")


@token_app.command("list")
def token_list() -> None:
    """Your API tokens (admins: everyone's). Secrets are never shown.

    Example:

        nexus auth token list
    """
    with state().client() as client:
        emit_list(client.tokens.list(), TOKEN_COLUMNS)


@token_app.command("delete")
def token_delete(
    token: str = ref_argument("token", "API token name or id (tok_...)."), yes: bool = YES
) -> None:
    """Revoke an API token; it is rejected from now on. Asks first on a terminal.

    Example:

        nexus auth token delete ci --yes
    """
    with state().client() as client:
        target = resolve(client, "token", token)
        confirm(f"Revoke API token {target.name} ({target.id})?", yes=yes)
        client.tokens.delete(target.id)
    success(f"revoked token {target.name} ({target.id})")


def register(app: typer.Typer) -> None:
    """Add ``login``, ``logout`` and the ``auth`` group."""
    app.command("login")(login)
    app.command("logout")(logout)
    app.add_typer(auth_app, name="auth")
