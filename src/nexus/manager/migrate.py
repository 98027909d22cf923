"""Alembic migrations, run programmatically (``nexus-manager migrate`` and at start-up)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from nexus.core.db import Database


def migrations_dir() -> Path:
    """The Alembic script directory (inside the wheel, or the repo's ``migrations/``)."""
    pkg = Path(__file__).resolve().parents[1] / "_migrations"
    if pkg.is_dir():
        return pkg
    return Path(__file__).resolve().parents[3] / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_sync(url: str, revision: str = "heads") -> None:
    """Upgrade the database at ``url`` (blocking; runs its own event loop in env.py)."""
    command.upgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "heads") -> None:
    """Upgrade from async code (in a worker thread, since env.py runs its own loop)."""
    await asyncio.to_thread(upgrade_sync, url, revision)


def head_revisions(url: str) -> set[str]:
    """The newest revision of every branch (features may add their own branch)."""
    return set(ScriptDirectory.from_config(alembic_config(url)).get_heads())


def knows_revision(url: str, revision: str) -> bool:
    """True when ``revision`` is one of this version's migrations (a backup from a newer
    Nexus has a revision this one does not know)."""
    from alembic.util.exc import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config(url)).get_revision(revision) is not None
    except CommandError:
        return False


def head_revision(url: str) -> str:
    """The head revisions as one printable string."""
    return ",".join(sorted(head_revisions(url)))


async def current_revisions(db: Database) -> set[str]:
    """The revisions the database is at."""

    def _get(conn: Connection) -> set[str]:
        return set(MigrationContext.configure(conn).get_current_heads())

    async with db.engine.connect() as conn:
        return await conn.run_sync(_get)


async def is_at_head(db: Database) -> bool:
    """True when the database schema is at the newest migration of every branch."""
    return await current_revisions(db) == head_revisions(db.url)
