"""Operations: anything that takes longer than a request."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track

TERMINAL = ("succeeded", "failed", "cancelled")


class Operation(ResourceMixin, Base):
    """A long-running task: pending -> running -> succeeded | failed | cancelled."""

    __tablename__ = "operations"
    kind: Mapped[str] = mapped_column(String(48), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending", index=True)
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    message: Mapped[str | None] = mapped_column(Text)
    resource_type: Mapped[str | None] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64), index=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


track(
    Operation,
    Tracked(
        "operation",
        state_attr="status",
        verbs={"running": "started"},
        name_attr="kind",
        ignore=frozenset({"started_at", "finished_at", "result"}),
        payload=("kind", "resource_type", "resource_id", "progress", "message", "error"),
    ),
)
