"""Networks and the NICs (IP + MAC allocations) of VMs on them."""

from __future__ import annotations

import ipaddress

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, backref, mapped_column, relationship

from nexus.core.db import Base, ResourceMixin
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform.outbox import Tracked, track

DEFAULT_NETWORK = "default"


class Network(ResourceMixin, Base):
    """An IPv4 network: one bridge per host, guests addressed from ``cidr`` by the manager."""

    __tablename__ = "networks"
    __table_args__ = (
        UniqueConstraint("created_by_user_id", "name", name="uq_networks_owner_name"),
        # Overlaps are refused by the service; this catches two concurrent pool allocations.
        Index("uq_networks_cidr", "cidr", unique=True),
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    cidr: Mapped[str] = mapped_column(String(43), nullable=False)
    nat: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    isolated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    shared: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)

    @property
    def gateway(self) -> str:
        """The bridge's address: the first host address of the CIDR."""
        return str(next(ipaddress.IPv4Network(self.cidr).hosts()))

    @property
    def public(self) -> bool:
        """Shared networks are visible to every user (see ``rbac.is_shared``)."""
        return self.shared


class VmNic(ResourceMixin, Base):
    """One NIC of a VM: the IPAM record. ``(network_id, ip)`` and ``mac`` are unique, so an
    address is never handed out twice; the row goes with its VM (ON DELETE CASCADE)."""

    __tablename__ = "vm_nics"
    __table_args__ = (
        UniqueConstraint("network_id", "ip", name="uq_vm_nics_network_ip"),
        UniqueConstraint("vm_id", "nic_index", name="uq_vm_nics_vm_index"),
    )
    vm_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("vms.id", ondelete="CASCADE"), nullable=False, index=True
    )
    network_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("networks.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    nic_index: Mapped[int] = mapped_column(Integer, nullable=False)
    mac: Mapped[str] = mapped_column(String(17), nullable=False, unique=True)
    ip: Mapped[str] = mapped_column(String(15), nullable=False)

    # Read-only view for GET /v1/vms (``Vm.nics``); rows go with the VM via ON DELETE CASCADE.
    vm: Mapped[Vm] = relationship(
        Vm,
        viewonly=True,
        backref=backref("nics", lazy="selectin", viewonly=True, order_by="VmNic.nic_index"),
    )


track(Network, Tracked("network"))
