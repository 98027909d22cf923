"""SQL for users."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.manager.features.users.models import User


async def get(s: AsyncSession, user_id: str) -> User | None:
    """A user by id."""
    return await s.get(User, user_id)


async def get_by_username(s: AsyncSession, username: str) -> User | None:
    """A user by name."""
    return (await s.execute(select(User).where(User.username == username))).scalar_one_or_none()


async def list_users(
    s: AsyncSession, *, only_id: str | None, limit: int, offset: int
) -> Sequence[User]:
    """Users ordered by name; ``only_id`` restricts to one user (non-admin callers)."""
    q = select(User).order_by(User.username).limit(limit).offset(offset)
    if only_id is not None:
        q = q.where(User.id == only_id)
    return (await s.execute(q)).scalars().all()


async def count(s: AsyncSession) -> int:
    """How many users exist."""
    return int((await s.execute(select(func.count()).select_from(User))).scalar_one())
