"""API tokens (``/v1/auth/tokens``): long-lived ``nxs_...`` credentials with scopes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from nexus.client._base import AsyncCollection, Resource, SyncCollection

Scope = Literal["read", "write"]


class ApiToken(Resource):
    """An API token's metadata (the secret is never shown again after creation)."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_by_user_id: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiTokenCreated(ApiToken):
    """A new token *with* its secret in ``token`` — store it now; it is shown once."""

    token: str


def _create_body(
    name: str, scopes: Sequence[str], expires_in_days: int | None
) -> dict[str, object]:
    return {"name": name, "scopes": list(scopes), "expires_in_days": expires_in_days}


class Tokens(SyncCollection[ApiToken]):
    """``client.tokens``: create, list and revoke API tokens.

    Example:
        >>> created = client.tokens.create("ci", scopes=["read"], expires_in_days=30)
        >>> ci = Client(url, token=created.token)
        >>> client.tokens.delete(created.id)
    """

    path = "/v1/auth/tokens"
    model = ApiToken

    def create(
        self,
        name: str,
        *,
        scopes: Sequence[Scope] = ("read", "write"),
        expires_in_days: int | None = 90,
    ) -> ApiTokenCreated:
        """Mint a token. ``expires_in_days=None`` on the server means its default (90)."""
        resp = self._http.request(
            "POST", self.path, json=_create_body(name, scopes, expires_in_days)
        )
        return ApiTokenCreated.model_validate(resp.json())

    def get(self, id: str) -> ApiToken:
        """One of your tokens by id (the API has no item endpoint; filtered from the list)."""
        for tok in self.list():
            if tok.id == id:
                return tok
        from nexus.client._errors import NotFound

        raise NotFound(f"token '{id}' not found", status=404)


class AsyncTokens(AsyncCollection[ApiToken]):
    """``AsyncClient.tokens`` (see :class:`Tokens`)."""

    path = "/v1/auth/tokens"
    model = ApiToken

    async def create(
        self,
        name: str,
        *,
        scopes: Sequence[Scope] = ("read", "write"),
        expires_in_days: int | None = 90,
    ) -> ApiTokenCreated:
        """Mint a token; the secret is in ``.token``."""
        resp = await self._http.request(
            "POST", self.path, json=_create_body(name, scopes, expires_in_days)
        )
        return ApiTokenCreated.model_validate(resp.json())

    async def get(self, id: str) -> ApiToken:
        """One of your tokens by id."""
        async for tok in self.list():
            if tok.id == id:
                return tok
        from nexus.client._errors import NotFound

        raise NotFound(f"token '{id}' not found", status=404)
