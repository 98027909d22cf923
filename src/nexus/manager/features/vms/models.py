"""Virtual machines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track


class Vm(ResourceMixin, Base):
    """A microVM: desired state (what the user asked for) and actual state (what is)."""

    __tablename__ = "vms"
    __table_args__ = (UniqueConstraint("created_by_user_id", "name", name="uq_vms_owner_name"),)
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    vcpus: Mapped[int] = mapped_column(Integer, nullable=False)
    memory_mib: Mapped[int] = mapped_column(Integer, nullable=False)
    disk_size_mib: Mapped[int | None] = mapped_column(Integer)
    image_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("images.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    host_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("hosts.id", ondelete="RESTRICT"), index=True
    )
    desired_state: Mapped[str] = mapped_column(String(16), nullable=False, default="stopped")
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending", index=True)
    state_reason: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    ready_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    cloned_from_id: Mapped[str | None] = mapped_column(String(40))


VM_VERBS = {"running": "started", "stopped": "stopped", "failed": "failed"}
"""A VM state -> the verb of its event (``vm.started``); other states are their own verb."""

track(
    Vm,
    Tracked(
        "vm",
        state_attr="state",
        verbs=VM_VERBS,
        ignore=frozenset({"pid", "ready_at", "started_at", "state_reason"}),
        payload=("desired_state", "host_id"),
    ),
)
