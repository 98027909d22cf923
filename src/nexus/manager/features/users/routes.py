"""/v1/users: user administration."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from nexus.core.paging import (
    CURSOR_DOC,
    CURSOR_MAX_LEN,
    LIMIT_DOC,
    cursor_offset,
    next_offset_cursor,
)
from nexus.manager.features.users import service
from nexus.manager.features.users.schemas import (
    UserCreate,
    UserPage,
    UserRead,
    UserUpdate,
    UserUpdated,
)
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.post(
    "", response_model=UserRead, status_code=status.HTTP_201_CREATED, dependencies=[CreateLimit]
)
async def create_user(body: UserCreate, db: DbSession, principal: CurrentPrincipal) -> UserRead:
    """Create a user (admin)."""
    user = await service.create_user(db_session=db, principal=principal, body=body)
    return UserRead.model_validate(user)


@router.get("", response_model=UserPage)
async def list_users(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> UserPage:
    """Users (admin: all; others: themselves), by username."""
    offset = cursor_offset(cursor)
    users = await service.list_users(
        db_session=db, principal=principal, limit=limit + 1, offset=offset
    )
    return UserPage(
        items=[UserRead.model_validate(u) for u in users[:limit]],
        next_cursor=next_offset_cursor(offset, min(len(users), limit), limit, len(users) > limit),
    )


@router.get("/{user_id}", response_model=UserRead)
async def get_user(user_id: str, db: DbSession, principal: CurrentPrincipal) -> UserRead:
    """One user."""
    return UserRead.model_validate(
        await service.get_user(db_session=db, principal=principal, user_id=user_id)
    )


@router.patch(
    "/{user_id}",
    response_model=UserUpdated,
    responses={
        400: {"description": "Your own password without current_password; self-demotion"},
        403: {
            "description": "Not an admin (role/disabled); a password change with an API "
            "token instead of a password session; wrong current_password"
        },
        404: {"description": "No such user (or not yours to see)"},
    },
)
async def update_user(
    user_id: str, body: UserUpdate, db: DbSession, principal: CurrentPrincipal, state: State
) -> UserUpdated:
    """Change role, disable/enable (admin), or a password.

    A password change needs a password session (``nexus login``), never an API token, and
    for your own password the current one. It ends every other session of the user and
    revokes all their API tokens (the response says how many)."""
    user, revoked = await service.update_user(
        db_session=db,
        principal=principal,
        user_id=user_id,
        body=body,
        state_dir=state.settings.state_dir,
    )
    return UserUpdated.model_validate(UserRead.model_validate(user).model_dump() | revoked)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(user_id: str, db: DbSession, principal: CurrentPrincipal) -> None:
    """Delete a user (admin). Users that still own resources: disable them instead."""
    await service.delete_user(db_session=db, principal=principal, user_id=user_id)
