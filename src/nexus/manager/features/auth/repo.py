"""SQL for sessions and tokens."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.timeutil import utcnow
from nexus.manager.features.auth.cache import principal_cache
from nexus.manager.features.auth.models import ApiToken, AuthSession, RefreshToken


async def refresh_by_hash(s: AsyncSession, token_hash: str) -> RefreshToken | None:
    """The refresh token with this hash."""
    q = select(RefreshToken).where(RefreshToken.token_hash == token_hash)
    return (await s.execute(q)).scalar_one_or_none()


async def revoke_session(s: AsyncSession, session_id: str) -> None:
    """Mark a login session revoked (and forget cached authentications)."""
    principal_cache.invalidate()
    await s.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def revoke_user_sessions(
    s: AsyncSession, user_id: str, *, keep_session_id: str | None = None
) -> int:
    """Revoke every session of a user (password change, disable), except
    ``keep_session_id`` (the session that changed the password); returns how many."""
    principal_cache.invalidate()
    q = update(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    if keep_session_id is not None:
        q = q.where(AuthSession.id != keep_session_id)
    res = await s.execute(q.values(revoked_at=utcnow()))
    return int(res.rowcount)  # type: ignore[attr-defined]


async def revoke_user_tokens(s: AsyncSession, user_id: str) -> int:
    """Revoke every API token of a user (password change); returns how many."""
    principal_cache.invalidate()
    # row by row (a user has few tokens): each revocation is a ``token.updated`` event
    rows = (
        await s.execute(
            select(ApiToken).where(
                ApiToken.created_by_user_id == user_id, ApiToken.revoked_at.is_(None)
            )
        )
    ).scalars()
    n = 0
    for row in rows:
        row.revoked_at = utcnow()
        n += 1
    return n


async def token_by_hash(s: AsyncSession, token_hash: str) -> ApiToken | None:
    """The API token with this hash."""
    q = select(ApiToken).where(ApiToken.token_hash == token_hash)
    return (await s.execute(q)).scalar_one_or_none()


async def list_tokens(s: AsyncSession, *, owner_id: str | None) -> Sequence[ApiToken]:
    """API tokens, newest first; ``owner_id`` None means all (admin)."""
    q = select(ApiToken).order_by(ApiToken.created_at.desc())
    if owner_id is not None:
        q = q.where(ApiToken.created_by_user_id == owner_id)
    return (await s.execute(q)).scalars().all()
