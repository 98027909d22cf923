"""Database: SQLAlchemy 2 async engine, sessions, the declarative base and common columns.

SQLite (WAL, foreign keys on) is the embedded default; PostgreSQL is chosen by URL. Every
resource table mixes in :class:`ResourceMixin`: ``id``, ``created_by_user_id``,
``created_at``, ``updated_at``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, MetaData, String, event, make_url, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column
from sqlalchemy.types import TypeDecorator

from nexus.core.timeutil import as_utc, utcnow

STARTUP_LOCK_KEY = 0x6E657875_73000001
"""The advisory lock key replicas take around start-up ("nexus" + 1, a signed 64-bit int)."""

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return as_utc(value) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return as_utc(value) if value is not None else None


class Base(DeclarativeBase):
    """Declarative base for every Nexus table."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class TimestampMixin:
    """``created_at`` / ``updated_at`` maintained by the ORM."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


class ResourceMixin(TimestampMixin):
    """A user-created resource: string id and a mandatory owner."""

    id: Mapped[str] = mapped_column(String(40), primary_key=True)

    @declared_attr
    def created_by_user_id(cls) -> Mapped[str]:
        return mapped_column(
            String(40), ForeignKey("users.id", ondelete="RESTRICT"), nullable=False, index=True
        )


class Database:
    """The engine and session factory for one database URL."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # Keep enough pooled connections for bursts: opening one (a thread for aiosqlite,
        # a TCP+auth handshake for PostgreSQL) costs far more than a query.
        kwargs: dict[str, Any] = {
            "echo": echo,
            "pool_pre_ping": not self.is_sqlite,
            "pool_size": 20,
            "max_overflow": 20,
        }
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that commits on success and rolls back on any error."""
        async with self.sessionmaker() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    @asynccontextmanager
    async def exclusive(self, key: int = STARTUP_LOCK_KEY) -> AsyncIterator[None]:
        """Run the block in one process at a time across every replica: a PostgreSQL
        session advisory lock (``pg_advisory_lock``; released at the end, or by the server
        when this process dies). SQLite has one process per database: nothing to do.
        Used around start-up (migrations, bootstrap admin, default rows), so replicas
        started at the same instant on an empty database do not race."""
        if self.is_sqlite:
            yield
            return
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            await conn.commit()
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class InsecureDatabase(Exception):
    """The SQLite database files are readable by other local accounts; start-up stops."""


SQLITE_SUFFIXES = ("", "-wal", "-shm")


def sqlite_files(url: str) -> list[Path]:
    """The files of a SQLite database URL (main file, WAL, shared memory); [] otherwise."""
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return []
    main = Path(u.database)
    return [main.with_name(main.name + sfx) for sfx in SQLITE_SUFFIXES]


def check_private_database(url: str) -> None:
    """Refuse a SQLite database that group or others can read: it holds password hashes,
    token hashes and tenant data, and a database readable by now may already have leaked —
    so the fix is the operator's to make, knowingly."""
    for path in sqlite_files(url):
        if path.exists() and os.stat(path).st_mode & 0o077:
            mode = oct(os.stat(path).st_mode & 0o777)[2:]
            main = sqlite_files(url)[0]
            raise InsecureDatabase(
                f"database file {path} is readable by group or others (mode {mode}); "
                f"fix it with: chmod 600 {main}*"
            )


def make_database_private(url: str) -> None:
    """chmod 0600 every SQLite file that exists (SQLite creates -wal/-shm like the main file,
    so a 0600 main file keeps them private too)."""
    for path in sqlite_files(url):
        if path.exists():
            os.chmod(path, 0o600)


async def flush_unique(session: AsyncSession, conflict_detail: str) -> None:
    """Flush; a unique-constraint violation becomes a 409 with ``conflict_detail``."""
    from sqlalchemy.exc import IntegrityError

    from nexus.core.errors import Conflict

    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(conflict_detail) from exc
