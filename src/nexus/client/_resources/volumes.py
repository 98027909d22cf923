"""Persistent volumes (``/v1/volumes``) and their attachments (``/v1/vms/{id}/volumes``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from nexus.client._base import (
    AsyncCollection,
    Resource,
    SyncCollection,
    async_listing,
    sync_listing,
)

Filesystem = Literal["ext4", "raw"]


class VolumeAttachment(Resource):
    """Where a volume is attached: the VM, the position and the guest device (``/dev/vdb``)."""

    vm_id: str
    volume_id: str
    position: int
    read_only: bool
    device: str


class Volume(Resource):
    """A block device whose data outlives the VMs it is attached to."""

    id: str
    name: str
    description: str = ""
    size_mib: int
    filesystem: str
    host_id: str | None = None
    attachment: VolumeAttachment | None = None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


def _create_body(
    name: str, size_mib: int, filesystem: str, description: str | None
) -> dict[str, object]:
    return {
        "name": name,
        "size_mib": size_mib,
        "filesystem": filesystem,
        "description": description,
    }


def _update_body(
    name: str | None, description: str | None, size_mib: int | None
) -> dict[str, object]:
    return {"name": name, "description": description, "size_mib": size_mib}


def _vm_path(vm_id: str) -> str:
    return f"/v1/vms/{vm_id}/volumes"


class Volumes(SyncCollection[Volume]):
    """``client.volumes``: volumes you may see. ``id`` arguments also accept a volume name.

    Attach and detach only while the VM is stopped; the change takes effect at its next boot.

    Example:
        >>> vol = client.volumes.create("data", 1024)                 # ext4, 1 GiB
        >>> client.volumes.grow(vol.id, 2048).size_mib                # while detached
        2048
        >>> client.volumes.attach(vm.id, vol.id).device
        '/dev/vdb'
        >>> client.volumes.detach(vm.id, vol.id)
        >>> client.volumes.delete(vol.id)
    """

    path = "/v1/volumes"
    model = Volume

    def create(
        self,
        name: str,
        size_mib: int,
        *,
        filesystem: Filesystem = "ext4",
        description: str | None = None,
    ) -> Volume:
        """Create a volume (``ext4``: formatted, at least 8 MiB; ``raw``: empty)."""
        vol: Volume = self._create(_create_body(name, size_mib, filesystem, description))
        return vol

    def update(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        size_mib: int | None = None,
    ) -> Volume:
        """Rename/describe, or grow with a larger ``size_mib`` (detached only; 409 to shrink)."""
        vol: Volume = self._update(id, _update_body(name, description, size_mib))
        return vol

    def grow(self, id: str, size_mib: int) -> Volume:
        """Grow a detached volume to ``size_mib`` (ext4 is resized offline)."""
        return self.update(id, size_mib=size_mib)

    def attach(self, vm_id: str, volume_id: str, *, read_only: bool = False) -> VolumeAttachment:
        """Attach a volume (id or name) to a stopped VM; it appears at the next boot."""
        body = {"volume_id": volume_id, "read_only": read_only}
        resp = self._http.request("POST", _vm_path(vm_id), json=body)
        return VolumeAttachment.model_validate(resp.json())

    def detach(self, vm_id: str, volume_id: str) -> None:
        """Detach a volume from a stopped VM; its data stays."""
        self._http.request("DELETE", f"{_vm_path(vm_id)}/{volume_id}")

    def list_for_vm(self, vm_id: str) -> list[VolumeAttachment]:
        """The VM's volumes, in device order."""
        return sync_listing(self._http, _vm_path(vm_id), VolumeAttachment).to_list()


class AsyncVolumes(AsyncCollection[Volume]):
    """``AsyncClient.volumes`` (see :class:`Volumes`)."""

    path = "/v1/volumes"
    model = Volume

    async def create(
        self,
        name: str,
        size_mib: int,
        *,
        filesystem: Filesystem = "ext4",
        description: str | None = None,
    ) -> Volume:
        """Create a volume; see :meth:`Volumes.create`."""
        vol: Volume = await self._create(_create_body(name, size_mib, filesystem, description))
        return vol

    async def update(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        size_mib: int | None = None,
    ) -> Volume:
        """Rename/describe, or grow (detached only)."""
        vol: Volume = await self._update(id, _update_body(name, description, size_mib))
        return vol

    async def grow(self, id: str, size_mib: int) -> Volume:
        """Grow a detached volume to ``size_mib``."""
        return await self.update(id, size_mib=size_mib)

    async def attach(
        self, vm_id: str, volume_id: str, *, read_only: bool = False
    ) -> VolumeAttachment:
        """Attach a volume to a stopped VM."""
        body = {"volume_id": volume_id, "read_only": read_only}
        resp = await self._http.request("POST", _vm_path(vm_id), json=body)
        return VolumeAttachment.model_validate(resp.json())

    async def detach(self, vm_id: str, volume_id: str) -> None:
        """Detach a volume from a stopped VM."""
        await self._http.request("DELETE", f"{_vm_path(vm_id)}/{volume_id}")

    async def list_for_vm(self, vm_id: str) -> list[VolumeAttachment]:
        """The VM's volumes, in device order."""
        return await async_listing(self._http, _vm_path(vm_id), VolumeAttachment).to_list()
