"""Authentication: password login, rotating refresh tokens, API tokens, bearer resolution."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import NotFound, Unauthorized
from nexus.core.ids import new_id
from nexus.core.security import (
    API_TOKEN_PREFIX,
    DUMMY_HASH,
    decode_jwt,
    encode_jwt,
    hash_secret,
    new_api_token,
    new_secret,
    verify_password,
)
from nexus.core.settings import Settings
from nexus.core.timeutil import utcnow
from nexus.manager.features.audit import service as audit
from nexus.manager.features.auth import repo
from nexus.manager.features.auth.models import ApiToken, AuthSession, RefreshToken
from nexus.manager.features.auth.schemas import ApiTokenCreate, TokenPair
from nexus.manager.features.users import repo as users_repo
from nexus.manager.features.users.models import User
from nexus.manager.rbac import SCOPES, Principal, Role, ensure_visible

# Last-use writes are throttled so a busy token does not write on every request.
LAST_USED_GRANULARITY = timedelta(seconds=60)


def principal_for(user: User, **kw: object) -> Principal:
    """A principal for ``user`` with full scopes unless given."""
    role: Role = user.role  # type: ignore[assignment]
    return Principal(user_id=user.id, username=user.username, role=role, **kw)  # type: ignore[arg-type]


def _issue(
    s: AsyncSession, user: User, session: AuthSession, settings: Settings, key: str
) -> TokenPair:
    refresh = new_secret(32)
    s.add(RefreshToken(id=new_id("rft"), session_id=session.id, token_hash=hash_secret(refresh)))
    access = encode_jwt(
        {"sub": user.id, "sid": session.id, "typ": "access", "jti": new_id("jti")},
        key,
        settings.access_token_ttl_s,
    )
    return TokenPair(
        access_token=access, refresh_token=refresh, expires_in=settings.access_token_ttl_s
    )


async def login(
    *, db_session: AsyncSession, settings: Settings, key: str, username: str, password: str
) -> TokenPair:
    """Check a password and open a session; wrong name or password is the same 401."""
    user = await users_repo.get_by_username(db_session, username)
    ok = verify_password(user.password_hash if user else DUMMY_HASH, password)
    if user is None or not ok or user.disabled:
        audit.record(
            db_session,
            actor=None,
            action="auth.login",
            resource_type="user",
            resource_id=user.id if user else None,
            outcome="denied",
            detail=f"failed login for '{username}'",
        )
        await db_session.commit()
        raise Unauthorized("invalid username or password")
    session = AuthSession(
        id=new_id("ses"),
        user_id=user.id,
        expires_at=utcnow() + timedelta(seconds=settings.refresh_token_ttl_s),
    )
    db_session.add(session)
    await db_session.flush()
    pair = _issue(db_session, user, session, settings, key)
    audit.record(
        db_session,
        actor=principal_for(user, session_id=session.id),
        action="auth.login",
        resource_type="user",
        resource_id=user.id,
    )
    return pair


async def refresh(
    *, db_session: AsyncSession, settings: Settings, key: str, refresh_token: str
) -> TokenPair:
    """Exchange a refresh token for a new pair. Reusing a spent token revokes the session."""
    row = await repo.refresh_by_hash(db_session, hash_secret(refresh_token))
    if row is None:
        raise Unauthorized("invalid refresh token")
    session = await db_session.get(AuthSession, row.session_id)
    user = await users_repo.get(db_session, session.user_id) if session else None
    now = utcnow()
    if session is None or user is None or user.disabled:
        raise Unauthorized("invalid refresh token")
    if row.used_at is not None:
        # Token reuse: someone replayed an old token. End the whole session.
        await repo.revoke_session(db_session, session.id)
        audit.record(
            db_session,
            actor=principal_for(user),
            action="auth.refresh",
            resource_type="user",
            resource_id=user.id,
            outcome="denied",
            detail="refresh token reused; session revoked",
        )
        await db_session.commit()
        raise Unauthorized("refresh token already used; the session has been revoked")
    if session.revoked_at is not None or session.expires_at < now:
        raise Unauthorized("session expired or revoked; log in again")
    row.used_at = now
    return _issue(db_session, user, session, settings, key)


async def logout(
    *, db_session: AsyncSession, principal: Principal, refresh_token: str | None
) -> None:
    """Revoke the caller's session (and the session of ``refresh_token`` if it is theirs)."""
    if principal.session_id:
        await repo.revoke_session(db_session, principal.session_id)
    if refresh_token:
        row = await repo.refresh_by_hash(db_session, hash_secret(refresh_token))
        session = await db_session.get(AuthSession, row.session_id) if row else None
        if session is not None and session.user_id == principal.user_id:
            await repo.revoke_session(db_session, session.id)
    audit.record(
        db_session,
        actor=principal,
        action="auth.logout",
        resource_type="user",
        resource_id=principal.user_id,
    )


