"""``nexus user ...``: user administration (admin; others see only themselves).

This module is the pattern for resource commands: a Typer sub-app, column definitions, one
function per verb calling the SDK, and ``register(app)``.
"""

from __future__ import annotations

import sys
from enum import StrEnum

import typer

from nexus.cli._confirm import YES, confirm
from nexus.cli._output import Column, emit_list, emit_one, success
from nexus.cli._resolve import complete, ref_argument
from nexus.cli._resolve import resolve as resolve_ref
from nexus.cli._state import CliError, state
from nexus.client import Client, User

user_app = typer.Typer(help="Users and roles (admin).", no_args_is_help=True)

COLUMNS = [
    Column("id"),
    Column("username"),
    Column("role"),
    Column("disabled"),
    Column("created_at", "CREATED"),
]


class RoleChoice(StrEnum):
    admin = "admin"
    operator = "operator"
    viewer = "viewer"


def resolve(client: Client, ref: str) -> User:
    """A user by id (``usr_...``) or by username (see :mod:`nexus.cli._resolve`)."""
    user: User = resolve_ref(client, "user", ref)
    return user


USER_ARG = ref_argument("user", "User id or username.")
ROLE_HELP = "admin (everything), operator (creates; changes its own) or viewer (reads)."


def _password(stdin: bool, *, confirm: bool = True) -> str:
    if stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise CliError("no password on standard input")
        return value
    prompted: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return prompted


@user_app.command("list")
def list_users(
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="At most N users."),
) -> None:
    """List users (admins: all; others: themselves).

    Example:

        nexus user list -o json
    """
    with state().client() as client:
        emit_list(client.users.list(limit=limit), COLUMNS)


@user_app.command("get")
def get_user(user: str = USER_ARG) -> None:
    """Show one user.

    Example:

        nexus user get alice
    """
    with state().client() as client:
        emit_one(resolve(client, user))


@user_app.command("create")
def create_user(
    username: str = typer.Argument(..., help="Lower case, 2-63 chars: a-z 0-9 _ . -"),
    role: RoleChoice = typer.Option(RoleChoice.operator, "--role", "-r", help=ROLE_HELP),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input."
    ),
) -> None:
    """Create a user (prompts for the password unless --password-stdin).

    Example:

        echo "$PW" | nexus user create alice --role viewer --password-stdin
    """
    password = _password(password_stdin)
    with state().client() as client:
        user = client.users.create(username, password, role=role.value)
    emit_one(user)


@user_app.command("update")
def update_user(
    user: str = USER_ARG,
    role: RoleChoice | None = typer.Option(None, "--role", "-r", help="New role: " + ROLE_HELP),
    disabled: bool | None = typer.Option(
        None, "--disable/--enable", help="Disable (sessions end) or re-enable the account."
    ),
    password: bool = typer.Option(False, "--password", help="Prompt for a new password."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read a new password from standard input."
    ),
) -> None:
    """Change a user's role, disabled state or password (for your own password use
    ``nexus user passwd``, which asks for the current one).

    Example:

        nexus user update alice --role viewer
    """
    new_password = _password(password_stdin) if (password or password_stdin) else None
    if role is None and disabled is None and new_password is None:
        raise typer.BadParameter("nothing to change: give --role, --disable/--enable or --password")
    with state().client() as client:
        target = resolve(client, user)
        updated = client.users.update(
            target.id,
            role=role.value if role else None,
            disabled=disabled,
            password=new_password,
        )
    emit_one(updated)


@user_app.command("passwd")
def passwd(
    user: str | None = typer.Argument(
        None,
        help="User id or username (admins: reset someone else's); default: yourself.",
        autocompletion=complete("user"),
    ),
    password_stdin: bool = typer.Option(
        False,
        "--password-stdin",
        help="Read from standard input: the current password on the first line (your own "
        "account only), the new one on the next.",
    ),
) -> None:
    """Change your password (asks for the current one), or reset a user's (admin).

    Needs a password session (nexus login), not an API token.

    Every other session of the account ends and all its API tokens are revoked.

    Example:
        printf '%s\\n%s\\n' "$OLD" "$NEW" | nexus user passwd --password-stdin
    """
    with state().client() as client:
        me = client.me()
        target = resolve(client, user) if user else None
        own = target is None or target.id == me.user.id
        current = None
        if own:
            current = (
                _password(True)
                if password_stdin
                else typer.prompt("Current password", hide_input=True)
            )
        new = _password(password_stdin)
        updated = client.users.update(
            me.user.id if own or target is None else target.id,
            password=new,
            current_password=current,
        )
    extra = updated.to_dict()
    success(
        f"password of {updated.username} changed; ended {extra.get('revoked_sessions', 0)} "
        f"other session(s), revoked {extra.get('revoked_api_tokens', 0)} API token(s)"
    )


@user_app.command("delete")
def delete_user(
    user: str = USER_ARG,
    yes: bool = YES,
) -> None:
    """Delete a user (users owning resources: disable them instead). Asks first on a terminal.

    Example:

        nexus user delete alice --yes
    """
    with state().client() as client:
        target = resolve(client, user)
        confirm(f"Delete user {target.username} ({target.id})?", yes=yes)
        client.users.delete(target.id)
    success(f"deleted user {target.username} ({target.id})")


def register(app: typer.Typer) -> None:
    """Add the ``user`` group."""
    app.add_typer(user_app, name="user")
