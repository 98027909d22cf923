"""``nexus-manager``: serve the API, run migrations, create users, build images."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from nexus import __version__
from nexus.core.db import Database, InsecureDatabase, make_database_private
from nexus.core.errors import Problem
from nexus.core.settings import Settings, SettingsError, load_settings
from nexus.core.signing import SigningKeyError, key_file, rotate_key_file
from nexus.core.tls import TlsConfigError, server_tls_files
from nexus.manager import migrate
from nexus.manager.models import metadata
from nexus.manager.platform.rbac import ROLES

app = typer.Typer(
    help="Nexus manager: the API server and its administration commands.",
    no_args_is_help=True,
    add_completion=False,
)
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (also NEXUS_CONFIG)", exists=False),
]


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            typer.secho(f"error: {line}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _preflight(settings: Settings) -> None:
    """Stop with one line when the state is not private or the signing key is too short."""
    from nexus.manager.app import preflight

    try:
        preflight(settings)
    except (InsecureDatabase, SigningKeyError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Proxy handling for uvicorn: X-Forwarded-For/-Proto are believed only from the
    ``trusted_proxies`` (none by default — uvicorn's own default trusts 127.0.0.1, which let
    any local process spoof source addresses and dodge the login limits)."""
    proxies = [p.strip() for p in settings.trusted_proxies if p.strip()]
    return {
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": ",".join(proxies) or "",
        # longer than clients keep an idle connection (httpx: 5 s), so a client never reuses
        # a connection the manager is closing (a thousand agents saw ReadErrors at 5 s)
        "timeout_keep_alive": 30,
        "backlog": 4096,
    }


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's ``ssl_certfile``/``ssl_keyfile`` when ``tls_cert_file`` is set ({} for plain
    HTTP); stops start-up with one line when only one file is set or they do not work."""
    try:
        files = server_tls_files(settings.tls_cert_file, settings.tls_key_file)
    except TlsConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if files is None:
        return {}
    return {"ssl_certfile": files[0], "ssl_keyfile": files[1]}


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address (setting: host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (setting: port)")] = None,
) -> None:
    """Run the manager (with the embedded agent unless embedded_agent=false).

    HTTPS when tls_cert_file and tls_key_file are set (both PEM; the key must match).
    """
    import uvicorn

    from nexus.manager.app import create_app

    settings = _settings(config, host=host, port=port)
    _preflight(settings)
    tls = tls_options(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        **uvicorn_options(settings),
        **tls,
    )


@app.command("migrate")
def migrate_cmd(config: ConfigOpt = None) -> None:
    """Bring the database schema to the newest migration."""
    settings = _settings(config)
    _preflight(settings)
    migrate.upgrade_sync(settings.resolved_database_url())
    make_database_private(settings.resolved_database_url())
    typer.echo(f"database at {migrate.head_revision(settings.resolved_database_url())}")


@app.command("rotate-key")
def rotate_key(config: ConfigOpt = None) -> None:
    """Make a new JWT signing key (in <state_dir>/jwt-keys.json).

    New access tokens are signed with the new key at once (a running manager: within 1 s).

    Tokens of the previous key stay valid for one access_token_ttl_s; then it is dropped.

    Several managers must share one key file (or all set the same secret_key).

    With secret_key set, rotate by changing secret_key and restarting (clients refresh).
    """
    settings = _settings(config)
    if settings.secret_key:
        typer.secho(
            "error: secret_key is set, so the key file is not used; rotate by changing "
            "secret_key (and restarting the manager)",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    _preflight(settings)
    try:
        new = rotate_key_file(
            key_file(settings.state_dir), timedelta(seconds=settings.access_token_ttl_s)
        )
    except SigningKeyError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"new signing key {new.kid}; the previous key verifies for "
        f"{settings.access_token_ttl_s} s more"
    )


@app.command("rotate-sealing-key")
def rotate_sealing_key(
    prune: Annotated[
        bool,
        typer.Option(
            "--prune", help="drop the older keys (refused while a host row still needs one)"
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Add a new key sealing host credentials (<state_dir>/sealing-keys.json), or --prune.

    Rotation: run it, restart every manager (each re-seals the agent tokens with the newest
    key at start-up), then run it with --prune to drop the old keys.

    With the sealing_key setting the key file is not used: see docs/security.md.
    """
    from sqlalchemy import text

    from nexus.core import sealing

    settings = _settings(config)
    if settings.sealing_key:
        typer.secho(
            "error: sealing_key is set, so the key file is not used; rotate as "
            "docs/security.md says (old key into the key file, new sealing_key, restart)",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    _preflight(settings)

    async def stale_rows() -> int:
        db = Database(settings.resolved_database_url())
        try:
            n = 0
            async with db.session() as s:
                for table, column in sealing.sealed_columns(metadata):
                    rows = (await s.execute(text(f"SELECT {column} FROM {table}"))).scalars()
                    n += sum(1 for v in rows if v and sealing.needs_reseal(v))
            return n
        finally:
            await db.dispose()

    try:
        if not prune:
            path = sealing.rotate_key_file(settings.state_dir)
            typer.echo(
                f"new sealing key added to {path}; restart every manager (they re-seal at "
                "start-up), then: nexus-manager rotate-sealing-key --prune"
            )
            return
        sealing.configure_from(settings.state_dir)
        stale = asyncio.run(stale_rows())
        if stale:
            typer.secho(
                f"error: {stale} secret(s) (host credentials, webhook secrets) are still sealed "
                "with an older key; "
                "restart every manager first (each re-seals at start-up)",
                fg="red",
                err=True,
            )
            raise typer.Exit(1)
        n = sealing.prune_key_file(settings.state_dir)
    except sealing.SealingError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{n} old sealing key(s) removed")


@app.command("create-user")
def create_user(
    username: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)}")] = "operator",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a user directly in the database (local administration)."""
    from nexus.manager.features.users import service
    from nexus.manager.features.users.schemas import UserCreate

    if role not in ROLES:
        typer.secho(f"error: --role must be one of {', '.join(ROLES)}", fg="red", err=True)
        raise typer.Exit(2)
    password = (
        sys.stdin.readline().rstrip("\n") if password_stdin else getpass.getpass("Password: ")
    )
    settings = _settings(config)
    _preflight(settings)

    async def run() -> str:
        db = Database(settings.resolved_database_url())
        try:
            await migrate.upgrade(db.url)
            make_database_private(db.url)
            async with db.session() as s:
                user = await service.create_user(
                    db_session=s,
                    principal=None,
                    body=UserCreate(username=username, password=password, role=role),
                )
                return user.id
        finally:
            await db.dispose()

    try:
        uid = asyncio.run(run())
    except Problem as exc:
        typer.secho(f"error: {exc.detail}", fg="red", err=True)
        raise typer.Exit(1) from exc
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(uid)


