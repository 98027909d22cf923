"""Auth API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.paging import Page
from nexus.manager.features.users.schemas import UserRead
from nexus.manager.platform.rbac import Scope


class LoginRequest(BaseModel):
    """Username and password."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class RefreshRequest(BaseModel):
    """A refresh token from login or the previous refresh (single use)."""

    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=512)


class LogoutRequest(BaseModel):
    """Optionally the refresh token to revoke; the current session is revoked either way."""

    model_config = ConfigDict(extra="forbid")
    refresh_token: str | None = Field(default=None, max_length=512)


class TokenPair(BaseModel):
    """A short-lived access token (JWT) and a rotating refresh token."""

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="access token lifetime in seconds")


class Me(BaseModel):
    """The caller: user plus how they authenticated."""

    user: UserRead
    scopes: list[str]
    token_id: str | None
    auth: Literal["session", "api_token"]


class ApiTokenCreate(BaseModel):
    """A new API token."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    scopes: list[Scope] = Field(default=["read", "write"], min_length=1)
    expires_in_days: int | None = Field(default=90, ge=1, le=3650)


class ApiTokenRead(BaseModel):
    """An API token's metadata (never the secret)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_by_user_id: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreated(ApiTokenRead):
    """The new token, with its secret: shown once, never again."""

    token: str


class ApiTokenPage(Page[ApiTokenRead]):
    """A page of API tokens."""
