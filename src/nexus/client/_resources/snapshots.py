"""Snapshots (``/v1/snapshots``) and templates (``/v1/templates``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nexus.client._base import AsyncCollection, Resource, SyncCollection, _raise_if_failed


class Snapshot(Resource):
    """A point-in-time copy of a VM: ``full`` (memory + device state + disk) or ``disk``."""

    id: str
    name: str
    description: str = ""
    vm_id: str
    vm_name: str
    host_id: str | None = None
    image_id: str
    vcpus: int
    memory_mib: int
    disk_size_mib: int | None = None
    include_memory: bool
    kind: str | None = None
    state: str
    state_reason: str | None = None
    size_bytes: int | None = None
    files: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class Template(Resource):
    """A reusable VM spec; ``public`` ones are visible to every user."""

    id: str
    name: str
    description: str = ""
    public: bool
    spec: dict[str, Any]
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class Snapshots(SyncCollection[Snapshot]):
    """``client.snapshots``.

    Example:
        >>> snap = client.snapshots.create(vm.id, "before-upgrade")     # waits: ready
        >>> client.snapshots.restore(snap.id)                          # the VM, resumed
        >>> twin = client.vms.create("twin", from_snapshot=snap.id)
    """

    path = "/v1/snapshots"
    model = Snapshot

    def create(
        self,
        vm_id: str,
        name: str,
        *,
        include_memory: bool = True,
        description: str | None = None,
        wait: bool = True,
        timeout: float | None = 600,
    ) -> Any:
        """Snapshot a VM; ``wait=True`` returns the ready :class:`Snapshot`."""
        body = {"name": name, "include_memory": include_memory, "description": description}
        body = {k: v for k, v in body.items() if v is not None}
        resp = self._http.request("POST", f"/v1/vms/{vm_id}/snapshots", json=body)
        op = self._client.operations._model(resp.json())
        if not wait:
            return op
        op = _raise_if_failed(self._client.operations.wait(op.id, timeout=timeout))
        return self.get(str((op.result or {})["snapshot_id"]))

    def restore(self, id: str, *, wait: bool = True, timeout: float | None = 600) -> Any:
        """Roll the snapshot's VM back to it; returns the VM (``wait=True``)."""
        resp = self._http.request("POST", f"{self.path}/{id}/restore")
        return self._client.vms._result(resp, wait=wait, timeout=timeout)


class AsyncSnapshots(AsyncCollection[Snapshot]):
    """``AsyncClient.snapshots`` (see :class:`Snapshots`)."""

    path = "/v1/snapshots"
    model = Snapshot

    async def create(
        self,
        vm_id: str,
        name: str,
        *,
        include_memory: bool = True,
        wait: bool = True,
        timeout: float | None = 600,
    ) -> Any:
        """Snapshot a VM; ``wait=True`` returns the ready :class:`Snapshot`."""
        body = {"name": name, "include_memory": include_memory}
        resp = await self._http.request("POST", f"/v1/vms/{vm_id}/snapshots", json=body)
        op = self._client.operations._model(resp.json())
        if not wait:
            return op
        op = _raise_if_failed(await self._client.operations.wait(op.id, timeout=timeout))
        return await self.get(str((op.result or {})["snapshot_id"]))

    async def restore(self, id: str, *, wait: bool = True, timeout: float | None = 600) -> Any:
        """Roll the snapshot's VM back to it."""
        resp = await self._http.request("POST", f"{self.path}/{id}/restore")
        return await self._client.vms._result(resp, wait=wait, timeout=timeout)


class Templates(SyncCollection[Template]):
    """``client.templates``.

    Example:
        >>> t = client.templates.create("small", {"vcpus": 1, "memory_mib": 256}, public=True)
        >>> vm = client.templates.instantiate(t.id, "web-1")    # waits: running
    """

    path = "/v1/templates"
    model = Template

    def create(
        self, name: str, spec: dict[str, Any], *, description: str = "", public: bool = False
    ) -> Template:
        """Create a template."""
        body = {"name": name, "spec": spec, "description": description, "public": public}
        t: Template = self._create(body)
        return t

    def update(self, id: str, **fields: Any) -> Template:
        """Change name, description, public, spec (owner or admin)."""
        t: Template = self._update(id, fields)
        return t

    def instantiate(
        self,
        id: str,
        name: str,
        *,
        overrides: dict[str, Any] | None = None,
        start: bool = True,
        wait: bool = True,
        timeout: float | None = 600,
    ) -> Any:
        """A VM from the template; ``wait=True`` returns the :class:`~nexus.client.Vm`."""
        body = {"name": name, "start": start, "overrides": overrides}
        body = {k: v for k, v in body.items() if v is not None}
        resp = self._http.request("POST", f"{self.path}/{id}/instantiate", json=body)
        return self._client.vms._result(resp, wait=wait, timeout=timeout)


class AsyncTemplates(AsyncCollection[Template]):
    """``AsyncClient.templates`` (see :class:`Templates`)."""

    path = "/v1/templates"
    model = Template

    async def create(
        self, name: str, spec: dict[str, Any], *, description: str = "", public: bool = False
    ) -> Template:
        """Create a template."""
        body = {"name": name, "spec": spec, "description": description, "public": public}
        t: Template = await self._create(body)
        return t

    async def update(self, id: str, **fields: Any) -> Template:
        """Change name, description, public, spec (owner or admin)."""
        t: Template = await self._update(id, fields)
        return t

    async def instantiate(
        self, id: str, name: str, *, overrides: dict[str, Any] | None = None, wait: bool = True
    ) -> Any:
        """A VM from the template."""
        body: dict[str, Any] = {"name": name}
        if overrides:
            body["overrides"] = overrides
        resp = await self._http.request("POST", f"{self.path}/{id}/instantiate", json=body)
        return await self._client.vms._result(resp, wait=wait, timeout=600)