@app.command("join-token")
def join_token(config: ConfigOpt = None) -> None:
    """Print a single-use join token for an agent on this machine (local administration).

    Valid one hour and, unlike `nexus host join-token`, accepted from an agent registering a
    loopback address: the installer uses it for the agent beside the manager. Owned by the
    first admin.
    """
    from sqlalchemy import select

    from nexus.manager.features.hosts.service import mint_system_join_token
    from nexus.manager.features.users.models import User

    settings = _settings(config)
    _preflight(settings)

    async def run() -> str | None:
        db = Database(settings.resolved_database_url())
        try:
            await migrate.upgrade(db.url)
            make_database_private(db.url)
            async with db.session() as s:
                owner = (
                    await s.execute(
                        select(User.id).where(User.role == "admin").order_by(User.created_at)
                    )
                ).scalar()
                if owner is None:
                    return None
                return await mint_system_join_token(s, owner)
        finally:
            await db.dispose()

    token = asyncio.run(run())
    if token is None:
        typer.secho("error: no admin user yet (start the manager once)", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(token)


image_app = typer.Typer(help="Guest images.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    name: Annotated[
        str, typer.Argument(help="default (debootstrap + python3) or test")
    ] = "default",
    force: Annotated[bool, typer.Option("--force", help="rebuild even if cached")] = False,
    config: ConfigOpt = None,
) -> None:
    """Build a Nexus guest image from Debian packages and add it to the catalogue.

    Cached by content: a second run with the same inputs takes milliseconds.
    """
    from sqlalchemy import select

    from nexus.core.logging import configure_logging
    from nexus.manager.app import bootstrap, prepare_database
    from nexus.manager.features.images.schemas import ImageBuild
    from nexus.manager.features.images.service import build_and_register
    from nexus.manager.features.users.models import User
    from nexus.manager.platform.appstate import ManagerState

    if name not in ("default", "test"):
        typer.secho("error: NAME must be 'default' or 'test'", fg="red", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    configure_logging("warning", settings.log_json)

    async def progress(pct: int, message: str | None) -> None:
        typer.echo(f"[{pct:3d}%] {message or ''}", err=True)

    async def run() -> str:
        state = ManagerState(settings=settings, db=Database(settings.resolved_database_url()))
        try:
            await prepare_database(settings, state.db)
            await bootstrap(state)
            async with state.db.session() as s:
                q = select(User.id).where(User.role == "admin").order_by(User.created_at)
                owner = (await s.execute(q)).scalar_one()
            img = await build_and_register(
                state,
                owner=None,
                owner_id=owner,
                body=ImageBuild(name=name, force=force),  # type: ignore[arg-type]
                progress=progress,
            )
            return f"{img.id} {img.name} rootfs sha256 {img.rootfs_sha256[:16]}"
        finally:
            await state.db.dispose()

    try:
        typer.echo(asyncio.run(run()))
    except Problem as exc:
        typer.secho(f"error: {exc.detail}", fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command("backup")
def backup_cmd(
    to: Annotated[
        Path | None,
        typer.Option("--to", help="directory for the archive (default: the backup_dir setting)"),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option("--keep", min=1, help="keep the newest N archives there, delete older"),
    ] = None,
    with_disks: Annotated[
        bool, typer.Option("--with-disks", help="also VM disks, volumes and snapshots")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Back up the database, key files and image catalogue into one archive (a tar file with
    a SHA-256 manifest, mode 0600). Safe while the manager runs: SQLite is copied with its
    online backup API, PostgreSQL with pg_dump. Prints the archive's path and SHA-256.

    Example: nexus-manager backup --to /srv/nexus-backups --keep 14"""
    from nexus.manager.features.backup import archive

    settings = _settings(config)
    target = to or settings.resolved_backup_dir()
    try:
        result = archive.create_backup(settings, target, keep=keep, with_disks=with_disks)
    except archive.BackupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"backup {result.path} ({result.size_bytes} bytes, {result.files} files, "
        f"{result.database} schema {','.join(result.schema)}) in {result.seconds:.2f} s"
    )
    typer.echo(f"sha256 {result.sha256}")
    for name in result.pruned:
        typer.echo(f"deleted old backup {name}")


def _manager_answers(settings: Settings) -> bool:
    import httpx

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    scheme = "https" if settings.tls_cert_file else "http"
    try:
        r = httpx.get(f"{scheme}://{host}:{settings.port}/health/live", timeout=1, verify=False)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


@app.command("restore")
def restore_cmd(
    source: Annotated[Path, typer.Option("--from", help="the archive to restore")],
    force: Annotated[
        bool, typer.Option("--force", help="restore even though a manager answers on host:port")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Restore an archive made by 'nexus-manager backup' (stop the manager first).

    Every file's SHA-256 is checked before anything is touched; a backup from a newer schema
    is refused. The files it replaces are kept in <state_dir>/.pre-restore-<time>/; if any
    step fails, they are put back. Start the manager afterwards: it migrates an older
    schema to the newest."""
    from nexus.manager.features.backup import archive

    settings = _settings(config)
    if not source.is_file():
        typer.secho(f"error: {source} is not a file", fg="red", err=True)
        raise typer.Exit(2)
    if not force and _manager_answers(settings):
        typer.secho(
            f"error: a manager answers on {settings.host}:{settings.port}; stop it before "
            "restoring (or pass --force)",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    url = settings.resolved_database_url()
    try:
        result = archive.restore_backup(
            settings, source, known_revision=lambda rev: migrate.knows_revision(url, rev)
        )
    except archive.RestoreRefused as exc:
        typer.secho(f"error: refused: {exc}", fg="red", err=True)
        raise typer.Exit(3) from exc
    except (archive.RestoreFailed, archive.BackupError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"restored {result.files} files ({result.database}, schema {','.join(result.schema)}) "
        f"from {source} in {result.seconds:.2f} s"
    )
    if result.previous:
        typer.echo(f"the replaced state is in {result.previous} (delete it when satisfied)")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point. umask 077 first: everything the manager creates (database,
    key file, logs, image files) is private to its user unless it says otherwise."""
    os.umask(0o077)
    app()
