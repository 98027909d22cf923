"""/v1/auth: login, refresh, logout, me, API tokens."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, page_of
from nexus.manager.features.auth import service
from nexus.manager.features.auth.schemas import (
    ApiTokenCreate,
    ApiTokenCreated,
    ApiTokenPage,
    ApiTokenRead,
    LoginRequest,
    LogoutRequest,
    Me,
    RefreshRequest,
    TokenPair,
)
from nexus.manager.features.users import service as users_service
from nexus.manager.features.users.schemas import UserRead
from nexus.manager.platform.deps import AuthLimit, CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post(
    "/login",
    response_model=TokenPair,
    dependencies=[AuthLimit],
    responses={
        401: {"description": "Wrong username or password (the same answer for both)"},
        429: {
            "description": "Too many attempts from this address, or too many failed logins "
            "for this username from any address (Retry-After says when to try again)"
        },
    },
)
async def login(body: LoginRequest, db: DbSession, state: State) -> TokenPair:
    """Log in with a username and password; returns an access JWT and a refresh token."""
    return await service.login(
        db_session=db,
        settings=state.settings,
        keys=state.signing_keys(),
        username=body.username,
        password=body.password,
        limiter=state.limiter,
    )


@router.post(
    "/refresh",
    response_model=TokenPair,
    dependencies=[AuthLimit],
    responses={
        401: {
            "description": "Unknown, expired or already used refresh token (a reused token "
            "revokes its whole session)"
        }
    },
)
async def refresh(body: RefreshRequest, db: DbSession, state: State) -> TokenPair:
    """Exchange a refresh token for a new pair; the old refresh token stops working."""
    return await service.refresh(
        db_session=db,
        settings=state.settings,
        keys=state.signing_keys(),
        refresh_token=body.refresh_token,
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    db: DbSession, principal: CurrentPrincipal, body: LogoutRequest | None = None
) -> None:
    """End the current session (its refresh tokens stop working)."""
    await service.logout(
        db_session=db, principal=principal, refresh_token=body.refresh_token if body else None
    )


@router.get("/me", response_model=Me)
async def me(db: DbSession, principal: CurrentPrincipal) -> Me:
    """Who am I: the user, scopes and how the request authenticated."""
    user = await users_service.get_user(
        db_session=db, principal=principal, user_id=principal.user_id
    )
    return Me(
        user=UserRead.model_validate(user),
        scopes=sorted(principal.scopes),
        token_id=principal.token_id,
        auth="api_token" if principal.token_id else "session",
    )


@router.post(
    "/tokens",
    response_model=ApiTokenCreated,
    status_code=status.HTTP_201_CREATED,
    responses={
        400: {"description": "Lifetime missing or above the api_token_max_lifetime_days limit"},
        403: {
            "description": "Called with an API token: only a password session mints tokens; "
            "or over the `api_tokens` quota (type `quota-exceeded`)",
            "content": {"application/problem+json": {}},
        },
    },
)
async def create_token(
    body: ApiTokenCreate, db: DbSession, principal: CurrentPrincipal, state: State
) -> ApiTokenCreated:
    """Mint an API token (``nxs_...``). The secret is returned once and never again.

    Needs a password session (``nexus login``), not an API token."""
    tok, secret = await service.create_token(
        db_session=db,
        principal=principal,
        body=body,
        max_lifetime_days=state.settings.api_token_max_lifetime_days,
        settings=state.settings,
    )
    return ApiTokenCreated(**ApiTokenRead.model_validate(tok).model_dump(), token=secret)


@router.get("/tokens", response_model=ApiTokenPage)
async def list_tokens(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> ApiTokenPage:
    """Your API tokens (admins: everyone's)."""
    everything = await service.list_tokens(db_session=db, principal=principal)
    rows, nxt = page_of(everything, cursor, limit)
    return ApiTokenPage(items=[ApiTokenRead.model_validate(t) for t in rows], next_cursor=nxt)


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_token(token_id: str, db: DbSession, principal: CurrentPrincipal) -> None:
    """Revoke an API token; it is rejected (401) from now on."""
    await service.revoke_token(db_session=db, principal=principal, token_id=token_id)
