"""Clone uniqueness: every VM made from another (clone, restore-as-new) gets a fresh identity.

:func:`allocate_identity` is THE one place that decides a new VM's MAC address(es), IP
address(es), hostname and machine id. NICs come from the networks feature
(``networks.service.allocate_nics``: a new address + a new unique MAC on each network the
source was on, in the same order — a restored memory image needs the same device set);
callers then run ``vms.spec.complete_spec`` to put them in the agent spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.hostapi.guestboot import machine_id_for
from nexus.manager.features.networks import service as networks
from nexus.manager.features.networks.models import VmNic
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform.rbac import Principal


@dataclass
class Identity:
    """Everything that must differ between a VM and its copies."""

    hostname: str
    machine_id: str
    nics: list[dict[str, Any]] = field(default_factory=list)  # [{network_id, mac, ip}]

    def kernel_args(self) -> str:
        """Extra kernel arguments that carry the identity to a cold-booting guest."""
        return f"nexus.machine_id={self.machine_id}"

    def as_dict(self) -> dict[str, Any]:
        """For operation results and audit."""
        return {"hostname": self.hostname, "machine_id": self.machine_id, "nics": self.nics}


async def source_networks(db_session: AsyncSession, vm_id: str) -> list[str] | None:
    """Network ids of ``vm_id``'s NICs in order, or None if the VM is gone."""
    if await db_session.get(Vm, vm_id) is None:
        return None
    rows = await db_session.execute(
        select(VmNic.network_id).where(VmNic.vm_id == vm_id).order_by(VmNic.nic_index)
    )
    return list(rows.scalars())


async def allocate_identity(
    db_session: AsyncSession, principal: Principal, vm: Vm, *, networks_refs: list[str]
) -> Identity:
    """A fresh identity for the new VM ``vm`` (already flushed): hostname = its name, a new
    machine id, one NIC (new MAC + IP) per network in ``networks_refs``."""
    nics = await networks.allocate_nics(db_session, principal, vm, networks_refs)
    return Identity(
        hostname=vm.name,
        machine_id=machine_id_for(vm.id),
        nics=[{"network_id": n.network_id, "mac": n.mac, "ip": n.ip} for n in nics],
    )
