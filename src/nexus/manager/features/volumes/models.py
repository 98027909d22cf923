"""Volumes (persistent block devices) and their attachments to VMs."""

from __future__ import annotations

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track


class Volume(ResourceMixin, Base):
    """A volume file on one host (``host_id`` is set when first attached; until then the
    volume exists only in the database)."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("created_by_user_id", "name", name="uq_volumes_owner_name"),)
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    size_mib: Mapped[int] = mapped_column(Integer, nullable=False)
    filesystem: Mapped[str] = mapped_column(String(8), nullable=False)
    host_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("hosts.id", ondelete="RESTRICT"), index=True
    )


class VolumeAttachment(ResourceMixin, Base):
    """A volume attached to a VM (one VM per volume); the guest sees it as ``/dev/vd<b+n>``
    in ``position`` order. Goes with its VM (ON DELETE CASCADE); the volume stays."""

    __tablename__ = "volume_attachments"
    __table_args__ = (UniqueConstraint("vm_id", "position", name="uq_volume_attachments_pos"),)
    volume_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("volumes.id", ondelete="RESTRICT"), nullable=False, unique=True
    )
    vm_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("vms.id", ondelete="CASCADE"), nullable=False, index=True
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    read_only: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


track(Volume, Tracked("volume", payload=("size_mib",)))
