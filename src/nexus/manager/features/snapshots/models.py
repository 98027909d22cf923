"""Snapshots of VMs (files live on the VM's host, under <state_dir>/snapshots/<id>/)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track

SNAPSHOT_STATES = ("creating", "ready", "failed", "deleting")


class Snapshot(ResourceMixin, Base):
    """A point-in-time copy of a VM: ``full`` (memory + device state + disk) or ``disk``.

    ``vm_id`` is deliberately not a foreign key: a snapshot outlives its VM (it can still
    become a new VM with ``POST /v1/vms {from_snapshot}``)."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("vm_id", "name", name="uq_snapshots_vm_name"),)
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    vm_id: Mapped[str] = mapped_column(String(40), nullable=False, index=True)
    vm_name: Mapped[str] = mapped_column(String(63), nullable=False)
    host_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("hosts.id", ondelete="RESTRICT"), index=True
    )
    image_id: Mapped[str] = mapped_column(String(40), nullable=False)
    vcpus: Mapped[int] = mapped_column(Integer, nullable=False)
    memory_mib: Mapped[int] = mapped_column(Integer, nullable=False)
    disk_size_mib: Mapped[int | None] = mapped_column(Integer)
    include_memory: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    kind: Mapped[str | None] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), default="creating", nullable=False)
    state_reason: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    files: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)


track(
    Snapshot,
    Tracked(
        "snapshot",
        state_attr="state",
        verbs={"ready": "ready", "failed": "failed"},
        ignore=frozenset({"state_reason", "files", "timings", "size_bytes"}),
        payload=("vm_id", "kind"),
    ),
)
