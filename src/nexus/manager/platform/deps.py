"""FastAPI dependencies: state, database session, the authenticated principal, rate limits.

The session commits when the path operation returns (``scope="function"``: before the response
is sent), so the change and its audit row land in one transaction or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import Forbidden, Unauthorized
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.context import Actor, actor_var
from nexus.manager.platform.rbac import Principal

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_state(request: Request) -> ManagerState:
    """The manager state of this app."""
    state: ManagerState = request.app.state.nexus
    return state


async def _state(request: Request) -> ManagerState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
    # thread hop on every request
    return get_state(request)


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    state = get_state(request)
    session = state.db.sessionmaker()
    try:
        yield session
        # A request answered from a cache never touched the database: nothing to commit.
        if session.in_transaction() or session.new or session.dirty or session.deleted:
            await session.commit()  # returns the connection to the pool
    except BaseException:
        await session.rollback()
        raise
    finally:
        if session.in_transaction():  # only after a failed commit or rollback
            await session.close()


def bearer_token(request: Request) -> str | None:
    """The bearer credential of a request, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _principal(
    request: Request, session: Annotated[AsyncSession, Depends(_session, scope="function")]
) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    state = get_state(request)
    principal = await state.authenticate()(
        db_session=session,
        keys=state.signing_keys(),
        bearer=token,
        cache_ttl_s=state.settings.auth_cache_ttl_s,
        token_max_days=state.settings.api_token_max_lifetime_days,
    )
    request.state.principal = principal
    actor_var.set(Actor(principal.user_id, principal.username))
    if request.method not in SAFE_METHODS and "write" not in principal.scopes:
        raise Forbidden(
            "this token has read scope only; mutations need the 'write' scope",
            audit={
                "action": f"{request.method.lower()} {request.url.path}",
                "resource_type": "api",
                "resource_id": None,
            },
        )
    return principal


async def client_ip(request: Request) -> str:
    """The client address: the TCP peer, or what a trusted proxy said in X-Forwarded-For
    (uvicorn rewrites ``request.client`` only for peers in ``trusted_proxies``)."""
    return request.client.host if request.client else "unknown"


async def limit_auth(request: Request) -> None:
    """10/min per IP (configurable) on login and refresh."""
    limiter = get_state(request).limiter
    if limiter:
        await limiter.hit("auth", await client_ip(request))


async def limit_create(
    request: Request, principal: Annotated[Principal, Depends(_principal)]
) -> None:
    """Creates per user (configurable)."""
    limiter = get_state(request).limiter
    if limiter:
        await limiter.hit("create", principal.user_id)


async def limit_expensive(request: Request) -> None:
    """A global limit on expensive operations (VM creation, image builds...)."""
    limiter = get_state(request).limiter
    if limiter:
        await limiter.hit("expensive", "global")


DbSession = Annotated[AsyncSession, Depends(_session, scope="function")]
CurrentPrincipal = Annotated[Principal, Depends(_principal)]
State = Annotated[ManagerState, Depends(_state)]
CreateLimit = Depends(limit_create)
ExpensiveLimit = Depends(limit_expensive)
AuthLimit = Depends(limit_auth)
