"""Authentication: password login, rotating refresh tokens, API tokens, bearer resolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import BadRequest, Forbidden, NotFound, RateLimited, Unauthorized
from nexus.core.ids import new_id
from nexus.core.security import (
    API_TOKEN_PREFIX,
    DUMMY_HASH,
    hash_secret,
    new_api_token,
    new_secret,
    verify_password_async,
)
from nexus.core.settings import Settings
from nexus.core.signing import KeyRing
from nexus.core.timeutil import utcnow
from nexus.manager.features.audit import service as audit
from nexus.manager.features.auth import repo
from nexus.manager.features.auth.cache import principal_cache
from nexus.manager.features.auth.models import ApiToken, AuthSession, RefreshToken
from nexus.manager.features.auth.schemas import ApiTokenCreate, TokenPair
from nexus.manager.features.quotas import service as quotas
from nexus.manager.features.users import repo as users_repo
from nexus.manager.features.users.models import User
from nexus.manager.platform import metrics
from nexus.manager.platform.ratelimit import RateLimiter
from nexus.manager.platform.rbac import SCOPES, Principal, Role, denial, ensure_visible

# Last-use writes are throttled so a busy token does not write on every request.
LAST_USED_GRANULARITY = timedelta(seconds=60)


def principal_for(user: User, **kw: object) -> Principal:
    """A principal for ``user`` with full scopes unless given."""
    role: Role = user.role  # type: ignore[assignment]
    return Principal(user_id=user.id, username=user.username, role=role, **kw)  # type: ignore[arg-type]


def _issue(
    s: AsyncSession, user: User, session: AuthSession, settings: Settings, keys: KeyRing
) -> TokenPair:
    refresh = new_secret(32)
    s.add(RefreshToken(id=new_id("rft"), session_id=session.id, token_hash=hash_secret(refresh)))
    access = keys.encode(
        {"sub": user.id, "sid": session.id, "typ": "access", "jti": new_id("jti")},
        settings.access_token_ttl_s,
    )
    return TokenPair(
        access_token=access, refresh_token=refresh, expires_in=settings.access_token_ttl_s
    )


async def login(
    *,
    db_session: AsyncSession,
    settings: Settings,
    keys: KeyRing,
    username: str,
    password: str,
    limiter: RateLimiter | None = None,
) -> TokenPair:
    """Check a password and open a session; wrong name or password is the same 401.

    Failed logins count per username too (not only per source address, which an attacker
    with many addresses can spread): past the ``rate_limit_login_user`` tiers the name is
    refused with 429 before any password is checked, from every address.
    """
    if limiter is not None:
        try:
            await limiter.check_tiers("login_user", username.lower())
        except RateLimited:
            metrics.LOGIN_FAILURES.labels("throttled").inc()
            raise
    user = await users_repo.get_by_username(db_session, username)
    ok = await verify_password_async(user.password_hash if user else DUMMY_HASH, password)
    if user is None or not ok or user.disabled:
        reason = "disabled" if user is not None and ok else "bad_credentials"
        metrics.LOGIN_FAILURES.labels(reason).inc()
        if limiter is not None:
            await limiter.hit_tiers("login_user", username.lower())
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
    pair = _issue(db_session, user, session, settings, keys)
    audit.record(
        db_session,
        actor=principal_for(user, session_id=session.id),
        action="auth.login",
        resource_type="user",
        resource_id=user.id,
    )
    return pair


async def refresh(
    *, db_session: AsyncSession, settings: Settings, keys: KeyRing, refresh_token: str
) -> TokenPair:
    """Exchange a refresh token for a new pair. Reusing a spent token revokes the session.

    The token is spent by one conditional UPDATE (``used_at IS NULL``) as the transaction's
    first statement, so of several concurrent refreshes (also across replicas) exactly one
    wins; the others count as reuse.
    """
    now = utcnow()
    token_hash = hash_secret(refresh_token)
    spent = await db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    won = bool(spent.rowcount)  # type: ignore[attr-defined]
    row = await repo.refresh_by_hash(db_session, token_hash)
    if row is None:
        raise Unauthorized("invalid refresh token")
    session = await db_session.get(AuthSession, row.session_id)
    user = await users_repo.get(db_session, session.user_id) if session else None
    if session is None or user is None or user.disabled:
        raise Unauthorized("invalid refresh token")
    if not won:
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
    return _issue(db_session, user, session, settings, keys)


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


async def authenticate(
    *,
    db_session: AsyncSession,
    keys: KeyRing,
    bearer: str,
    cache_ttl_s: float = 0.0,
    token_max_days: int = 0,
) -> Principal:
    """Resolve a bearer credential (JWT access token or ``nxs_`` API token) to a principal.

    ``token_max_days`` (the ``api_token_max_lifetime_days`` setting, 0 = none) also ends API
    tokens minted before the maximum was set, at ``created_at`` + the maximum.
    """
    cached = principal_cache.get(bearer) if cache_ttl_s > 0 else None
    if cached is not None:
        return cached
    principal, expires = await _authenticate(
        db_session=db_session, keys=keys, bearer=bearer, token_max_days=token_max_days
    )
    principal_cache.put(bearer, principal, cache_ttl_s, expires)
    return principal


def _token_expiry(tok: ApiToken, token_max_days: int) -> datetime | None:
    """When ``tok`` stops working: its own expiry, capped by the configured maximum."""
    if not token_max_days:
        return tok.expires_at
    cap = tok.created_at + timedelta(days=token_max_days)
    return cap if tok.expires_at is None else min(cap, tok.expires_at)


async def _authenticate(
    *, db_session: AsyncSession, keys: KeyRing, bearer: str, token_max_days: int
) -> tuple[Principal, datetime | None]:
    now = utcnow()
    if bearer.startswith(API_TOKEN_PREFIX):
        tok = await repo.token_by_hash(db_session, hash_secret(bearer))
        if tok is None or tok.revoked_at is not None:
            raise Unauthorized("invalid or revoked API token")
        expires = _token_expiry(tok, token_max_days)
        if expires is not None and expires < now:
            raise Unauthorized("API token expired")
        user = await users_repo.get(db_session, tok.created_by_user_id)
        if user is None or user.disabled:
            raise Unauthorized("the token's user is disabled")
        if tok.last_used_at is None or now - tok.last_used_at > LAST_USED_GRANULARITY:
            tok.last_used_at = now
            await db_session.commit()
        scopes = frozenset(s for s in tok.scopes if s in SCOPES)
        return principal_for(user, scopes=scopes, token_id=tok.id), expires
    claims = keys.decode(bearer)
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
    *,
    db_session: AsyncSession,
    principal: Principal,
    body: ApiTokenCreate,
    settings: Settings,
    max_lifetime_days: int = 0,
) -> tuple[ApiToken, str]:
    """Mint an API token for the caller; returns the row and the secret (shown once).

    Only a password session may mint tokens: a stolen API token must not be able to make
    itself a successor that outlives its revocation. ``max_lifetime_days`` (setting
    ``api_token_max_lifetime_days``) refuses longer or never-expiring tokens.
    """
    if principal.token_id is not None:
        raise Forbidden(
            "API tokens cannot create API tokens; log in with a password (nexus login) to "
            "create one",
            audit=denial("token.create", "api_token"),
        )
    if max_lifetime_days and (
        body.expires_in_days is None or body.expires_in_days > max_lifetime_days
    ):
        raise BadRequest(
            f"expires_in_days must be set and at most {max_lifetime_days} "
            "(api_token_max_lifetime_days)"
        )
    await quotas.check(
        db_session,
        settings,
        principal,
        action="token.create",
        resource_type="api_token",
        add={"api_tokens": 1},
    )
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
