"""Users: admin CRUD, self-service password change, bootstrap of the first admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import BadRequest, Conflict, Forbidden, NotFound
from nexus.core.ids import new_id
from nexus.core.security import hash_password_async, new_secret, verify_password_async
from nexus.manager.features.audit import service as audit
from nexus.manager.features.auth import repo as auth_repo
from nexus.manager.features.auth.cache import principal_cache
from nexus.manager.features.users import repo
from nexus.manager.features.users.models import User
from nexus.manager.features.users.schemas import UserCreate, UserUpdate
from nexus.manager.platform.rbac import Principal, denial, ensure_role

# Written by the first start when it generated the admin password; deleted once that admin
# sets a password of their own (a valid password must not sit in a file forever).
BOOTSTRAP_PASSWORD_FILE = "initial-admin-password"
BOOTSTRAP_ADMIN = "admin"


def snapshot(user: User) -> dict[str, Any]:
    """The audit view of a user."""
    return {"username": user.username, "role": user.role, "disabled": user.disabled}


async def create_user(
    *, db_session: AsyncSession, principal: Principal | None, body: UserCreate
) -> User:
    """Create a user (admin only; ``principal`` None = the local CLI, acting as system)."""
    if principal is not None:
        ensure_role(principal, "user.create", "user", "admin")
    if await repo.get_by_username(db_session, body.username):
        raise Conflict(f"username '{body.username}' is taken")
    uid = new_id("usr")
    user = User(
        id=uid,
        username=body.username,
        password_hash=await hash_password_async(body.password),
        role=body.role,
        created_by_user_id=principal.user_id if principal else uid,
    )
    db_session.add(user)
    try:
        await db_session.flush()
    except IntegrityError as exc:
        raise Conflict(f"username '{body.username}' is taken") from exc
    audit.record(
        db_session,
        actor=principal,
        action="user.create",
        resource_type="user",
        resource_id=user.id,
        after=snapshot(user),
    )
    return user


async def get_user(*, db_session: AsyncSession, principal: Principal, user_id: str) -> User:
    """A user: admins see everyone, others only themselves (404 otherwise)."""
    user = await repo.get(db_session, user_id)
    if user is None or not (principal.is_admin or user.id == principal.user_id):
        raise NotFound(f"user '{user_id}' not found")
    return user


async def list_users(
    *, db_session: AsyncSession, principal: Principal, limit: int, offset: int
) -> list[User]:
    """All users for admins; yourself otherwise."""
    only = None if principal.is_admin else principal.user_id
    return list(await repo.list_users(db_session, only_id=only, limit=limit, offset=offset))


async def _check_password_change(
    db_session: AsyncSession, principal: Principal, user: User, current: str | None
) -> None:
    """A password change takes over an account, so it needs more than any bearer: a password
    session (an API token, stolen or not, never changes a password) and, for your own
    account, the current password."""
    if principal.token_id is not None:
        raise Forbidden(
            "changing a password needs a password session (nexus login), not an API token",
            audit=denial("user.password", "user", user.id),
        )
    if user.id != principal.user_id:
        return  # an admin resetting someone else's password (get_user checked visibility)
    if not current:
        raise BadRequest("current_password is required to change your own password")
    if not await verify_password_async(user.password_hash, current):
        raise Forbidden("current_password is wrong", audit=denial("user.password", "user", user.id))


async def update_user(
    *,
    db_session: AsyncSession,
    principal: Principal,
    user_id: str,
    body: UserUpdate,
    state_dir: Path | None = None,
) -> tuple[User, dict[str, int]]:
    """Admins change role/disabled/password; a user may change only their own password.

    A password change ends every other session and revokes every API token of the user;
    returns the user and those counts (``revoked_sessions``, ``revoked_api_tokens``).
    """
    user = await get_user(db_session=db_session, principal=principal, user_id=user_id)
    changes = body.model_dump(exclude_unset=True)
    current = changes.pop("current_password", None)
    if not principal.is_admin and set(changes) - {"password"}:
        raise Forbidden(
            "only an admin may change role or disabled",
            audit=denial("user.update", "user", user.id),
        )
    if (
        principal.is_admin
        and user.id == principal.user_id
        and (changes.get("disabled") or changes.get("role", "admin") != "admin")
    ):
        raise BadRequest("you may not disable or demote yourself")
    if changes.get("password"):
        await _check_password_change(db_session, principal, user, current)
    before = snapshot(user)
    principal_cache.invalidate()  # role/disabled changes apply at once
    if "role" in changes and changes["role"] is not None:
        user.role = changes["role"]
    if "disabled" in changes and changes["disabled"] is not None:
        user.disabled = changes["disabled"]
        if user.disabled:
            await auth_repo.revoke_user_sessions(db_session, user.id)
    revoked: dict[str, int] = {}
    if changes.get("password"):
        user.password_hash = await hash_password_async(changes["password"])
        keep = principal.session_id if user.id == principal.user_id else None
        revoked = {
            "revoked_sessions": await auth_repo.revoke_user_sessions(
                db_session, user.id, keep_session_id=keep
            ),
            "revoked_api_tokens": await auth_repo.revoke_user_tokens(db_session, user.id),
        }
        if state_dir is not None and user.username == BOOTSTRAP_ADMIN:
            (Path(state_dir) / BOOTSTRAP_PASSWORD_FILE).unlink(missing_ok=True)
    after = snapshot(user) | ({"password": "changed"} | revoked if changes.get("password") else {})
    audit.record(
        db_session,
        actor=principal,
        action="user.update",
        resource_type="user",
        resource_id=user.id,
        before=before,
        after=after,
    )
    return user, revoked


async def delete_user(*, db_session: AsyncSession, principal: Principal, user_id: str) -> None:
    """Delete a user (admin). Refused for yourself and for users who still own resources."""
    ensure_role(principal, "user.delete", "user", "admin")
    user = await get_user(db_session=db_session, principal=principal, user_id=user_id)
    if user.id == principal.user_id:
        raise BadRequest("you may not delete yourself")
    before = snapshot(user)
    principal_cache.invalidate()
    try:
        await db_session.delete(user)
        await db_session.flush()
    except IntegrityError as exc:
        raise Conflict(
            "the user still owns resources; delete them or disable the user instead"
        ) from exc
    audit.record(
        db_session,
        actor=principal,
        action="user.delete",
        resource_type="user",
        resource_id=user_id,
        before=before,
    )


async def ensure_bootstrap_admin(*, db_session: AsyncSession, password: str) -> str | None:
    """On an empty users table create ``admin``; returns the generated password, if any."""
    if (await db_session.execute(select(User.id).limit(1))).first() is not None:
        return None
    generated = None
    if not password:
        password = generated = new_secret(12)
    await create_user(
        db_session=db_session,
        principal=None,
        body=UserCreate(username=BOOTSTRAP_ADMIN, password=password, role="admin"),
    )
    return generated
