"""Port forwards: a host port of a VM's host DNATed to a guest port."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track


class PortForward(ResourceMixin, Base):
    """``host_port``/``protocol`` on every address of the VM's host -> ``guest_ip:guest_port``.
    Unique per host and protocol; goes with its VM (ON DELETE CASCADE)."""

    __tablename__ = "port_forwards"
    __table_args__ = (
        UniqueConstraint("host_id", "protocol", "host_port", name="uq_port_forwards_host_port"),
    )
    vm_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("vms.id", ondelete="CASCADE"), nullable=False, index=True
    )
    host_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    host_port: Mapped[int] = mapped_column(Integer, nullable=False)
    guest_ip: Mapped[str] = mapped_column(String(15), nullable=False)
    guest_port: Mapped[int] = mapped_column(Integer, nullable=False)
    protocol: Mapped[str] = mapped_column(String(3), nullable=False)


track(
    PortForward,
    Tracked(
        "port_forward",
        name_attr=None,
        payload=("vm_id", "host_port", "guest_port", "protocol"),
    ),
)
