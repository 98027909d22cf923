"""Instance groups."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track


class InstanceGroup(ResourceMixin, Base):
    """``desired`` VMs made from ``template`` (a VM spec), kept running by the policy loop
    (failed or vanished members are replaced) and scaled between ``min_size`` and
    ``max_size`` by ``scale_rule`` (``{metric: cpu, target_percent, window_s,
    cooldown_s}``) from the members' CPU samples. Members carry ``vms.group_id``."""

    __tablename__ = "instance_groups"
    __table_args__ = (
        UniqueConstraint("created_by_user_id", "name", name="uq_instance_groups_owner_name"),
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    template: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    min_size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_size: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    desired: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    scale_rule: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_scaled_at: Mapped[datetime | None] = mapped_column()
    state_reason: Mapped[str | None] = mapped_column(Text)


track(
    InstanceGroup,
    Tracked(
        "group",
        ignore=frozenset({"last_scaled_at"}),
        payload=("desired", "min_size", "max_size", "state_reason"),
    ),
)
