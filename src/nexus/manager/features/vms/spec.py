"""The VM's agent spec (:class:`~nexus.hostapi.models.VmSpec`): the one place it is built —
machine, image, NICs (``ip=`` kernel arguments included) and volumes — and re-sent to the
host after a change while the VM is stopped."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import NotFound
from nexus.hostapi.guestboot import kernel_ip_arg, machine_id_for
from nexus.hostapi.models import ImageRef, NetworkRef, NicConfig, VmSpec, VolumeRef
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.images import service as images
from nexus.manager.features.images.models import Image
from nexus.manager.features.networks.models import Network, VmNic
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.volumes.models import VolumeAttachment
from nexus.manager.platform.appstate import ManagerState


async def spec_nics(s: AsyncSession, vm_id: str, hostname: str) -> tuple[list[NicConfig], str]:
    """The agent's ``VmSpec.nics`` and the ``ip=`` kernel arguments for a VM."""
    rows = (
        await s.execute(
            select(VmNic, Network)
            .join(Network, Network.id == VmNic.network_id)
            .where(VmNic.vm_id == vm_id)
            .order_by(VmNic.nic_index)
        )
    ).all()
    nics: list[NicConfig] = []
    args: list[str] = []
    for nic, net in rows:
        prefix = ipaddress.IPv4Network(net.cidr).prefixlen
        nics.append(
            NicConfig(
                id=f"net{nic.nic_index}",
                mac=nic.mac,
                ip=nic.ip,
                prefix=prefix,
                gateway=net.gateway,
                network=NetworkRef(id=net.id, cidr=net.cidr, nat=net.nat, isolated=net.isolated),
            )
        )
        gw = net.gateway if nic.nic_index == 0 else None
        args.append(kernel_ip_arg(nic.ip, prefix, gw, hostname[:63], device=f"eth{nic.nic_index}"))
    return nics, " ".join(args)


async def spec_volumes(s: AsyncSession, vm_id: str) -> list[VolumeRef]:
    """The agent's ``VmSpec.volumes`` for a VM, in device order."""
    rows = (
        await s.execute(
            select(VolumeAttachment)
            .where(VolumeAttachment.vm_id == vm_id)
            .order_by(VolumeAttachment.position)
        )
    ).scalars()
    return [VolumeRef(id=a.volume_id, read_only=a.read_only) for a in rows]


def base_spec(vm: Vm, img: Image) -> VmSpec:
    """The agent spec of ``vm`` without NICs/volumes: the one place a VmSpec is built."""
    return VmSpec(
        id=vm.id,
        name=vm.name,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        disk_size_mib=vm.disk_size_mib,
        image=ImageRef.model_validate(images.manifest_of(img)),
        kernel_args=f"nexus.machine_id={machine_id_for(vm.id)}",
    )


#: Features that add to a VM's spec (containers attach their image's disk), applied by
#: :func:`fill_spec` in order; each returns the spec unchanged for VMs that are not theirs.
SpecHook = Callable[[AsyncSession, VmSpec], Awaitable[VmSpec]]
HOOKS: list[SpecHook] = []


async def fill_spec(s: AsyncSession, spec: VmSpec) -> VmSpec:
    """``spec`` with the VM's NICs, ``ip=`` arguments and volumes from the database."""
    nics, ip_args = await spec_nics(s, spec.id, spec.name)
    volumes = await spec_volumes(s, spec.id)
    args = " ".join(a for a in (spec.kernel_args, ip_args) if a)
    spec = spec.model_copy(update={"nics": nics, "kernel_args": args, "volumes": volumes})
    for hook in HOOKS:
        spec = await hook(s, spec)
    return spec


async def complete_spec(state: ManagerState, spec: VmSpec) -> VmSpec:
    """:func:`fill_spec` in its own session (for code running inside operations)."""
    async with state.db.session() as s:
        return await fill_spec(s, spec)


async def push_spec(s: AsyncSession, state: ManagerState, vm_id: str) -> None:
    """Re-send a (stopped) VM's full spec to its host; raises ``AgentError``."""
    vm = await s.get(Vm, vm_id)
    if vm is None or vm.host_id is None:
        raise NotFound(f"vm '{vm_id}' has no host")
    img = await s.get(Image, vm.image_id)
    host = await s.get(Host, vm.host_id)
    if img is None or host is None:
        raise NotFound(f"vm '{vm_id}': image or host vanished")
    await hosts.agent_client(state, host).put_vm(await fill_spec(s, base_spec(vm, img)))
