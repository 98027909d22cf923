"""Users (``/v1/users``): administration of accounts and roles."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from nexus.client._base import AsyncCollection, Resource, SyncCollection

Role = Literal["admin", "operator", "viewer"]


class User(Resource):
    """A user account (never the password hash)."""

    id: str
    username: str
    role: Role
    disabled: bool
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class Users(SyncCollection[User]):
    """``client.users``: list, get, create, update and delete users (admin).

    Non-admins see only themselves.

    Example:
        >>> alice = client.users.create("alice", "s3cret-pass", role="viewer")
        >>> client.users.update(alice.id, disabled=True)
        >>> [u.username for u in client.users.list()]
        ['admin', 'alice']
    """

    path = "/v1/users"
    model = User

    def create(self, username: str, password: str, *, role: Role = "operator") -> User:
        """Create a user (admin). ``username``: lower case, 2-63 chars."""
        body = {"username": username, "password": password, "role": role}
        user: User = self._create(body)
        return user

    def update(
        self,
        id: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password: str | None = None,
        current_password: str | None = None,
    ) -> User:
        """Change role or disable/enable (admin), or a password. Only given fields change.

        A password change needs a password session (not an API token); your own also needs
        ``current_password``. It ends your other sessions and revokes all API tokens of the
        user: the result's ``revoked_sessions`` / ``revoked_api_tokens`` say how many."""
        body = {
            "role": role,
            "disabled": disabled,
            "password": password,
            "current_password": current_password,
        }
        user: User = self._update(id, body)
        return user


class AsyncUsers(AsyncCollection[User]):
    """``AsyncClient.users`` (see :class:`Users`)."""

    path = "/v1/users"
    model = User

    async def create(self, username: str, password: str, *, role: Role = "operator") -> User:
        """Create a user (admin)."""
        body = {"username": username, "password": password, "role": role}
        user: User = await self._create(body)
        return user

    async def update(
        self,
        id: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password: str | None = None,
        current_password: str | None = None,
    ) -> User:
        """Change role, disabled or password; only given fields change (see
        :meth:`Users.update` for the password rules)."""
        body = {
            "role": role,
            "disabled": disabled,
            "password": password,
            "current_password": current_password,
        }
        user: User = await self._update(id, body)
        return user
