"""Quotas (``/v1/quotas``): per-user limits and usage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexus.client._base import Resource

if TYPE_CHECKING:
    from nexus.client._http import AsyncHttp, SyncHttp


class Quota(Resource):
    """A user's quota: effective ``limits`` (role defaults + ``overrides``; -1 = unlimited)
    and what they use now (``usage``; ``disk_mib`` is root disks + volumes)."""

    user_id: str
    username: str
    role: str
    limits: dict[str, int]
    overrides: dict[str, int] = {}
    usage: dict[str, int]


class Quotas:
    """``client.quotas``: your quota, and (admin) anyone's.

    Over-limit requests raise :class:`~nexus.client.Forbidden` with ``e.body["quota"]``,
    ``["limit"]``, ``["usage"]`` and ``["requested"]``.

    Example:
        >>> client.quotas.me().usage["vms"]
        2
        >>> client.quotas.set("alice", vms=5, memory_mib=8192)    # admin
        >>> client.quotas.set("alice", vms=None)                   # back to the role default
    """

    def __init__(self, http: SyncHttp, client: Any) -> None:
        self._http = http

    def me(self) -> Quota:
        """Your limits and usage."""
        return Quota.model_validate(self._http.request("GET", "/v1/quotas/me").json())

    def get(self, user: str) -> Quota:
        """A user's quota by id or username (admin; others only their own)."""
        return Quota.model_validate(self._http.request("GET", f"/v1/quotas/{user}").json())

    def set(self, user: str, **limits: int | None) -> Quota:
        """Replace a user's overrides (admin): ``limit=n`` (-1 unlimited), a limit left out
        or ``None`` follows the role default."""
        resp = self._http.request("PUT", f"/v1/quotas/{user}", json={"limits": limits})
        return Quota.model_validate(resp.json())


class AsyncQuotas:
    """``AsyncClient.quotas`` (see :class:`Quotas`)."""

    def __init__(self, http: AsyncHttp, client: Any) -> None:
        self._http = http

    async def me(self) -> Quota:
        """Your limits and usage."""
        return Quota.model_validate((await self._http.request("GET", "/v1/quotas/me")).json())

    async def get(self, user: str) -> Quota:
        """A user's quota by id or username."""
        resp = await self._http.request("GET", f"/v1/quotas/{user}")
        return Quota.model_validate(resp.json())

    async def set(self, user: str, **limits: int | None) -> Quota:
        """Replace a user's overrides (admin)."""
        resp = await self._http.request("PUT", f"/v1/quotas/{user}", json={"limits": limits})
        return Quota.model_validate(resp.json())
