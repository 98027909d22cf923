"""Instance groups (``/v1/groups``): N VMs from one template, kept running, scaled on CPU."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nexus.client._base import AsyncCollection, Resource, SyncCollection


class Group(Resource):
    """An instance group: ``desired`` members (VM ids in ``members``) from ``template``."""

    id: str
    name: str
    description: str = ""
    template: dict[str, Any]
    min: int
    max: int
    desired: int
    scale_rule: dict[str, Any] | None = None
    members: list[str] = []
    running: int = 0
    last_scaled_at: datetime | None = None
    state_reason: str | None = None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


def _create_body(
    name: str,
    template: dict[str, Any],
    min: int,
    max: int,
    desired: int | None,
    scale_rule: dict[str, Any] | None,
    description: str | None,
) -> dict[str, Any]:
    return {
        "name": name,
        "template": template,
        "min": min,
        "max": max,
        "desired": desired,
        "scale_rule": scale_rule,
        "description": description,
    }


class Groups(SyncCollection[Group]):
    """``client.groups``: instance groups you may see.

    Example:
        >>> g = client.groups.create("web", {"image": "default", "memory_mib": 256},
        ...                          min=1, max=4, desired=2,
        ...                          scale_rule={"metric": "cpu", "target_percent": 60})
        >>> client.groups.scale(g.id, 3).desired
        3
    """

    path = "/v1/groups"
    model = Group

    def create(
        self,
        name: str,
        template: dict[str, Any],
        *,
        min: int = 1,
        max: int = 1,
        desired: int | None = None,
        scale_rule: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> Group:
        """Create a group; the manager makes its members within a policy pass."""
        g: Group = self._create(
            _create_body(name, template, min, max, desired, scale_rule, description)
        )
        return g

    def update(self, id: str, **fields: Any) -> Group:
        """Change ``min``, ``max``, ``desired``, ``scale_rule`` or ``description``."""
        g: Group = self._update(id, fields)
        return g

    def scale(self, id: str, desired: int) -> Group:
        """Set ``desired`` (clamped to min..max)."""
        resp = self._http.request("POST", f"{self.path}/{id}/scale", json={"desired": desired})
        return Group.model_validate(resp.json())


class AsyncGroups(AsyncCollection[Group]):
    """``AsyncClient.groups`` (see :class:`Groups`)."""

    path = "/v1/groups"
    model = Group

    async def create(
        self,
        name: str,
        template: dict[str, Any],
        *,
        min: int = 1,
        max: int = 1,
        desired: int | None = None,
        scale_rule: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> Group:
        """Create a group."""
        g: Group = await self._create(
            _create_body(name, template, min, max, desired, scale_rule, description)
        )
        return g

    async def update(self, id: str, **fields: Any) -> Group:
        """Change a group."""
        g: Group = await self._update(id, fields)
        return g

    async def scale(self, id: str, desired: int) -> Group:
        """Set ``desired``."""
        resp = await self._http.request(
            "POST", f"{self.path}/{id}/scale", json={"desired": desired}
        )
        return Group.model_validate(resp.json())
