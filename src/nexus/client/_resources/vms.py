"""Virtual machines (``/v1/vms``): create, list, lifecycle actions, console."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from nexus.client._base import AsyncCollection, Resource, SyncCollection
from nexus.client._resources.guest import AsyncGuestOps, SyncGuestOps

VmState = Literal[
    "pending",
    "creating",
    "starting",
    "running",
    "paused",
    "stopping",
    "stopped",
    "failed",
    "deleting",
]


class VmNic(Resource):
    """One network interface of a VM: its network, index, MAC and IPv4 address."""

    network_id: str
    nic_index: int
    mac: str
    ip: str


class VmFirstBoot(Resource):
    """What a VM shows of its first-boot data: counts and outcome, never the user data."""

    ssh_keys: int
    user_data: bool
    done_at: datetime | None = None
    error: str | None = None


class Vm(Resource):
    """A microVM: what was asked for and what is."""

    id: str
    name: str
    description: str = ""
    labels: dict[str, Any] = {}
    vcpus: int
    memory_mib: int
    disk_size_mib: int | None = None
    image_id: str
    host_id: str | None = None
    state: VmState
    desired_state: str
    state_reason: str | None = None
    pid: int | None = None
    ready_at: datetime | None = None
    started_at: datetime | None = None
    cloned_from_id: str | None = None
    expires_at: datetime | None = None
    ttl_warned_at: datetime | None = None
    group_id: str | None = None
    first_boot: VmFirstBoot | None = None
    nics: list[VmNic] = []
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


def _clone_body(
    name: str,
    description: str | None,
    labels: dict[str, str] | None,
    start: bool,
    overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "labels": labels,
        "start": start,
        "overrides": overrides,
    }


def _extend_body(
    ttl_s: int | None, by_s: int | None, expires_at: datetime | None, clear: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"ttl_s": ttl_s, "by_s": by_s, "clear": clear or None}
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    return {k: v for k, v in body.items() if v is not None}


def _create_body(
    name: str,
    image: str,
    vcpus: int | None,
    memory_mib: int | None,
    disk_size_mib: int | None,
    labels: dict[str, str] | None,
    description: str | None,
    start: bool,
    extra: dict[str, Any],
    ssh_keys: list[str] | None = None,
    user_data: str | None = None,
) -> dict[str, Any]:
    if ssh_keys:
        extra = {**extra, "ssh_keys": list(ssh_keys)}
    if user_data is not None:
        extra = {**extra, "user_data": user_data}
    return {
        "name": name,
        "image": image,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "disk_size_mib": disk_size_mib,
        "labels": labels,
        "description": description,
        "start": start,
        **extra,
    }


class Vms(SyncGuestOps, SyncCollection[Vm]):
    """``client.vms``: VMs you may see.

    Example:
        >>> vm = client.vms.create("web", image="default", memory_mib=256)   # waits: running
        >>> client.vms.stop(vm.id).state
        'stopped'
        >>> [v.name for v in client.vms.list(state="running")]
    """

    path = "/v1/vms"
    model = Vm

    def create(
        self,
        name: str,
        *,
        image: str = "default",
        vcpus: int | None = None,
        memory_mib: int | None = None,
        disk_size_mib: int | None = None,
        labels: dict[str, str] | None = None,
        description: str | None = None,
        start: bool = True,
        ssh_keys: list[str] | None = None,
        user_data: str | None = None,
        wait: bool = True,
        timeout: float | None = 600,
        **extra: Any,
    ) -> Any:
        """Create (and boot) a VM. ``wait=True`` returns the :class:`Vm` once it is running
        (or stopped with ``start=False``); ``wait=False`` returns the operation.
        ``ssh_keys`` (OpenSSH public keys) and ``user_data`` (run once as root when it starts
        with ``#!``) are applied by the guest agent at first boot."""
        body = _create_body(
            name,
            image,
            vcpus,
            memory_mib,
            disk_size_mib,
            labels,
            description,
            start,
            extra,
            ssh_keys,
            user_data,
        )
        return self._create(body, wait=wait, timeout=timeout)

    def update(self, id: str, **fields: Any) -> Vm:
        """Change name, description, labels; vcpus/memory_mib while stopped."""
        vm: Vm = self._update(id, fields)
        return vm

    def clone(
        self,
        id: str,
        name: str,
        *,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        start: bool = True,
        overrides: dict[str, Any] | None = None,
        wait: bool = True,
        timeout: float | None = 600,
    ) -> Any:
        """Clone a VM: a copy-on-write copy of its root disk, a fresh identity, its own
        lifecycle. ``overrides`` may set ``vcpus``, ``memory_mib``, ``network``. Needs modify
        rights on the source. ``wait=True`` returns the new :class:`Vm`."""
        body = _clone_body(name, description, labels, start, overrides)
        return self._action(id, "clone", body, wait=wait, timeout=timeout)

    def start(self, id: str, *, wait: bool = True, timeout: float | None = 600) -> Any:
        """Boot a stopped VM."""
        return self._action(id, "start", wait=wait, timeout=timeout)

    def stop(
        self, id: str, *, force: bool = False, wait: bool = True, timeout: float | None = 300
    ) -> Any:
        """ACPI shutdown (then force after the server's timeout); ``force=True`` kills."""
        resp = self._http.request("POST", f"{self.path}/{id}/stop", params={"force": force})
        return self._result(resp, wait=wait, timeout=timeout, id=id)

    def reboot(self, id: str, *, wait: bool = True, timeout: float | None = 600) -> Any:
        """Reboot a running VM."""
        return self._action(id, "reboot", wait=wait, timeout=timeout)

    def pause(self, id: str, *, wait: bool = True, timeout: float | None = 120) -> Any:
        """Freeze a running VM."""
        return self._action(id, "pause", wait=wait, timeout=timeout)

    def resume(self, id: str, *, wait: bool = True, timeout: float | None = 120) -> Any:
        """Continue a paused VM."""
        return self._action(id, "resume", wait=wait, timeout=timeout)

    def console(self, id: str, *, tail: int = 100) -> str:
        """The last ``tail`` lines of the serial console."""
        return self._http.request("GET", f"{self.path}/{id}/console", params={"tail": tail}).text

    def extend(
        self,
        id: str,
        *,
        ttl_s: int | None = None,
        by_s: int | None = None,
        expires_at: datetime | None = None,
        clear: bool = False,
    ) -> Vm:
        """Move a VM's expiry: ``ttl_s`` from now, ``by_s`` more, an ``expires_at``, or
        ``clear=True`` to remove it. (Create with ``ttl_s=`` or ``expires_at=`` to set one.)"""
        body = _extend_body(ttl_s, by_s, expires_at, clear)
        return Vm.model_validate(
            self._http.request("POST", f"{self.path}/{id}/extend", json=body).json()
        )


class AsyncVms(AsyncGuestOps, AsyncCollection[Vm]):
    """``AsyncClient.vms`` (see :class:`Vms`)."""

    path = "/v1/vms"
    model = Vm

    async def create(
        self,
        name: str,
        *,
        image: str = "default",
        vcpus: int | None = None,
        memory_mib: int | None = None,
        disk_size_mib: int | None = None,
        labels: dict[str, str] | None = None,
        description: str | None = None,
        start: bool = True,
        ssh_keys: list[str] | None = None,
        user_data: str | None = None,
        wait: bool = True,
        timeout: float | None = 600,
        **extra: Any,
    ) -> Any:
        """Create (and boot) a VM; see :meth:`Vms.create`."""
        body = _create_body(
            name,
            image,
            vcpus,
            memory_mib,
            disk_size_mib,
            labels,
            description,
            start,
            extra,
            ssh_keys,
            user_data,
        )
        return await self._create(body, wait=wait, timeout=timeout)

    async def update(self, id: str, **fields: Any) -> Vm:
        """Change name, description, labels; vcpus/memory_mib while stopped."""
        vm: Vm = await self._update(id, fields)
        return vm

    async def clone(
        self,
        id: str,
        name: str,
        *,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        start: bool = True,
        overrides: dict[str, Any] | None = None,
        wait: bool = True,
        timeout: float | None = 600,
    ) -> Any:
        """Clone a VM; see :meth:`Vms.clone`."""
        body = _clone_body(name, description, labels, start, overrides)
        return await self._action(id, "clone", body, wait=wait, timeout=timeout)

    async def start(self, id: str, *, wait: bool = True, timeout: float | None = 600) -> Any:
        """Boot a stopped VM."""
        return await self._action(id, "start", wait=wait, timeout=timeout)

    async def stop(
        self, id: str, *, force: bool = False, wait: bool = True, timeout: float | None = 300
    ) -> Any:
        """ACPI shutdown (then force); ``force=True`` kills."""
        resp = await self._http.request("POST", f"{self.path}/{id}/stop", params={"force": force})
        return await self._result(resp, wait=wait, timeout=timeout, id=id)

    async def reboot(self, id: str, *, wait: bool = True, timeout: float | None = 600) -> Any:
        """Reboot a running VM."""
        return await self._action(id, "reboot", wait=wait, timeout=timeout)

    async def pause(self, id: str, *, wait: bool = True, timeout: float | None = 120) -> Any:
        """Freeze a running VM."""
        return await self._action(id, "pause", wait=wait, timeout=timeout)

    async def resume(self, id: str, *, wait: bool = True, timeout: float | None = 120) -> Any:
        """Continue a paused VM."""
        return await self._action(id, "resume", wait=wait, timeout=timeout)

    async def console(self, id: str, *, tail: int = 100) -> str:
        """The last ``tail`` lines of the serial console."""
        resp = await self._http.request("GET", f"{self.path}/{id}/console", params={"tail": tail})
        return resp.text

    async def extend(
        self,
        id: str,
        *,
        ttl_s: int | None = None,
        by_s: int | None = None,
        expires_at: datetime | None = None,
        clear: bool = False,
    ) -> Vm:
        """Move a VM's expiry; see :meth:`Vms.extend`."""
        body = _extend_body(ttl_s, by_s, expires_at, clear)
        resp = await self._http.request("POST", f"{self.path}/{id}/extend", json=body)
        return Vm.model_validate(resp.json())
