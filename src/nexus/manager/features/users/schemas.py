"""User API schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page
from nexus.manager.platform.rbac import Role

USERNAME_PATTERN = r"^[a-z][a-z0-9_.-]{1,62}$"


class UserCreate(BaseModel):
    """A new user."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_PATTERN, description="lower case, 2-63 chars")
    password: str = Field(min_length=8, max_length=256)
    role: Role = "operator"


class UserUpdate(BaseModel):
    """Fields an admin (or the user, for the password) may change.

    A password change needs a password session (not an API token); changing your own also
    needs ``current_password``. It ends every other session and revokes every API token of
    the user."""

    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=256)
    current_password: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="your current password (required to change your own password)",
    )


class UserRead(BaseModel):
    """A user as the API shows it (never the hash)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    username: str
    role: Role
    disabled: bool
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class UserUpdated(UserRead):
    """The changed user, and what a password change revoked (None when the password stayed)."""

    revoked_sessions: int | None = Field(
        default=None, description="other login sessions ended by a password change"
    )
    revoked_api_tokens: int | None = Field(
        default=None, description="API tokens revoked by a password change"
    )


class UserPage(Page[UserRead]):
    """A page of users."""
