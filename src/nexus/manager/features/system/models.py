"""System tables: key/value settings and leader leases for background loops."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base


class SystemValue(Base):
    """A named value owned by the platform itself (not a user resource)."""

    __tablename__ = "system_values"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class Lease(Base):
    """A leader lease: the loop named ``name`` runs only in the replica holding it."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
