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
    # TTL (issue 15): deleted by the policy loop at ``expires_at``; ``ttl_warned_at`` is set
    # when the owner's warning fell due (``ttl_warning_s`` before), cleared by an extend.
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    ttl_warned_at: Mapped[datetime | None] = mapped_column()
    # the instance group that made this VM (issue 15), if any
    group_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # first boot (issue 20): ``{"ssh_keys": [...], "user_data": str | None}`` as asked at
    # create, applied once by the guest feature's first-boot loop. Never shown in reads
    # (user data may hold secrets); see :attr:`first_boot`.
    first_boot_spec: Mapped[dict[str, Any] | None] = mapped_column(
        "first_boot", JSON(none_as_null=True)
    )
    first_boot_done_at: Mapped[datetime | None] = mapped_column()
    first_boot_error: Mapped[str | None] = mapped_column(Text)

    @property
    def first_boot(self) -> dict[str, Any] | None:
        """What reads show of the first boot: counts and outcome, never the user data."""
        spec = self.first_boot_spec
        if spec is None:
            return None
        return {
            "ssh_keys": len(spec.get("ssh_keys") or []),
            "user_data": spec.get("user_data") is not None,
            "done_at": self.first_boot_done_at,
            "error": self.first_boot_error,
        }


VM_VERBS = {"running": "started", "stopped": "stopped", "failed": "failed"}
"""A VM state -> the verb of its event (``vm.started``); other states are their own verb."""

track(
    Vm,
    Tracked(
        "vm",
        state_attr="state",
        verbs=VM_VERBS,
        ignore=frozenset(
            {
                "pid",
                "ready_at",
                "started_at",
                "state_reason",
                "first_boot_spec",
                "first_boot_done_at",
                "first_boot_error",
            }
        ),
        payload=("desired_state", "host_id", "expires_at", "ttl_warned_at", "group_id"),
    ),
)