class PrincipalCache:
    """A short-lived cache of successful authentications (bearer hash -> principal).

    Saves the user/session/token lookups on busy clients. Every revocation in this process
    (logout, token revoke, session revoke, user change) clears it; another manager replica
    sees a revocation within ``ttl_s`` (``auth_cache_ttl_s``, 0 disables the cache).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, bearer: str) -> Principal | None:
        hit = self._entries.get(hash_secret(bearer))
        if hit is None:
            return None
        if hit[1] < time.monotonic():
            self._entries.pop(hash_secret(bearer), None)
            return None
        return hit[0]

    def put(
        self, bearer: str, principal: Principal, ttl_s: float, expires: datetime | None
    ) -> None:
        if ttl_s <= 0:
            return
        if expires is not None:
            ttl_s = min(ttl_s, (expires - utcnow()).total_seconds())
        if ttl_s > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[hash_secret(bearer)] = (principal, time.monotonic() + ttl_s)

    def invalidate(self) -> None:
        self._entries.clear()


principal_cache = PrincipalCache()


async def authenticate(
    *, db_session: AsyncSession, key: str, bearer: str, cache_ttl_s: float = 0.0
) -> Principal:
    """Resolve a bearer credential (JWT access token or ``nxs_`` API token) to a principal."""
    cached = principal_cache.get(bearer) if cache_ttl_s > 0 else None
    if cached is not None:
        return cached
    principal, expires = await _authenticate(db_session=db_session, key=key, bearer=bearer)
    principal_cache.put(bearer, principal, cache_ttl_s, expires)
    return principal


async def _authenticate(
    *, db_session: AsyncSession, key: str, bearer: str
) -> tuple[Principal, datetime | None]:
    now = utcnow()
    if bearer.startswith(API_TOKEN_PREFIX):
        tok = await repo.token_by_hash(db_session, hash_secret(bearer))
        if tok is None or tok.revoked_at is not None:
            raise Unauthorized("invalid or revoked API token")
        if tok.expires_at is not None and tok.expires_at < now:
            raise Unauthorized("API token expired")
        user = await users_repo.get(db_session, tok.created_by_user_id)
        if user is None or user.disabled:
            raise Unauthorized("the token's user is disabled")
        if tok.last_used_at is None or now - tok.last_used_at > LAST_USED_GRANULARITY:
            tok.last_used_at = now
            await db_session.commit()
        scopes = frozenset(s for s in tok.scopes if s in SCOPES)
        return principal_for(user, scopes=scopes, token_id=tok.id), tok.expires_at
    claims = decode_jwt(bearer, key)
    if not claims or claims.get("typ") != "access":
        raise Unauthorized("invalid or expired access token")
    user = await users_repo.get(db_session, str(claims.get("sub")))
    session = await db_session.get(AuthSession, str(claims.get("sid")))
    if user is None or user.disabled:
        raise Unauthorized("user unknown or disabled")
    if session is None or session.revoked_at is not None:
        raise Unauthorized("session revoked; log in again")
    exp = datetime.fromtimestamp(float(claims.get("exp", 0)), UTC)
    return principal_for(user, session_id=session.id), exp


async def create_token(
    *, db_session: AsyncSession, principal: Principal, body: ApiTokenCreate
) -> tuple[ApiToken, str]:
    """Mint an API token for the caller; returns the row and the secret (shown once)."""
    secret = new_api_token()
    tok = ApiToken(
        id=new_id("tok"),
        name=body.name,
        token_hash=hash_secret(secret),
        prefix=secret[:10],
        scopes=sorted(set(body.scopes)),
        expires_at=utcnow() + timedelta(days=body.expires_in_days)
        if body.expires_in_days
        else None,
        created_by_user_id=principal.user_id,
    )
    db_session.add(tok)
    await db_session.flush()
    audit.record(
        db_session,
        actor=principal,
        action="token.create",
        resource_type="api_token",
        resource_id=tok.id,
        after={"name": tok.name, "scopes": tok.scopes, "expires_at": str(tok.expires_at)},
    )
    return tok, secret


async def list_tokens(*, db_session: AsyncSession, principal: Principal) -> list[ApiToken]:
    """The caller's tokens (admin: everyone's)."""
    owner = None if principal.is_admin else principal.user_id
    return list(await repo.list_tokens(db_session, owner_id=owner))


async def revoke_token(*, db_session: AsyncSession, principal: Principal, token_id: str) -> None:
    """Revoke a token the caller owns (admin: any)."""
    tok = ensure_visible(principal, await db_session.get(ApiToken, token_id), "api_token", token_id)
    if tok.revoked_at is not None:
        raise NotFound(f"api_token '{token_id}' not found")
    tok.revoked_at = utcnow()
    principal_cache.invalidate()
    audit.record(
        db_session,
        actor=principal,
        action="token.delete",
        resource_type="api_token",
        resource_id=tok.id,
        before={"name": tok.name, "scopes": tok.scopes},
    )
