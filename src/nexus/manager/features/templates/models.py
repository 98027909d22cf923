"""VM templates: a named, reusable VM spec (owned; ``public`` ones are visible to all)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track


class Template(ResourceMixin, Base):
    """A VM template. Instantiating it creates a VM through ``vms.service.create_vm``."""

    __tablename__ = "templates"
    __table_args__ = (
        UniqueConstraint("created_by_user_id", "name", name="uq_templates_owner_name"),
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    public: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)


track(Template, Tracked("template"))
